"""Uniform baseline: the same width ratio in every group, swept just below the budget."""
from __future__ import annotations

import numpy as np

from .core import FINISHED, SearchCore


class UniformSweep(SearchCore):
    """Candidates ``uniform(r)`` for ratios from ``r*`` (the largest within budget) down to
    ``low * r*``; vectors that snap to the same grid point are proposed once."""

    name = "uniform"

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None, low: float = 0.7):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        if not 0 < low <= 1:
            raise ValueError("uniform.low must be in (0, 1]")
        top = space.max_uniform_ratio(limit, tol=1e-4, cost=self.view)
        ratios = np.linspace(top, low * top, max(num_candidates, 1) * 4)
        vectors: list[tuple[int, ...]] = []
        for r in ratios:
            w = tuple(int(v) for v in self.project(space.uniform(max(r, 1e-6))))
            if w not in vectors:
                vectors.append(w)
            if len(vectors) == num_candidates:
                break
        self.queue = vectors
        if len(vectors) < num_candidates:
            self.shortfall = (f"only {len(vectors)} distinct uniform width vectors lie between "
                              f"{low:g}x and 1x the largest ratio within the budget")
        self.num_candidates = len(vectors)

    def _next(self):
        step = self.proposals  # known vectors (``warm``) are skipped, not repeated
        if step >= len(self.queue):
            return FINISHED
        return self.queue[step], "uniform"
