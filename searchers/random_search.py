"""Random search: feasible width vectors drawn uniformly on the grid, near the budget."""
from __future__ import annotations

from .core import SearchCore


class RandomSearch(SearchCore):
    """Draws each group's width uniformly from its grid; over-budget draws are projected into
    the budget and draws below ``min_fraction`` of the budget are redrawn, so candidates spend
    the compute they are allowed. Exact duplicates are redrawn."""

    name = "random"

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None,
                 min_fraction: float = 0.97):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        if not 0 <= min_fraction <= 1:
            raise ValueError("random.min_fraction must be in [0, 1]")
        self.min_fraction = float(min_fraction)
        self.seen: set[tuple[int, ...]] = set()

    def _draw(self) -> tuple[int, ...]:
        """One draw within [min_fraction, 1] of the budget (lower on a coarse grid)."""
        return tuple(int(v) for v in self.sample_near(self.min_fraction))

    def _next(self):
        widths = None
        for _ in range(50):
            widths = self._draw()
            if widths not in self.seen:
                break
        self.seen.add(widths)
        return widths, "random"
