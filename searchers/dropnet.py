"""DropNet's iterative schedule (Tan & Motani, ICML 2020) as a sequential proposer.

Each step drops a fraction ``p`` of the remaining channels with the lowest mean post-activation
(``mode="min"``: one global ranking of normalised scores; ``"min_layer"``: ``p`` of every
group), and the next candidate waits for the previous one's accuracy. The schedule starts from
the largest network within the budget and stops when accuracy falls below ``kappa`` times the
first candidate's. Channel scores come from the baseline (``scores``, one array per group,
computed by the pipeline with the ``activation`` criterion); DropNet ranks the channels still
kept at each step.
"""
from __future__ import annotations

import numpy as np

from .core import FINISHED, SearchCore


class DropNetSchedule(SearchCore):
    name = "dropnet"

    def __init__(self, space, *, max_macs, num_candidates, seed=0, scores: list | None = None,
                 p: float = 0.2, kappa: float = 0.9, mode: str = "min"):
        super().__init__(space, max_macs=max_macs, num_candidates=num_candidates, seed=seed)
        if mode not in ("min", "min_layer"):
            raise ValueError("dropnet.mode must be 'min' or 'min_layer'")
        if not 0 < p < 1:
            raise ValueError("dropnet.p must be in (0, 1)")
        if scores is None:
            # Without activations every channel ties; DropNet then drops by position.
            scores = [np.linspace(1.0, 0.0, g.width) for g in space.groups]
        self.scores = [np.asarray(s, dtype=np.float64) / max(np.abs(s).max(), 1e-12) for s in scores]
        self.p, self.kappa, self.mode = float(p), float(kappa), mode
        self.current = np.asarray(space.project(space.full_widths, max_macs), dtype=np.int64)
        self.first_fitness: float | None = None
        self.waiting = False
        self.stopped = False

    def _drop(self, widths: np.ndarray) -> np.ndarray:
        new = widths.copy()
        lower = self.space.lower
        if self.mode == "min_layer":
            for g in range(len(new)):
                new[g] = max(lower[g], int(np.floor(new[g] * (1 - self.p))))
        else:
            # Rank the kept channels (the top-w of each group) globally and drop the lowest p.
            kept = [(self.scores[g][np.argsort(-self.scores[g])[: widths[g]]], g) for g in range(len(new))]
            pool = np.concatenate([s for s, _ in kept])
            owner = np.concatenate([np.full(len(s), g) for s, g in kept])
            order = np.argsort(pool, kind="stable")
            budget = int(np.ceil(self.p * len(pool)))
            for idx in order:
                if budget == 0:
                    break
                g = owner[idx]
                if new[g] > lower[g]:
                    new[g] -= 1
                    budget -= 1
        snapped = self.space.snap(new)
        # Snapping may round up; never propose a larger network than the previous step.
        return np.minimum(snapped, widths)

    def _next(self):
        if self.stopped:
            return FINISHED
        if self.waiting:
            return None
        self.waiting = True
        return tuple(int(v) for v in self.current), f"dropnet:step{self.asked}"

    def _observe(self, token, widths, fitness):
        self.waiting = False
        if self.first_fitness is None:
            if not np.isfinite(fitness):
                return  # a failed first step is retried: the reference accuracy needs a result
            self.first_fitness = fitness
        elif fitness < self.kappa * self.first_fitness:
            self.stopped = True
            return
        nxt = self._drop(np.asarray(widths))
        if np.array_equal(nxt, widths):
            self.stopped = True  # every group is at its floor
        self.current = nxt
