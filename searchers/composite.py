"""Several searchers sharing one candidate budget, taking turns (e.g. ``random+uniform``)."""
from __future__ import annotations

from .core import FINISHED, SearchCore


class CompositeSearch(SearchCore):
    """Interleaves sub-searchers round-robin; each keeps its own state and results. A sub-searcher
    that waits (returns None) or is finished yields its turn to the next one."""

    name = "composite"
    _static = SearchCore._static | {"parts"}

    def __init__(self, space, parts: list[SearchCore], *, limit, seed=0, view=None):
        total = sum(p.num_candidates for p in parts)
        super().__init__(space, limit=limit, num_candidates=total, seed=seed, view=view)
        self.shortfall = "; ".join(f"{p.name}: {p.shortfall}" for p in parts if p.shortfall)
        self.parts = parts
        self.name = "+".join(p.name for p in parts)
        self.turn = 0
        self.routes: dict[int, tuple[int, int]] = {}  # our token -> (part, the part's token)
        self._route: tuple[int, int] | None = None

    def _next(self):
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
            self._route = (index, got.token)
            return got
        return FINISHED if finished == len(self.parts) else None

    def _warm(self, known):
        for part in self.parts:
            part.warm(known)

    def _proposed(self, candidate):
        self.routes[candidate.token] = self._route

    def _observe(self, candidate, fitness, info):
        part, token = self.routes.pop(candidate.token)
        self.parts[part].tell(token, fitness, info)

    def state(self) -> dict:
        return {"own": super().state(), "parts": [p.state() for p in self.parts]}

    def load_state(self, state: dict) -> None:
        super().load_state(state["own"])
        for part, s in zip(self.parts, state["parts"]):
            part.load_state(s)
