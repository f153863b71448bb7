"""Seeded baselines: width vectors derived from importance criteria or presets, evaluated as
candidates in their own right (uniform, l1/hrank/bn_scale global ranking, paper presets)."""
from __future__ import annotations

from .core import FINISHED, Need, SearchCore


class SeededProposals(SearchCore):
    """Proposes a fixed list ``proposals = [{"origin": name, "widths": [...]}, ...]`` in order
    (each repaired into the budget; repeats after repair are proposed once). The pipeline
    computes the list from ``structsearch.seeds`` (searchers never touch models): the config's
    ``search.seeds``, or its default list."""

    name = "seeded"
    needs = (Need("seed_proposals", "proposals", default=True),)

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None,
                 proposals: list | None = None):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        queue, seen = [], set()
        for item in proposals or []:
            widths = self.feasible(item["widths"])
            if widths not in seen:
                seen.add(widths)
                queue.append((widths, f"seed:{item['origin']}"))
        if not queue:
            raise ValueError("the seeded searcher needs at least one proposal")
        self.queue = queue[:num_candidates]
        if len(self.queue) < num_candidates:
            self.shortfall = (f"one candidate per distinct seeded proposal, and there are "
                              f"{len(self.queue)}")
        self.num_candidates = len(self.queue)

    def _next(self):
        if self.asked >= len(self.queue):
            return FINISHED
        return self.queue[self.asked]
