"""The ask/tell protocol every structsearch searcher implements (numpy only, no Ray, no torch).

A searcher proposes width vectors for a :class:`~structsearch.space.WidthSpace` under a MACs
budget. ``ask()`` returns a :class:`Proposal`, ``None`` ("wait: results I need are still
running") or :data:`FINISHED`; ``tell(token, fitness, info)`` reports a proposal's fitness
(higher is better; ``None`` for a failed candidate, which counts as the worst) and, in ``info``,
whatever else the trial reported (DropNet reads its channels' activations there). ``state()`` returns
everything needed to continue, and ``load_state`` restores it, so a resumed search proposes
exactly what the interrupted one would have.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

FINISHED = "FINISHED"
WORST = float("-inf")


@dataclass(frozen=True)
class Proposal:
    token: int
    widths: tuple[int, ...]
    origin: str
    searcher: str | None = None  # the proposing part of a composite searcher
    # Instructions to the trial beyond the widths (merged into its config), e.g. DropNet's
    # explicit channels ``keep``, ``init: original`` and ``channel_scores: True``.
    options: dict | None = None


class SearchCore:
    """Base class: budget bookkeeping, proposal tokens, seeded RNG and whole-state save."""

    name = "base"

    def __init__(self, space, *, max_macs: float, num_candidates: int, seed: int = 0):
        if max_macs < space.min_macs:
            raise ValueError(f"budget {max_macs:.4g} MACs is below the smallest network "
                             f"({space.min_macs:.4g} MACs)")
        self.space = space
        self.max_macs = float(max_macs)
        self.num_candidates = int(num_candidates)
        self.rng = np.random.default_rng(seed)
        self.asked = 0
        self.pending: dict[int, tuple[tuple[int, ...], str]] = {}
        self.history: list[tuple[tuple[int, ...], float, str]] = []

    # -- to implement -------------------------------------------------------------------
    def _next(self):
        """The next (widths, origin), or None to wait, or FINISHED."""
        raise NotImplementedError

    def _observe(self, token: int, widths: tuple[int, ...], fitness: float, info: dict) -> None:
        """Hook for algorithms that learn from results."""

    # -- protocol -----------------------------------------------------------------------
    def ask(self):
        if self.asked >= self.num_candidates:
            return FINISHED
        nxt = self._next()
        if nxt is None or nxt == FINISHED:
            return nxt
        widths, origin = nxt
        widths = self.feasible(widths)
        token = self.asked
        self.asked += 1
        self.pending[token] = (widths, origin)
        return Proposal(token, widths, origin)

    def tell(self, token: int, fitness: float | None, info: dict | None = None) -> None:
        entry = self.pending.pop(token, None)
        if entry is None:
            return
        widths, origin = entry
        value = WORST if fitness is None or not np.isfinite(fitness) else float(fitness)
        self.history.append((widths, value, origin))
        self._observe(token, widths, value, info or {})

    def feasible(self, widths) -> tuple[int, ...]:
        """Snap to the grid and repair into the budget."""
        w = self.space.project(self.space.snap(widths), self.max_macs)
        return tuple(int(v) for v in w)

    @property
    def best(self) -> tuple[tuple[int, ...], float] | None:
        done = [(w, f) for w, f, _ in self.history if f > WORST]
        return max(done, key=lambda t: t[1]) if done else None

    def state(self) -> dict:
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k != "space"}
        state["rng"] = self.rng.bit_generator.state
        return state

    def load_state(self, state: dict) -> None:
        state = dict(state)
        rng_state = state.pop("rng")
        self.__dict__.update(copy.deepcopy(state))
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = rng_state
