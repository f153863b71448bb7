"""WidthSpace: the search variable of structsearch (numpy only: searchers import it).

A *prunable group* is a set of channel dimensions that must keep one width: a conv's output
channels, its BN, the consumers' input channels; every conv feeding one residual sum; a depthwise
conv tied to its producer; the matching slice of a concatenation. :mod:`structsearch.tracing`
discovers the groups of a model and builds the cost tables; every member's channel indices are
recorded against the group's own channel numbering ("root" channels), so surgery and cost need
nothing from the tracer afterwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .cost import CostModel

if TYPE_CHECKING:
    from torch import nn


class WidthError(ValueError):
    """A width vector that does not fit its space (one line: what is wrong and the fix)."""


class TracingError(ValueError):
    """A model that cannot be traced into a space (one line: what is wrong and the fix)."""


class TracingTimeout(TracingError):
    """Tracing or its self-check ran past ``space.trace_timeout_s``."""


class NoGroupsError(TracingError):
    """A traced model without a single searchable channel group."""


class TracingWarning(UserWarning):
    """Channel groups frozen (kept at full width) because tracing or surgery cannot cut them."""


@dataclass(frozen=True)
class Member:
    """One module dimension of a group: ``idxs[i]`` of ``module`` carries root channel
    ``root_idxs[i]``."""

    module: str
    dim: str  # "out" | "in"
    idxs: np.ndarray
    root_idxs: np.ndarray

    @property
    def multiplicity(self) -> int:
        """Module channels per root channel (e.g. H*W for a flatten into a linear layer)."""
        return len(self.idxs) // (int(self.root_idxs.max()) + 1) if len(self.idxs) else 0


@dataclass(frozen=True)
class Group:
    name: str
    width: int
    members: tuple[Member, ...]

    @property
    def producers(self) -> list[str]:
        return [m.module for m in self.members if m.dim == "out"]

    @property
    def modules(self) -> list[str]:
        seen: dict[str, None] = {}
        for m in self.members:
            seen.setdefault(m.module, None)
        return list(seen)


# ``round_to: auto``: multiples of 8 for groups of 32 channels or more (odd channel counts cost
# real speed, see benchmarks/speedup.py), every width for narrower groups and for groups counted
# in conv groups (grouped convs), where 8 steps would be too coarse.
AUTO_ROUND_TO, AUTO_MIN_WIDTH = 8, 32


def group_round_to(round_to, width: int, multiplicity: int = 1) -> int:
    """The rounding step of one group: ``round_to`` itself, or what ``"auto"`` picks for it."""
    if round_to == "auto":
        return AUTO_ROUND_TO if multiplicity == 1 and width >= AUTO_MIN_WIDTH else 1
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1 or 'auto', got {round_to!r}")
    return int(round_to)


def _grid(width: int, min_ratio: float, round_to: int) -> np.ndarray:
    """Allowed widths of a group: multiples of ``round_to`` from the floor up, plus the full width."""
    floor = max(1, math.ceil(min_ratio * width - 1e-9))
    lo = max(round_to, math.ceil(floor / round_to) * round_to)
    values = list(range(lo, width + 1, round_to)) if lo <= width else []
    if not values or values[-1] != width:
        values.append(width)
    return np.array(values, dtype=np.int64)


@dataclass
class WidthSpace:
    """The prunable groups of a model and the exact cost of any width vector over them."""

    groups: list[Group]
    input_shape: tuple[int, ...]
    round_to: int | str = 1  # a step for every group, or "auto" (see group_round_to)
    min_ratio: float = 0.1
    ignore: tuple[str, ...] = ()
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (group, reason)
    # The subset of ``skipped`` frozen automatically (not by ``ignore`` or for being a single
    # channel): constructs the tracer or the surgery cannot cut, and groups the self-check failed.
    frozen: list[tuple[str, str]] = field(default_factory=list)  # (group, reason)
    checked: bool = False  # built with the self-check (rebuilding must check too: same groups)
    model_name: str | None = None
    model_kwargs: dict = field(default_factory=dict)
    _macs: CostModel | None = None
    _params: CostModel | None = None
    _grids: list[np.ndarray] = field(default_factory=list)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, input_shape, *, ignore=(), round_to: int = 1,
                   min_ratio: float = 0.1, model_name: str | None = None,
                   model_kwargs: dict | None = None, min_width: int = 2, check: bool = True,
                   timeout_s: float | None = 120.0, strict: bool = False) -> "WidthSpace":
        """Trace ``model`` on one input of ``input_shape`` (C, H, W): see
        :func:`structsearch.tracing.trace` (imported here so the space itself needs no torch).

        With ``check`` (the default) the new space is verified before it is returned
        (:func:`structsearch.selfcheck.self_check`): groups whose pruned model fails are frozen
        and listed in ``space.frozen``. Tracing and the check stop with :class:`TracingTimeout`
        after ``timeout_s`` seconds (None: no limit). ``strict`` (what a search needs) raises
        :class:`TracingError` for an output that is not ``(batch, classes)`` logits and
        :class:`NoGroupsError` for a space without searchable groups; without it both are
        accepted (e.g. to inspect a feature extractor).
        """
        from .tracing import trace

        return trace(model, input_shape, ignore=ignore, round_to=round_to, min_ratio=min_ratio,
                     model_name=model_name, model_kwargs=model_kwargs, min_width=min_width,
                     check=check, timeout_s=timeout_s, strict=strict)

    def require_groups(self, what: str = "the model") -> "WidthSpace":
        """Raise :class:`NoGroupsError` (one line naming why) if no group is searchable."""
        if self.groups:
            return self
        why = "; ".join(f"{name}: {reason}" for name, reason in self.skipped[:3])
        more = f" (+{len(self.skipped) - 3} more)" if len(self.skipped) > 3 else ""
        raise NoGroupsError(f"{what} has no searchable channel groups"
                            + (f" ({why}{more})" if why else "")
                            + "; check space.ignore or use a model with conv/linear layers")

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return len(self.groups)

    @property
    def full_widths(self) -> list[int]:
        return [g.width for g in self.groups]

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """(min, max) allowed width per group after ``min_ratio`` and ``round_to``."""
        return [(int(grid[0]), int(grid[-1])) for grid in self._grids]

    def grid(self, index: int) -> np.ndarray:
        """Allowed widths of group ``index``, ascending."""
        return self._grids[index]

    @property
    def lower(self) -> np.ndarray:
        return np.array([grid[0] for grid in self._grids], dtype=np.int64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([grid[-1] for grid in self._grids], dtype=np.int64)

    # ------------------------------------------------------------------ cost
    def macs(self, widths):
        """MACs (conv + linear, bias excluded) of one width vector (int) or of each row (array)."""
        return self._macs(widths)

    def params(self, widths):
        """Parameter count of one width vector (int) or of each row of a 2-D array (array)."""
        return self._params(widths)

    def layer_macs(self, widths) -> dict[str, float]:
        return self._macs.per_term(widths)

    def layer_channels(self) -> dict[str, tuple]:
        """Per conv/linear layer that ran: ``(out, in)`` channel counts as affine functions of
        the width vector (:class:`structsearch.cost.Affine`; a depthwise conv's ``in`` is 1, a
        grouped conv's its fixed width per conv group)."""
        return {label: (a, b) for _, a, b, label in self._macs.terms()}

    def layer_params(self, widths) -> dict[str, float]:
        return self._params.per_term(widths)

    @property
    def full_macs(self) -> int:
        return self.macs(self.full_widths)

    @property
    def min_macs(self) -> int:
        return self.macs(self.lower)

    # ------------------------------------------------------------------ vectors
    def snap(self, widths) -> np.ndarray:
        """Nearest allowed width per group (ties go up)."""
        w = np.asarray(widths, dtype=np.float64)
        out = np.empty(len(self.groups), dtype=np.int64)
        for i, grid in enumerate(self._grids):
            out[i] = grid[np.argmin(np.abs(grid - w[i] - 1e-9))]
        return out

    def uniform(self, ratio: float) -> np.ndarray:
        """Same fraction ``ratio`` in (0, 1] of every group's full width, snapped to the grid."""
        return self.snap([ratio * g.width for g in self.groups])

    def _view(self, view):
        """A cost view (:mod:`structsearch.budget`); MACs by default."""
        if view is not None:
            return view
        from .budget import MacsCost
        return MacsCost(self)

    def max_uniform_ratio(self, limit: float, *, tol: float = 1e-6, cost=None) -> float:
        """Largest ratio r in [0, 1] with ``cost(uniform(r)) <= limit`` (bisection; the cost
        grows with r). ``cost`` is a cost view (default MACs) and ``limit`` is in its unit."""
        cost = self._view(cost).cost
        if cost(self.uniform(1.0)) <= limit:
            return 1.0
        lo, hi = 0.0, 1.0
        while hi - lo > tol:
            mid = 0.5 * (lo + hi)
            if cost(self.uniform(mid)) <= limit:
                lo = mid
            else:
                hi = mid
        return lo

    def validate(self, widths) -> np.ndarray:
        """Return ``widths`` as an int array or raise :class:`WidthError` saying what is wrong."""
        try:
            w = np.asarray(widths)
            as_float = w.astype(np.float64)
        except Exception:  # noqa: BLE001 - anything unparsable is a width error
            raise WidthError(f"widths must be a list of {len(self.groups)} integers") from None
        if w.ndim != 1 or len(w) != len(self.groups):
            raise WidthError(f"widths has {w.size} entries but the space has {len(self.groups)} "
                             f"groups; run `structsearch inspect` to list them")
        bad = np.nonzero(~np.isfinite(as_float) | (np.mod(as_float, 1) != 0))[0]
        if len(bad):
            raise WidthError(f"widths must be integers; entry {bad[0]} is {w[bad[0]]}")
        w = w.astype(np.int64)
        for i, (grid, value) in enumerate(zip(self._grids, w)):
            if value < grid[0] or value > grid[-1]:
                raise WidthError(f"width {value} of group {i} ({self.groups[i].name}) is outside "
                                 f"[{grid[0]}, {grid[-1]}]")
            if value not in grid:
                raise WidthError(f"width {value} of group {i} ({self.groups[i].name}) is not on the "
                                 f"grid (multiples of {self.round_to}, or the full width {grid[-1]})")
        return w

    def sample(self, rng: np.random.Generator, n: int, cost_range=None, *, cost=None) -> np.ndarray:
        """``n`` random width vectors on the grid; with ``cost_range=(lo, hi)`` all cost between
        ``lo`` and ``hi`` under the cost view ``cost`` (default MACs): over-budget draws are
        projected, too-small ones grown."""
        if cost_range is None:
            return self._draw(rng, n)
        view = self._view(cost)
        full, floor, unit = view.full, view.floor, view.unit
        lo, hi = cost_range
        lo = 0 if lo is None else lo
        hi = full if hi is None else hi
        if hi < floor:
            raise WidthError(f"{unit} upper bound {hi:.4g} is below the smallest network "
                             f"({floor:.4g} {unit})")
        if lo > min(hi, full):
            raise WidthError(f"{unit} range [{lo:.4g}, {hi:.4g}] is empty or above the full "
                             f"network ({full:.4g} {unit})")
        out = []
        for _ in range(200):
            draws = self._draw(rng, max(n, 16))
            for w, m in zip(draws, view.cost(draws)):
                if m < lo:
                    w, m = self._grow(rng, w, lo, view.cost)
                if m > hi:
                    w = self.project(w, hi, cost=view)
                    m = view.cost(w)
                if m >= lo:
                    out.append(w)
                    if len(out) == n:
                        return np.stack(out)
        raise WidthError(f"could not sample widths with {unit} in [{lo:.4g}, {hi:.4g}]; "
                         f"widen the range")

    def _grow(self, rng: np.random.Generator, widths: np.ndarray, lo: float, cost):
        """Widen random groups by random grid steps until the cost reaches ``lo`` (a uniform draw
        rarely lands near a budget close to the full network)."""
        w = np.array(widths, dtype=np.int64)
        pos = np.array([np.searchsorted(grid, v) for grid, v in zip(self._grids, w)])
        tops = np.array([len(grid) - 1 for grid in self._grids])
        m = cost(w)
        while m < lo:
            open_groups = np.nonzero(pos < tops)[0]
            if len(open_groups) == 0:
                break
            g = int(rng.choice(open_groups))
            pos[g] = int(rng.integers(pos[g] + 1, tops[g] + 1))
            w[g] = self._grids[g][pos[g]]
            m = cost(w)
        return w, m

    def _draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        cols = [grid[rng.integers(0, len(grid), size=n)] for grid in self._grids]
        return np.stack(cols, axis=1).astype(np.int64)

    def project(self, widths, limit: float, *, cost=None) -> np.ndarray:
        """Repair an over-budget vector: repeatedly shrink the group that saves the most cost per
        channel removed, staying on the grid and above the floor. Returns a vector with
        ``cost <= limit`` under the cost view ``cost`` (default MACs); raises
        :class:`WidthError` if even the floor is above it."""
        view = self._view(cost)
        w = self.snap(widths)
        if view.cost(w) <= limit:
            return w
        if view.floor > limit:
            raise WidthError(f"budget {limit:.4g} {view.unit} is below the smallest network in "
                             f"the space ({view.floor:.4g} {view.unit}); raise the budget or "
                             f"lower space.min_ratio")
        pos = np.array([np.searchsorted(grid, v) for grid, v in zip(self._grids, w)])
        while True:
            w, done = self._shrink_step(w, pos, limit, view.cost)
            if done:
                return w

    def _shrink_step(self, w: np.ndarray, pos: np.ndarray, limit: float, cost):
        """One repair step of :meth:`project` (``pos``, the grid positions, moves in place);
        returns the new vector and whether it is within ``limit``."""
        current = cost(w)
        excess = current - limit
        if excess <= 0:
            return w, True
        movable = np.nonzero(pos > 0)[0]
        trial = np.repeat(w[None, :], len(movable), axis=0)
        lowered = np.array([self._grids[i][pos[i] - 1] for i in movable])
        trial[np.arange(len(movable)), movable] = lowered
        saved = current - cost(trial)
        fits = np.nonzero(saved >= excess)[0]
        w = w.copy()
        if len(fits):
            # One step suffices: take the one that lands closest under the budget, so the
            # repaired vector keeps as much of the budget as a single step allows.
            best = int(fits[np.argmin(saved[fits])])
            w[movable[best]] = lowered[best]
            return w, True
        per_channel = saved / (w[movable] - lowered)
        best = int(np.argmax(per_channel))
        i = movable[best]
        # Shrinking by one grid step at a time is exact but slow on wide layers; take as many
        # steps as the excess needs (the saving per step only grows as w shrinks), capped at
        # a tenth of the remaining grid so other groups get their turn.
        steps = max(1, min(int(math.ceil(excess / max(saved[best], 1e-9))) - 1, pos[i] // 10))
        pos[i] -= steps
        w[i] = self._grids[i][pos[i]]
        return w, False

    # ------------------------------------------------------------------ display
    def table(self, widths=None) -> str:
        """Group, members, full width, bounds, MACs and params share at ``widths`` (default full)."""
        widths = self.full_widths if widths is None else list(widths)
        total_macs = WidthSpace.macs(self, widths)  # true MACs, also in a cost view
        total_params = self.params(widths)
        layer_macs = self.layer_macs(widths)
        layer_params = self.layer_params(widths)
        rows = ["| # | group | members | width | bounds | MACs % | params % |",
                "|---|---|---|---|---|---|---|"]
        for i, (group, (lo, hi)) in enumerate(zip(self.groups, self.bounds)):
            producers = group.producers
            macs = sum(layer_macs.get(p, 0.0) for p in producers)
            params = sum(layer_params.get(p, 0.0) for p in producers)
            rows.append(f"| {i} | {group.name} | {len(group.modules)} | {widths[i]}/{group.width} | "
                        f"{lo}-{hi} | {100 * macs / max(total_macs, 1):.1f} | "
                        f"{100 * params / max(total_params, 1):.1f} |")
        rows.append(f"\ntotal: {len(self.groups)} groups, {total_macs / 1e6:.2f} M MACs, "
                    f"{total_params / 1e6:.3f} M params")
        for name, why in self.skipped:
            rows.append(f"not searchable: {name} ({why})")
        return "\n".join(rows)
