"""Uniform baseline: the same width ratio in every group, swept just below the budget."""
from __future__ import annotations

import numpy as np

from .core import FINISHED, SearchCore


class UniformSweep(SearchCore):
    """Candidates ``uniform(r)`` for ratios from ``r*`` (the largest within budget) down to
    ``low * r*``; vectors that snap to the same grid point are proposed once."""

    name = "uniform"

    def __init__(self, space, *, max_macs, num_candidates, seed=0, low: float = 0.7):
        super().__init__(space, max_macs=max_macs, num_candidates=num_candidates, seed=seed)
        top = space.max_uniform_ratio(max_macs, tol=1e-4)
        ratios = np.linspace(top, low * top, max(num_candidates, 1) * 4)
        vectors: list[tuple[int, ...]] = []
        for r in ratios:
            w = tuple(int(v) for v in space.project(space.uniform(max(r, 1e-6)), max_macs))
            if w not in vectors:
                vectors.append(w)
            if len(vectors) == num_candidates:
                break
        self.queue = vectors
        self.num_candidates = len(vectors)

    def _next(self):
        if self.asked >= len(self.queue):
            return FINISHED
        return self.queue[self.asked], "uniform"
