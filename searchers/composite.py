"""Several searchers sharing one candidate budget, taking turns (e.g. ``random+uniform``)."""
from __future__ import annotations

from .core import FINISHED, Proposal, SearchCore


class CompositeSearch(SearchCore):
    """Interleaves sub-searchers round-robin; each keeps its own state and results. A sub-searcher
    that waits (returns None) or is finished yields its turn to the next one."""

    def __init__(self, space, parts: list[SearchCore], *, max_macs, seed=0):
        total = sum(p.num_candidates for p in parts)
        super().__init__(space, max_macs=max_macs, num_candidates=total, seed=seed)
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.turn = 0
        self.routes: dict[int, tuple[int, int]] = {}

    def ask(self):
        if self.asked >= self.num_candidates:
            return FINISHED
        finished = 0
        for offset in range(len(self.parts)):
            index = (self.turn + offset) % len(self.parts)
            got = self.parts[index].ask()
            if got == FINISHED:
                finished += 1
                continue
            if got is None:
                continue
            self.turn = index + 1
            token = self.asked
            self.asked += 1
            self.routes[token] = (index, got.token)
            self.pending[token] = (got.widths, got.origin)
            return Proposal(token, got.widths, got.origin, got.searcher or self.parts[index].name,
                            got.options)
        return FINISHED if finished == len(self.parts) else None

    def tell(self, token, fitness, info=None):
        route = self.routes.pop(token, None)
        if route is not None:
            self.parts[route[0]].tell(route[1], fitness, info)
        super().tell(token, fitness, info)

    def state(self) -> dict:
        return {"own": {k: v for k, v in super().state().items() if k != "parts"},
                "parts": [p.state() for p in self.parts]}

    def load_state(self, state: dict) -> None:
        parts = self.parts
        super().load_state(state["own"])
        self.parts = parts
        for part, s in zip(self.parts, state["parts"]):
            part.load_state(s)
