"""The criterion protocol and the helpers every criterion shares."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..space import WidthSpace


class Criterion:
    """Scores every channel of every group; higher means more important."""

    name = "criterion"
    needs_data = False

    def scores(self, model: nn.Module, space: WidthSpace,
               batches: Iterable | None = None) -> list[np.ndarray]:
        raise NotImplementedError


def per_group(model: nn.Module, space: WidthSpace,
              module_score: Callable[[nn.Module], torch.Tensor | None]) -> list[np.ndarray]:
    """Combine per-module output-channel scores into per-group root-channel scores.

    ``module_score(module)`` returns one score per output channel of that module, or None if the
    module does not score (e.g. a BN for L1). Each member's scores are mapped onto the group's
    root channels (averaged where one root channel spans several module channels), normalised
    by their maximum, and summed.
    """
    modules = dict(model.named_modules())
    result = []
    for group in space.groups:
        total = np.zeros(group.width)
        for member in group.members:
            if member.dim != "out":
                continue
            raw = module_score(modules[member.module])
            if raw is None:
                continue
            raw = raw.detach().float().cpu().numpy()
            values = raw[member.idxs]
            mapped = np.bincount(member.root_idxs, weights=values, minlength=group.width)
            mapped /= np.maximum(np.bincount(member.root_idxs, minlength=group.width), 1)
            peak = np.abs(mapped).max()
            total += mapped / peak if peak > 0 else mapped
        result.append(total)
    return result


def criterion_keep(scores: list[np.ndarray], widths) -> dict[int, np.ndarray]:
    """Indices of the top ``widths[g]`` channels of each group (ties broken by channel index)."""
    keep = {}
    for g, (s, w) in enumerate(zip(scores, widths)):
        order = np.lexsort((np.arange(len(s)), -np.asarray(s)))
        keep[g] = np.sort(order[: int(w)])
    return keep
