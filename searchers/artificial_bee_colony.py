"""Artificial bee colony over width vectors (Lin et al., "Channel Pruning via Automatic Structure
Search", ABCPruner, IJCAI 2020).

Food sources are width vectors, stored as one level index per group. ``encoding="grid"`` (the
default) searches the space's own width grid; ``encoding="tenths"`` is ABCPruner's code space
(level k in 1..max_preserve keeps ceil(c * k / 10) channels), whose coarse levels leave budget
unspent (issue 16: winners at two thirds of a 15% budget). Every source is widened to spend at
least ``fill`` of the budget, and the initial sources are seeded by default with one uniform
ratio and the run criterion's global threshold (the one-shot baselines the colony must beat). Each phase's candidates are independent,
so a phase is suggested as one batch of parallel trials and the next phase waits for all of them
(``ask`` returns None meanwhile).

Departures from the official code, all deliberate: every dimension and every level can be
chosen (the official code never mutates the last dimension or picks the top level); every
candidate is projected into the budget and widened to spend at least ``fill`` of it; a width
vector already evaluated reuses its fitness instead of training again; fitness is validation
accuracy; initial sources are seeded (``search.seeds``; default uniform and global).
"""
from __future__ import annotations

import math

import numpy as np

from .core import FINISHED, WORST, Need, SearchCore


