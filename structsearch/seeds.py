"""Seeded width proposals: the classic ways of choosing widths, each for a MACs budget.

Every proposal returns a width vector ``w`` on the space's grid with ``cost(w) <= limit`` (``cost``: a cost view of
    :mod:`structsearch.budget`, MACs by default).
They are candidates in their own right and seed searchers (ABC's first population, Optuna's
first trials). Names (see :func:`names`):

- ``uniform``: the same fraction of every group, the largest that fits (bisection on the ratio).
- ``global``: one global threshold over max-normalised scores of any criterion (``criterion=``,
  default ``l1``), every group kept at or above its floor, threshold bisected so the vector is
  within one channel's MACs under the budget. With ``bn_scale`` this is Network Slimming's
  read-out; with ``l1`` / ``hrank`` the global-ranking baselines.
- ``ssl``: SSL's read-out: channels whose filter group-lasso norm fell below a threshold are
  removed, the rest projected into the budget.
- presets: published per-layer prune rates for the CIFAR models, mapped onto the groups by
  conv name, then scaled to the budget (``fit="scale"``) or only projected (``fit="project"``):
  ``hrank_vgg16``, ``hrank_resnet56``, ``hrank_resnet110`` (HRank README, CVPR 2020) and
  ``li_vgg16_a``, ``li_resnet56_a``, ``li_resnet56_b``, ``li_resnet110_a``, ``li_resnet110_b``
  (Li et al., ICLR 2017).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from torch import nn

from .space import WidthError, WidthSpace

__all__ = ["names", "propose", "uniform_widths", "threshold_widths", "preset_rates", "PRESETS"]


# ------------------------------------------------------------------ helpers


def _ceil_to_grid(space: WidthSpace, widths) -> np.ndarray:
    """Smallest allowed width >= ``widths[g]`` per group (so rounding never drops a channel a
    read-out meant to keep)."""
    out = np.empty(len(space.groups), dtype=np.int64)
    for g, value in enumerate(widths):
        grid = space.grid(g)
        out[g] = grid[min(np.searchsorted(grid, value - 1e-9), len(grid) - 1)]
    return out


def _check_budget(space: WidthSpace, limit: float, cost=None):
    """The cost view ``cost`` (default MACs), checked to admit ``limit``."""
    view = space._view(cost)
    if view.floor > limit:
        raise WidthError(f"budget {limit:.4g} {view.unit} is below the smallest network in the space "
                         f"({view.floor:.4g} {view.unit}); raise the budget or lower space.min_ratio")
    return view


# ------------------------------------------------------------------ uniform


def uniform_widths(space: WidthSpace, limit: float, *, tol: float = 1e-6, cost=None) -> np.ndarray:
    """``space.uniform(r)`` for the largest ratio r in (0, 1] that fits ``limit`` (bisection;
    MACs grow with r)."""
    view = _check_budget(space, limit, cost)
    ratio = space.max_uniform_ratio(limit, tol=tol, cost=view)
    if ratio >= 1.0:
        return space.uniform(1.0)
    return space.project(space.uniform(max(ratio, 1e-9)), limit, cost=view)


# ------------------------------------------------------------------ global threshold


def _normalised(scores: list[np.ndarray], normalize: str) -> list[np.ndarray]:
    if normalize == "none":
        return [np.asarray(s, dtype=np.float64) for s in scores]
    if normalize == "max":
        out = []
        for s in scores:
            s = np.asarray(s, dtype=np.float64)
            peak = np.abs(s).max() if len(s) else 0.0
            out.append(s / peak if peak > 0 else s)
        return out
    raise ValueError(f"normalize must be 'max' or 'none', got {normalize!r}")


def threshold_widths(space: WidthSpace, scores: list[np.ndarray], limit: float, *, cost=None,
                     normalize: str = "max") -> np.ndarray:
    """Widths from one global threshold on ``scores`` (one array per group, higher = keep).

    Channels are ranked globally (``normalize="max"`` divides each group's scores by their
    largest magnitude first; ``"none"`` compares raw scores); a threshold keeps the top-ranked
    ones, every group keeps at least its floor (``space.lower``), and the threshold is bisected
    to the lowest one whose vector fits ``limit``: adding the next-ranked channel would exceed
    the budget, so the result is within one channel's MACs of it (one grid step if
    ``round_to > 1``).
    """
    if len(scores) != len(space.groups):
        raise ValueError(f"got scores for {len(scores)} groups, the space has {len(space.groups)}")
    view = _check_budget(space, limit, cost)
    norm = _normalised(scores, normalize)
    values = np.concatenate(norm)
    group_of = np.concatenate([np.full(len(s), g) for g, s in enumerate(norm)])
    index = np.concatenate([np.arange(len(s)) for s in norm])
    # Ties break by group then channel index, so the ranking and the result are deterministic.
    ranked_groups = group_of[np.lexsort((index, group_of, -values))]
    lower = space.lower

    def widths(k: int) -> np.ndarray:
        counts = np.bincount(ranked_groups[:k], minlength=len(space.groups))
        return _ceil_to_grid(space, np.maximum(counts, lower))

    lo, hi = 0, len(values)  # widths(lo) fits; find the largest k that fits
    if view.cost(widths(hi)) <= limit:
        return widths(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if view.cost(widths(mid)) <= limit:
            lo = mid
        else:
            hi = mid
    return widths(lo)


def _scores_for(criterion, model, space, batches, scores, default: str) -> list[np.ndarray]:
    if scores is not None:
        return [np.asarray(s, dtype=np.float64) for s in scores]
    from . import criteria

    crit = criteria.resolve(criterion, default)
    return crit.scores(model, space, batches if crit.needs_data else None)


# ------------------------------------------------------------------ SSL read-out


def ssl_widths(model: nn.Module, space: WidthSpace, limit: float, *, cost=None,
               threshold: float | None = None,
               rel_threshold: float = 1e-2, scores=None) -> np.ndarray:
    """SSL read-out: a channel survives when the L2 norm of its filter is at least ``threshold``
    (absolute) or, by default, ``rel_threshold`` times the largest filter norm in the model;
    groups keep at least their floor, and the vector is projected into ``limit``."""
    from .criteria.group_lasso import GroupLassoNorm

    view = _check_budget(space, limit, cost)
    norms = scores if scores is not None else GroupLassoNorm(normalize=False).scores(model, space)
    norms = [np.asarray(n, dtype=np.float64) for n in norms]
    if threshold is None:
        threshold = rel_threshold * max(float(n.max()) for n in norms if len(n))
    alive = np.array([int((n >= threshold).sum()) for n in norms])
    widths = _ceil_to_grid(space, np.maximum(alive, space.lower))
    return space.project(widths, limit, cost=view)


# ------------------------------------------------------------------ published presets


def expand_rates(text: str) -> list[float]:
    """Expand a compress-rate string as the papers' scripts write it, e.g.
    ``"[0.1]+[0.6]*35+[0.0]*2"`` -> 38 floats (no ``eval``: a small grammar of ``[a, b]*n``
    terms joined by ``+``)."""
    rates: list[float] = []
    for term in text.replace(" ", "").split("+"):
        match = re.fullmatch(r"\[([0-9.,]+)\](?:\*(\d+))?", term)
        if not match:
            raise ValueError(f"cannot read rate term {term!r} in {text!r}")
        values = [float(v) for v in match.group(1).split(",")]
        rates.extend(values * int(match.group(2) or 1))
    return rates


def _convs(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def _hrank(text: str, convs_expected: int) -> Callable[[list[str]], dict[str, float]]:
    # HRank's k-th rate is the pruned fraction of the k-th conv in definition order.
    def rates(convs: list[str]) -> dict[str, float]:
        values = expand_rates(text)
        if len(values) != convs_expected or len(convs) != convs_expected:
            raise ValueError(f"this preset needs a model with {convs_expected} convs, "
                             f"got {len(convs)}")
        return dict(zip(convs, values))
    return rates


def _li_resnet(depth: int, skip: tuple[int, ...], stage_rates: tuple[float, float, float]):
    # Li et al. prune only the first conv of each residual block, at one rate per stage, and
    # leave the sensitive layers in ``skip`` whole; layer ids count convs from 1 (stem = 1), so
    # block b's first conv is id 2 + 2b.
    n = (depth - 2) // 6

    def rates(convs: list[str]) -> dict[str, float]:
        if len(convs) != 6 * n + 1:
            raise ValueError(f"this preset needs a CIFAR ResNet-{depth} ({6 * n + 1} convs), "
                             f"got {len(convs)} convs")
        out = {}
        for layer_id, name in enumerate(convs, start=1):
            if layer_id % 2 or layer_id in skip:
                continue
            out[name] = stage_rates[0 if layer_id <= 2 * n else 1 if layer_id <= 4 * n else 2]
        return out
    return rates


def _li_vgg16_a(convs: list[str]) -> dict[str, float]:
    # VGG-16-A halves conv 1 and convs 8-13 (Li et al., Table 2): 32, 64, 128, 128, 256 x 3,
    # 256 x 6.
    if len(convs) != 13:
        raise ValueError(f"li_vgg16_a needs a VGG-16 (13 convs), got {len(convs)} convs")
    return {name: 0.5 for i, name in enumerate(convs, start=1) if i == 1 or i >= 8}


@dataclass(frozen=True)
class Preset:
    """Published per-conv prune rates (fraction removed) and how the paper rounds them:
    ``"hrank"`` keeps ``c - floor(rate * c)``, ``"li"`` keeps ``floor(c * (1 - rate))``."""

    rates: Callable[[list[str]], dict[str, float]]
    rounding: str
    source: str


PRESETS: dict[str, Preset] = {
    "hrank_vgg16": Preset(_hrank("[0.95]+[0.5]*6+[0.9]*4+[0.8]*2", 13), "hrank",
                          "HRank README, VGG-16 (108.61M FLOPs as counted there)"),
    "hrank_resnet56": Preset(
        _hrank("[0.1]+[0.60]*35+[0.0]*2+[0.6]*6+[0.4]*3+[0.1]+[0.4]+[0.1]+[0.4]+[0.1]+[0.4]"
               "+[0.1]+[0.4]", 55), "hrank", "HRank README, ResNet-56 (62.72M FLOPs)"),
    "hrank_resnet110": Preset(_hrank("[0.1]+[0.40]*36+[0.40]*36+[0.4]*36", 109), "hrank",
                              "HRank README, ResNet-110 (156.90M FLOPs)"),
    "li_vgg16_a": Preset(_li_vgg16_a, "li", "Li et al. 2017, VGG-16-pruned-A"),
    "li_resnet56_a": Preset(_li_resnet(56, (16, 20, 38, 54), (0.1, 0.1, 0.1)), "li",
                            "Li et al. 2017, ResNet-56-pruned-A"),
    "li_resnet56_b": Preset(_li_resnet(56, (16, 18, 20, 34, 38, 54), (0.6, 0.3, 0.1)), "li",
                            "Li et al. 2017, ResNet-56-pruned-B"),
    "li_resnet110_a": Preset(_li_resnet(110, (36,), (0.5, 0.0, 0.0)), "li",
                             "Li et al. 2017, ResNet-110-pruned-A"),
    "li_resnet110_b": Preset(_li_resnet(110, (36, 38, 74), (0.5, 0.4, 0.3)), "li",
                             "Li et al. 2017, ResNet-110-pruned-B"),
}


def preset_rates(name: str, model: nn.Module, space: WidthSpace) -> np.ndarray:
    """Prune rate per group of preset ``name``: the smallest rate among the group's producer
    convs (a residual-stream channel only disappears if every conv writing it drops it); 0 for
    groups without a rated conv (e.g. a hidden linear layer)."""
    rates = PRESETS[name].rates(_convs(model))
    out = np.zeros(len(space.groups))
    for g, group in enumerate(space.groups):
        rated = [rates[p] for p in group.producers if p in rates]
        out[g] = min(rated) if rated else 0.0
    return out


def _preset_keep(space: WidthSpace, rates: np.ndarray, rounding: str, scale: float) -> np.ndarray:
    """Channels each group keeps at ``scale`` times the published rates (no floor, no grid)."""
    full = np.array(space.full_widths, dtype=np.float64)
    fraction = np.minimum(rates * scale, 1.0)
    if rounding == "hrank":
        return full - np.floor(fraction * full + 1e-9)
    return np.floor(full * (1.0 - fraction) + 1e-9)


def _preset_widths(space: WidthSpace, rates: np.ndarray, rounding: str, scale: float) -> np.ndarray:
    keep = _preset_keep(space, rates, rounding, scale)
    return _ceil_to_grid(space, np.clip(keep, space.lower, space.upper))


def _paper_widths(name: str, space: WidthSpace, rates: np.ndarray, rounding: str, limit: float,
                  view) -> np.ndarray:
    """The published architecture exactly, or a WidthError saying what prevents it."""
    keep = _preset_keep(space, rates, rounding, 1.0).astype(np.int64)
    widths = _preset_widths(space, rates, rounding, 1.0)
    off = np.nonzero(widths != keep)[0]
    if len(off):
        g = int(off[0])
        raise WidthError(f"preset {name}@paper keeps {keep[g]} channels of group {g} "
                         f"({space.groups[g].name}) but the space allows widths from "
                         f"{space.lower[g]} on a grid of {space.round_to}; lower space.min_ratio "
                         f"(to {keep[g] / space.groups[g].width:.3f} or less) / space.round_to, "
                         f"or use {name}@scaled")
    if view.cost(widths) > limit:
        raise WidthError(f"preset {name}@paper costs {view.cost(widths):.4g} {view.unit}, above the "
                         f"budget {limit:.4g} {view.unit}; raise the budget or use {name}@scaled")
    return widths


def preset_widths(name: str, model: nn.Module, space: WidthSpace, limit: float, *, cost=None,
                  fit: str = "scale") -> np.ndarray:
    """Preset ``name`` on this space within ``limit``.

    ``fit="scale"`` multiplies every published rate by one factor t (t = 1 is the paper's
    architecture, floors respected) and bisects t to the least pruning that fits, so the preset's
    shape spends the budget; ``fit="project"`` keeps the published widths and only shrinks them
    (:meth:`WidthSpace.project`) when they exceed the budget; ``fit="paper"`` is the published
    architecture exactly, or a WidthError when the space's floor or grid, or the budget, does
    not allow it.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    view = _check_budget(space, limit, cost)
    preset = PRESETS[name]
    rates = preset_rates(name, model, space)
    if fit == "paper":
        return _paper_widths(name, space, rates, preset.rounding, limit, view)
    published = _preset_widths(space, rates, preset.rounding, 1.0)
    if fit == "project" or not rates.any():
        return space.project(published, limit, cost=view)
    if fit != "scale":
        raise ValueError(f"fit must be 'scale', 'project' or 'paper', got {fit!r}")
    top = 1.0 / rates[rates > 0].min()  # every rated group at its floor
    if view.cost(_preset_widths(space, rates, preset.rounding, top)) > limit:
        return space.project(_preset_widths(space, rates, preset.rounding, top), limit, cost=view)
    lo, hi = 0.0, top  # cost(widths(hi)) fits; find the smallest factor that fits
    if view.cost(_preset_widths(space, rates, preset.rounding, lo)) <= limit:
        return _preset_widths(space, rates, preset.rounding, lo)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if view.cost(_preset_widths(space, rates, preset.rounding, mid)) <= limit:
            hi = mid
        else:
            lo = mid
    return _preset_widths(space, rates, preset.rounding, hi)


