"""DropNet's iterative schedule (Tan & Motani, ICML 2020) as a sequential proposer.

Each step trains a network, then removes a fraction ``p`` of its remaining channels with the
lowest mean post-activation over training images (``mode="min"``: one ranking across all
groups; ``"min_layer"``: ``p`` of every group), resets the survivors to their initial weights and
trains again. Every step's network is a candidate; the schedule starts from the largest network
within the budget and stops when a step's accuracy falls below ``kappa`` times the first's.

The proposals carry the exact channels to keep (``options["keep"]``, root-channel indices of the
baseline per group), so step k+1 is a subset of step k's channels, not just a smaller width
vector. With ``rescore`` (the paper) each trial reports the mean post-activation of its own kept
channels after training (``info["channel_scores"]``, see ``trainables.candidate``) and the next
drop ranks those; without it the baseline's scores (``scores``) rank every step. ``reinit``
(the paper) asks the trial to start from the model's initial weights (``init: original``: the
run seed's initialisation of the full network, cut to the kept channels); without it a step
inherits the trained baseline's weights, which suits short candidate training better.
"""
from __future__ import annotations

import logging

import numpy as np

from structsearch.ranking import criterion_keep

from .core import FINISHED, Need, SearchCore

log = logging.getLogger("structsearch")


class DropNetSchedule(SearchCore):
    name = "dropnet"
    # Raw activations: DropNet's global ranking compares channels across groups.
    needs = (Need("channel_scores", "scores", options={"criterion": "activation", "normalize": False}),)
    early_stopping = False  # each step needs its fully trained accuracy and activations
    reuses_results = False  # ... so a known result (without activations) cannot answer one

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None,
                 scores: list | None = None, p: float = 0.2, kappa: float = 0.9, mode: str = "min",
                 reinit: bool = True, rescore: bool = True):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        if mode not in ("min", "min_layer"):
            raise ValueError("dropnet.mode must be 'min' or 'min_layer'")
        if not 0 < p < 1:
            raise ValueError("dropnet.p must be in (0, 1)")
        if not 0 < kappa <= 1:
            raise ValueError("dropnet.kappa must be in (0, 1]")
        if scores is None:
            # Without activations every channel ties; DropNet then drops by position.
            scores = [np.linspace(1.0, 0.0, g.width) for g in space.groups]
        if [len(s) for s in scores] != [g.width for g in space.groups]:
            raise ValueError("dropnet.scores needs one score per channel of every group")
        self.scores = [np.asarray(s, dtype=np.float64).copy() for s in scores]
        self.p, self.kappa, self.mode = float(p), float(kappa), mode
        self.reinit, self.rescore = bool(reinit), bool(rescore)
        self.kept = [np.arange(g.width) for g in space.groups]  # channels still alive
        self.current = np.asarray(self.project(space.full_widths), dtype=np.int64)
        self.first_fitness: float | None = None
        self.waiting = False
        self.stopped = False
        self.unscored = 0  # steps whose trial reported no channel scores (rescore falls back)
        self.first_failures = 0

    # -- channels ------------------------------------------------------------------------
    def _top(self, g: int, channels: np.ndarray, width: int) -> np.ndarray:
        """The ``width`` best-scored of ``channels`` in group ``g`` (ties: lower index), sorted."""
        alive = np.full(len(self.scores[g]), -np.inf)
        alive[channels] = self.scores[g][channels]
        return criterion_keep([alive], [width])[0]

    def _drop(self, kept: list[np.ndarray]) -> np.ndarray:
        """Widths after removing ``p`` of the kept channels with the lowest activation."""
        widths = np.array([len(k) for k in kept], dtype=np.int64)
        new = widths.copy()
        lower = self.space.lower
        if self.mode == "min_layer":
            for g in range(len(new)):
                new[g] = max(lower[g], int(np.floor(new[g] * (1 - self.p))))
        else:
            pool = np.concatenate([self.scores[g][k] for g, k in enumerate(kept)])
            owner = np.concatenate([np.full(len(k), g) for g, k in enumerate(kept)])
            budget = int(np.ceil(self.p * len(pool)))
            for idx in np.argsort(pool, kind="stable"):
                if budget == 0:
                    break
                g = owner[idx]
                if new[g] > lower[g]:
                    new[g] -= 1
                    budget -= 1
        # Snapping may round up; never propose a larger network than the previous step.
        return np.minimum(self.space.snap(new), widths)

    def _rescore(self, keep: list[np.ndarray], info: dict) -> None:
        """The trained step's activations (``info["channel_scores"]``: one flat list, group after
        group, in the order of the kept channels) replace its kept channels' scores; a step
        without usable ones keeps the scores it had (counted in ``unscored`` and logged)."""
        reported, problem = info.get("channel_scores"), info.get("channel_scores_error")
        try:
            if reported is None:
                raise ValueError(problem or "the trial reported no channel_scores")
            flat = np.asarray(reported, dtype=np.float64)
            if flat.ndim != 1 or len(flat) != sum(len(k) for k in keep):
                raise ValueError("channel_scores do not match the kept channels")
        except (ValueError, TypeError) as exc:
            self.unscored += 1
            log.warning("dropnet: step ranked with earlier channel scores (%s)", exc)
            return
        values = np.split(flat, np.cumsum([len(k) for k in keep])[:-1])
        for g, k in enumerate(keep):
            self.scores[g][k] = values[g]

    # -- hooks ---------------------------------------------------------------------------
    def _next(self):
        if self.stopped:
            return FINISHED
        if self.waiting:
            return None
        self.waiting = True
        widths = self.feasible(self.current)
        keep = [self._top(g, k, w) for g, (k, w) in enumerate(zip(self.kept, widths))]
        options = {"keep": [[int(c) for c in k] for k in keep],
                   "init": "original" if self.reinit else "inherit"}
        if self.rescore:
            options["channel_scores"] = True
        return self.draft(widths, f"dropnet:step{self.asked}", options)

    def _observe(self, candidate, fitness, info):
        keep = [np.asarray(k, dtype=np.int64) for k in candidate.options["keep"]]
        widths = candidate.widths
        self.waiting = False
        if self.first_fitness is None:
            if not np.isfinite(fitness):
                # A failed first step is retried (the reference accuracy needs a result), twice.
                self.first_failures += 1
                self.stopped = self.first_failures >= 3
                return
            self.first_fitness = fitness
        elif fitness < self.kappa * self.first_fitness:
            self.stopped = True
            return
        if self.rescore:
            self._rescore(keep, info)
        self.kept = keep
        nxt = self._drop(keep)
        if np.array_equal(nxt, np.asarray(widths)):
            self.stopped = True  # every group is at its floor
        self.current = nxt
