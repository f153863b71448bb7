"""Importance criteria: which channels of a group a candidate keeps.

Every criterion has one protocol: ``scores(model, space, batches=None)`` returns one numpy array
per group of the space (length = the group's full width, higher = keep). A group with several
member layers sums the members' scores, each normalised by its maximum, so wide and narrow
layers weigh the same.
"""
from __future__ import annotations

from typing import Callable

from ..ranking import criterion_keep
from ..registry import Registry
from .activation import MeanActivation
from .base import Criterion, model_inputs, per_group
from .bn_scale import BNScale
from .cache import cached_scores
from .group_lasso import GroupLassoNorm
from .hrank import HRank
from .l1 import L1Norm
from .lasso import ChannelLasso, lasso_select, reconstruct
from .random import RandomCriterion

_REGISTRY: Registry[Callable[..., Criterion]] = Registry("criterion")
for _name, _cls in (("l1", L1Norm), ("bn_scale", BNScale), ("hrank", HRank),
                    ("activation", MeanActivation), ("lasso", ChannelLasso),
                    ("group_lasso", GroupLassoNorm), ("random", RandomCriterion)):
    _REGISTRY.add(_name, _cls)


def names() -> list[str]:
    """Registered criterion names."""
    return _REGISTRY.names()


def get(name: str, **params) -> Criterion:
    """The criterion ``name`` with its parameters; unknown names raise ``KeyError``."""
    return _REGISTRY.get(name)(**params)


def global_readout(name: str) -> tuple[dict, str]:
    """How the global-threshold read-out uses criterion ``name``: the criterion's parameters and
    the threshold's ``normalize`` ('none': raw scores when they compare across layers, e.g.
    Network Slimming's |gamma|; 'max': per-layer max-normalised, e.g. L1 and HRank)."""
    if _REGISTRY.get(name).comparable_across_layers:
        return {"normalize": False}, "none"
    return {}, "max"


def resolve(criterion: str | Criterion | None, default: str = "l1") -> Criterion:
    """A criterion object from a name, an object (returned as is) or None (``default``)."""
    if criterion is None:
        criterion = default
    return get(criterion) if isinstance(criterion, str) else criterion


__all__ = ["Criterion", "criterion_keep", "per_group", "model_inputs", "names", "get", "resolve",
           "cached_scores", "lasso_select", "reconstruct", "L1Norm", "BNScale", "HRank",
           "MeanActivation", "ChannelLasso", "GroupLassoNorm", "RandomCriterion"]
