"""Shared machinery of the criteria that look at post-activation feature maps (HRank, DropNet).

For every group the *observed* members are its BN layers (the post-BN map is what the next
layer sees after ReLU), or its conv/linear producers when the group has no BN. In a residual
stream (a group whose BN writers sit in two or more blocks, their outputs summed) each writer
inside a block is observed at the block's output instead, after the addition: that is what a
pruned stream channel carries, and where HRank's official code ranks ResNet channels. A
forward hook on each observed module turns ``relu(output)`` into per-channel sums at once, so
no feature map outlives its hook (in-place ReLUs later in the model cannot corrupt it) and
memory stays flat.
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


def _block_of(modules: dict, name: str) -> str | None:
    """The nearest enclosing module of ``name`` that is a block (not a container, not the
    model itself), or None."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:cut])
        if not isinstance(modules[parent], (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            return parent
    return None


def observed_outputs(model: nn.Module, space: WidthSpace) -> list[list[tuple[str, object]]]:
    """Per group, ``(module, member)``: the module whose post-activation output is scored and
    the member whose channel mapping reads it. Residual streams are read at block outputs (see
    the module docstring); a block whose output has other channels falls back to the member."""
    modules = dict(model.named_modules())
    result = []
    for members in observed_members(model, space):
        blocks = {m.module: _block_of(modules, m.module) for m in members}
        stream = len({b for b in blocks.values() if b is not None}) >= 2 and \
            all(isinstance(modules[m.module], _BN) for m in members)
        pairs, seen = [], set()
        for m in members:
            source = blocks[m.module] if stream and blocks[m.module] is not None else m.module
            if source not in seen:  # a block's writers (conv2, its shortcut BN) share one output
                seen.add(source)
                pairs.append((source, m))
        result.append(pairs)
    return result


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
    chosen = observed_outputs(model, space)
    names = {n for pairs in chosen for source, m in pairs for n in (source, m.module)}
    means = channel_means(model, names, inputs, stat)
    modules = dict(model.named_modules())
    result = []
    for group, pairs in zip(space.groups, chosen):
        total = np.zeros(group.width)
        used = []
        for source, member in pairs:
            own = modules[member.module].num_features if isinstance(modules[member.module], _BN) else None
            if source in means and own is not None and len(means[source]) != own:
                source = member.module  # the block's output is not this stream's channels
            if source in means:  # an unused branch scores nothing
                used.append((source, member))
        for source, member in used:
            total += map_member(member, means[source], group.width, normalize=normalize)
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
