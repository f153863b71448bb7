"""Random search: feasible width vectors drawn uniformly on the grid, near the budget."""
from __future__ import annotations

from .core import SearchCore


class RandomSearch(SearchCore):
    """Draws each group's width uniformly from its grid; over-budget draws are projected into
    the budget and draws below ``min_fraction`` of the budget are redrawn, so candidates spend
    the compute they are allowed. Exact duplicates are redrawn."""

    name = "random"

    def __init__(self, space, *, max_macs, num_candidates, seed=0, min_fraction: float = 0.8):
        super().__init__(space, max_macs=max_macs, num_candidates=num_candidates, seed=seed)
        self.min_fraction = float(min_fraction)
        self.seen: set[tuple[int, ...]] = set()

    def _next(self):
        lo = max(self.min_fraction * self.max_macs, self.space.min_macs)
        widths = None
        for _ in range(50):
            widths = tuple(int(v) for v in self.space.sample(self.rng, 1, (lo, self.max_macs))[0])
            if widths not in self.seen:
                break
        self.seen.add(widths)
        return widths, "random"