class ArtificialBeeColony(SearchCore):
    name = "abc"

    needs = (Need("seed_proposals", "initial", default=True,
                  options={"seeds": ("uniform", "global")}),)

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None, food_number: int = 10,
                 food_limit: int = 5, honeychange_num: int = 2, max_cycle: int = 10,
                 max_preserve: int = 9, encoding: str = "grid", initial: list | None = None,
                 init_fraction: float = 0.97, fill: float = 0.97):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        encoding = "tenths" if encoding == "code" else encoding  # "code": the earlier name
        if encoding not in ("tenths", "grid"):
            raise ValueError("abc.encoding must be 'grid' (the space's widths) or 'tenths' "
                             "(ABCPruner's codes)")
        if not 0 <= fill <= 1:
            raise ValueError("abc.fill must be in [0, 1] (the share of the budget sources spend)")
        self.fill_fraction = float(fill)
        if food_number < 2:
            raise ValueError("abc.food_number must be >= 2 (a neighbour needs another source)")
        if not 1 <= max_preserve <= 10:
            raise ValueError("abc.max_preserve must be in 1..10 (tenths of the full width)")
        self.food_number = int(food_number)
        self.init_fraction = float(init_fraction)
        self.food_limit = int(food_limit)
        self.honeychange_num = max(1, min(int(honeychange_num), len(space)))
        self.max_cycle = int(max_cycle)
        self.levels = self._levels(space, encoding, max_preserve)
        self.sources = np.zeros((self.food_number, len(space)), dtype=np.int64)
        self.fitness = np.full(self.food_number, WORST)
        self.trail = np.zeros(self.food_number, dtype=np.int64)
        self.best_pos: np.ndarray | None = None
        self.best_fit = WORST
        self.known: dict[tuple[int, ...], float] = {}
        self.cycle = 0
        self.phase = "init"
        self.queue: list[dict] = []
        self.inflight: dict[tuple[int, ...], list[dict]] = {}
        self.done_moves: list[dict] = []
        self.phase_log: list[tuple[int, str, int]] = []  # (cycle, phase, moves) for inspection
        self._start_init(initial or [])

    # ------------------------------------------------------------------ encoding
    @staticmethod
    def _levels(space, encoding, max_preserve) -> list[np.ndarray]:
        levels = []
        for i, group in enumerate(space.groups):
            grid = space.grid(i)
            if encoding == "grid":
                levels.append(grid.copy())
                continue
            wanted = [math.ceil(group.width * k / 10) for k in range(1, max_preserve + 1)]
            # Snap down onto the space's grid (never above the code's width), floor included.
            snapped = {int(grid[max(0, np.searchsorted(grid, w, side="right") - 1)]) for w in wanted}
            # The space's floor is always a level, so a budget below the 10% code still has
            # feasible sources (projection may go down to min_ratio).
            snapped.add(int(grid[0]))
            levels.append(np.array(sorted(snapped), dtype=np.int64))
        return levels

    def widths_of(self, pos) -> tuple[int, ...]:
        return tuple(int(self.levels[g][p]) for g, p in enumerate(pos))

    def _pos_of(self, widths) -> np.ndarray:
        # The highest level not above each width, so MACs never grow.
        return np.array([max(0, np.searchsorted(lv, w, side="right") - 1)
                         for lv, w in zip(self.levels, widths)], dtype=np.int64)

    def _repair(self, pos) -> np.ndarray:
        """Into the budget (projected down), then widened to spend ``fill`` of it."""
        widths = self.widths_of(pos)
        if self.cost(widths) > self.limit:
            widths = self.project(widths)
        return self._pos_of(self.fill(widths, self.fill_fraction))

    def _random_pos(self) -> np.ndarray:
        # Random sources spend most of the budget (as random search's do): a source far below
        # the budget starts the colony with needlessly weak candidates.
        return self._repair(self._pos_of(self.sample_near(self.init_fraction)))

    def _neighbour(self, i: int) -> np.ndarray:
        """``x_ij + U(-1, 1) * (x_ij - x_kj)`` on ``honeychange_num`` random dimensions."""
        k = int(self.rng.choice([s for s in range(self.food_number) if s != i]))
        pos = self.sources[i].copy()
        dims = self.rng.choice(len(self.levels), size=self.honeychange_num, replace=False)
        for j in dims:
            step = self.rng.uniform(-1.0, 1.0) * (pos[j] - self.sources[k][j])
            value = int(round(pos[j] + step))
            pos[j] = min(max(value, 0), len(self.levels[j]) - 1)
        return self._repair(pos)

    # ------------------------------------------------------------------ phases
    def _start_init(self, initial) -> None:
        moves = []
        for i in range(self.food_number):
            if i < len(initial):
                item = initial[i]
                widths = item["widths"] if isinstance(item, dict) else item
                origin = f"seed:{item.get('origin', 'given')}" if isinstance(item, dict) else "seed:given"
                pos = self._repair(self._pos_of(self.space.snap(widths)))
            else:
                pos, origin = self._random_pos(), "abc:init"
            moves.append({"kind": "init", "source": i, "pos": pos, "origin": origin})
        self._set_phase("init", moves)

    @property
    def plan(self) -> str:
        """How much of ABCPruner's schedule ``search.candidates`` buys, for the search's first
        line ("" when it buys all of it): a small budget never reaches the onlookers."""
        per_cycle = 2 * self.food_number  # employed and onlooker moves; scouts come on top
        full = self.food_number + self.max_cycle * per_cycle
        n = self.num_candidates
        if n >= full:
            return ""
        if n <= self.food_number:
            return f"; abc: {n} candidates are only its initial sources (food_number {self.food_number})"
        return (f"; abc: {n} candidates are {self.food_number} initial sources and "
                f"{(n - self.food_number) / per_cycle:.1f} of its {self.max_cycle} cycles of "
                f"employed and onlooker moves (all of them: {full}+ candidates)")

    def _set_phase(self, phase: str, moves: list[dict]) -> None:
        for index, move in enumerate(moves):
            move["index"] = index  # greedy steps apply in proposal order, not arrival order
        self.phase = phase
        self.queue = moves
        self.done_moves = []
        self.phase_log.append((self.cycle, phase, len(moves)))

    def _start_employed(self) -> None:
        self._set_phase("employed", [{"kind": "employed", "source": i, "pos": self._neighbour(i),
                                      "origin": "abc:employed"} for i in range(self.food_number)])

    def _start_onlooker(self) -> None:
        fit = np.where(np.isfinite(self.fitness), self.fitness, 0.0)
        top = fit.max()
        prob = 0.9 * fit / top + 0.1 if top > 0 else np.full(self.food_number, 1.0)
        chosen, i = [], 0
        # Visit sources in turn, each accepted with its probability, until food_number moves.
        while len(chosen) < self.food_number:
            if self.rng.random() < prob[i]:
                chosen.append(i)
            i = (i + 1) % self.food_number
        self._set_phase("onlooker", [{"kind": "onlooker", "source": s, "pos": self._neighbour(s),
                                      "origin": "abc:onlooker"} for s in chosen])

    def _start_scout(self) -> bool:
        i = int(np.argmax(self.trail))
        if self.trail[i] < self.food_limit:
            return False
        self._set_phase("scout", [{"kind": "scout", "source": i, "pos": self._random_pos(),
                                   "origin": "abc:scout"}])
        return True

    def _apply(self, move: dict) -> None:
        i, value = move["source"], move["fitness"]
        if value > self.best_fit or self.best_pos is None:
            self.best_fit, self.best_pos = value, move["pos"].copy()
        if move["kind"] in ("init", "scout"):
            self.sources[i], self.fitness[i], self.trail[i] = move["pos"], value, 0
        elif value > self.fitness[i]:
            self.sources[i], self.fitness[i], self.trail[i] = move["pos"], value, 0
        else:
            self.trail[i] += 1

    def _advance(self) -> bool:
        """Apply the finished phase (greedy steps in order) and start the next; False at the end."""
        # Apply in proposal order: with parallel trials results arrive in any order, and the
        # colony (trails, scouts, everything after) must not depend on it.
        for move in sorted(self.done_moves, key=lambda m: m["index"]):
            self._apply(move)
        if self.phase in ("init", "scout"):
            if self.phase == "scout":
                self.cycle += 1
            if self.cycle >= self.max_cycle:
                self.phase = "done"
                return False
            self._start_employed()
        elif self.phase == "employed":
            self._start_onlooker()
        elif self.phase == "onlooker":
            if not self._start_scout():
                self.cycle += 1
                if self.cycle >= self.max_cycle:
                    self.phase = "done"
                    return False
                self._start_employed()
        return True

    # ------------------------------------------------------------------ hooks
    def _next(self):
        while True:
            if self.phase == "done":
                return FINISHED
            if self.queue:
                move = self.queue.pop(0)
                widths = self.widths_of(move["pos"])
                if widths in self.known:
                    move["fitness"] = self.known[widths]
                    self.done_moves.append(move)
                    continue
                if widths in self.inflight:
                    self.inflight[widths].append(move)
                    continue
                self.inflight[widths] = [move]
                return widths, move["origin"]
            if self.inflight:
                return None
            if not self._advance():
                return FINISHED

    def _warm(self, known):
        """Known results answer the colony's moves; the best known vectors within the budget
        take the places of the random initial sources (the seeds keep theirs)."""
        self.known.update(known)
        best = sorted(((f, w) for w, f in known.items()
                       if f > WORST and self.cost(w) <= self.limit * (1 + 1e-9)), reverse=True)
        free = [m for m in self.queue if m["kind"] == "init" and m["origin"] == "abc:init"]
        for move, (_, widths) in zip(free, best):
            move["pos"], move["origin"] = self._pos_of(widths), "abc:known"

    def _observe(self, candidate, fitness, info):
        self.known[candidate.widths] = fitness
        for move in self.inflight.pop(candidate.widths, []):
            move["fitness"] = fitness
            self.done_moves.append(move)

    @property
    def best(self):
        if self.best_pos is None or self.best_fit == WORST:
            return super().best
        return self.widths_of(self.best_pos), self.best_fit
