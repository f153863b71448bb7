"""Shared machinery of the criteria that look at post-activation feature maps (HRank, DropNet).

For every group the *observed* members are its BN layers (the post-BN map is what the next
layer sees after ReLU), or its conv/linear producers when the group has no BN. A forward hook
on each observed module turns ``relu(output)`` into per-channel sums at once, so no feature map
outlives its hook (in-place ReLUs later in the model cannot corrupt it) and memory stays flat.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..space import WidthSpace
from .base import Criterion, forward_hooked, map_member, model_inputs

_BN = nn.modules.batchnorm._BatchNorm


def observed_members(model: nn.Module, space: WidthSpace) -> list[list]:
    """Per group, the ``out`` members whose post-activation output is scored."""
    modules = dict(model.named_modules())
    chosen = []
    for group in space.groups:
        outs = [m for m in group.members if m.dim == "out"]
        bns = [m for m in outs if isinstance(modules[m.module], _BN)]
        layers = [m for m in outs if isinstance(modules[m.module], (nn.Conv2d, nn.Linear))]
        chosen.append(bns or layers)
    return chosen


@torch.no_grad()
def channel_means(model: nn.Module, names: set[str], inputs: list[torch.Tensor],
                  stat: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean over images of ``stat(relu(output))`` for each named module.

    ``stat`` maps a post-ReLU map (N, C, H, W) to per-image, per-channel values (N, C); 2-D
    outputs (N, C) are treated as 1x1 maps. The model runs in eval mode (BN running statistics,
    as at inference) and its mode is restored afterwards.
    """
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name):
        def hook(module, args, output):
            out = output.float()
            if out.dim() == 2:
                out = out[:, :, None, None]
            values = stat(torch.relu(out)).double().sum(0)
            sums[name] = values if name not in sums else sums[name] + values
            counts[name] = counts.get(name, 0) + out.shape[0]
        return hook

    forward_hooked(model, inputs, [modules[n].register_forward_hook(hook_for(n)) for n in sorted(names)])
    return {n: (sums[n] / counts[n]).cpu() for n in sums}


def feature_scores(model: nn.Module, space: WidthSpace, batches, num_batches: int,
                   stat: Callable[[torch.Tensor], torch.Tensor], *,
                   normalize: bool = True) -> list[np.ndarray]:
    """Per-group root-channel scores from ``stat`` of post-activation maps, each observed member
    normalised by its maximum and summed (as :func:`~structsearch.criteria.base.per_group`).
    ``normalize=False`` keeps the raw values (averaged over a group's observed members), which
    compare across groups: DropNet's global ranking needs them."""
    inputs = model_inputs(batches, num_batches)
    chosen = observed_members(model, space)
    means = channel_means(model, {m.module for ms in chosen for m in ms}, inputs, stat)
    result = []
    for group, members in zip(space.groups, chosen):
        total = np.zeros(group.width)
        used = [m for m in members if m.module in means]  # an unused branch scores nothing
        for member in used:
            total += map_member(member, means[member.module], group.width, normalize=normalize)
        if not normalize and used:
            total /= len(used)
        result.append(total)
    return result


class FeatureCriterion(Criterion):
    """A criterion computed from post-activation feature maps of the first ``num_batches``
    batches; subclasses set ``statistic`` ((N, C, H, W) maps -> (N, C) per-image scores)."""

    needs_data = True
    statistic: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, num_batches: int = 5, normalize: bool = True):
        if num_batches < 1:
            raise ValueError("num_batches must be >= 1")
        self.num_batches = num_batches
        self.normalize = bool(normalize)  # False: raw values that compare across groups

    def scores(self, model, space, batches=None):
        return feature_scores(model, space, batches, self.num_batches, type(self).statistic,
                              normalize=self.normalize)