# ------------------------------------------------------------------ entry point


def names() -> list[str]:
    """Proposal names accepted by :func:`propose` (a preset also as ``NAME@paper``, the
    published architecture exactly, and ``NAME@scaled``, its rates scaled to the budget)."""
    return ["uniform", "global", "ssl", "sensitivity", *sorted(PRESETS)]


PRESET_MODES = {"paper": "paper", "scaled": "scale"}


def preset_fit(name: str) -> str:
    """The ``fit`` of a preset entry ``NAME@paper`` / ``NAME@scaled`` (bare NAME: scaled)."""
    base, _, mode = name.partition("@")
    if base not in PRESETS or (mode and mode not in PRESET_MODES):
        raise KeyError(f"unknown proposal {name!r}; presets take @paper or @scaled, e.g. "
                       f"{sorted(PRESETS)[0]}@paper")
    return PRESET_MODES[mode or "scaled"]


def label(name: str) -> str:
    """The label a proposal's candidates carry: presets always say which fit they are."""
    base, _, mode = name.partition("@")
    return f"{base}@{mode or 'scaled'}" if base in PRESETS else name


def propose(name: str, model: nn.Module, space: WidthSpace, *, limit: float, cost=None,
            criterion=None, batches=None, **params) -> np.ndarray:
    """Width vector (int64, on the grid) of proposal ``name`` with ``cost(w) <= limit``
    (``cost``: a cost view of :mod:`structsearch.budget`, MACs by default).

    ``criterion`` (a name or criterion object) and ``batches`` matter to ``global`` only;
    ``params`` go to the proposal: ``global``: ``scores`` (precomputed, e.g. from the score
    cache), ``normalize`` ('max' | 'none'; by default raw scores for a criterion whose scores
    compare across layers, ``bn_scale``, else 'max'); ``ssl``: ``threshold``, ``rel_threshold``,
    ``scores``; presets: ``fit`` ('scale' | 'project'). Raises ``WidthError`` when even the
    smallest network exceeds ``limit``.
    """
    if name == "uniform":
        _no_params(name, params)
        return uniform_widths(space, limit, cost=cost)
    if name == "global":
        given = params.pop("scores", None)
        normalize = params.pop("normalize", None)
        if given is None and (criterion is None or isinstance(criterion, str)):
            from . import criteria
            crit_params, readout = criteria.global_readout(criterion or "l1")
            criterion = criteria.get(criterion or "l1", **crit_params)
            normalize = normalize or readout
        scores = _scores_for(criterion, model, space, batches, given, "l1")
        normalize = normalize or "max"
        _no_params(name, params)
        return threshold_widths(space, scores, limit, cost=cost, normalize=normalize)
    if name == "ssl":
        return ssl_widths(model, space, limit, cost=cost, **params)
    if name == "sensitivity":  # Li et al.'s read-out of per-group sensitivity curves (``rows``)
        from .sensitivity import li_widths
        if "rows" not in params:
            raise TypeError("the sensitivity proposal needs rows= (structsearch.sensitivity's "
                            "curves of this model)")
        return li_widths(space, params.pop("rows"), limit, cost=cost, **params)
    base, _, mode = name.partition("@")
    if base in PRESETS:
        if mode:
            params["fit"] = preset_fit(name)
        return preset_widths(base, model, space, limit, cost=cost, **params)
    raise KeyError(f"unknown proposal {name!r}; choose one of {', '.join(names())}")


def _no_params(name: str, params: dict) -> None:
    if params:
        raise TypeError(f"proposal {name!r} takes no parameter(s) {', '.join(sorted(params))}")
