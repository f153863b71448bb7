"""ResNet for 32x32 inputs (He et al. 2016, section 4.2): depth 6n+2, option-A shortcuts.

MACs at 32x32 (conv + linear, bias excluded) / params:
ResNet-20 40.55M / 0.27M, ResNet-56 125.49M / 0.85M, ResNet-110 252.89M / 1.73M.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..layers import PadShortcut
from .registry import init_weights, register, scale_channels


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; ``mid_channels`` is the width between them (the prunable one)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(mid_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): stem conv 3x3 + BN + ReLU, three stages of n basic blocks, GAP, Linear.

    ``stage_channels`` are the block output widths of the three stages (the stem uses the
    first); ``mid_channels`` optionally gives each block's inner width (3n ints, in block order),
    which is what channel pruning of option-A ResNets changes. ``width_mult`` scales the
    default widths; explicitly given ``mid_channels`` are used as they are.
    """

    def __init__(
        self,
        depth: int = 56,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        stage_channels: Sequence[int] = (16, 32, 64),
        mid_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        if len(stage_channels) != 3:
            raise ValueError(f"stage_channels needs 3 widths, got {list(stage_channels)}")
        blocks_per_stage = (depth - 2) // 6
        stages = [scale_channels(c, width_mult) for c in stage_channels]
        if mid_channels is None:
            mids = [c for c in stages for _ in range(blocks_per_stage)]
        else:
            mids = [int(c) for c in mid_channels]
            if len(mids) != 3 * blocks_per_stage or min(mids) < 1:
                raise ValueError(
                    f"mid_channels needs {3 * blocks_per_stage} positive ints, got {len(mids)}"
                )
        self.depth = depth

        self.conv1 = nn.Conv2d(in_channels, stages[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stages[0])
        self.relu = nn.ReLU()
        channels = stages[0]
        block_index = 0
        for stage_index, width in enumerate(stages):
            blocks = []
            for i in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, mids[block_index], width, stride))
                channels = width
                block_index += 1
            self.add_module(f"layer{stage_index + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(
    depth: int, num_classes: int, in_channels: int, width_mult: float, **kwargs
) -> CifarResNet:
    return CifarResNet(
        depth, num_classes=num_classes, in_channels=in_channels, width_mult=width_mult, **kwargs
    )


@register("cifar_resnet20", input_size=32)
def cifar_resnet20(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarResNet:
    """ResNet-20 for 32x32 inputs (40.55M MACs, 0.27M params)."""
    return _build(20, num_classes, in_channels, width_mult, **kwargs)


@register("cifar_resnet32", input_size=32)
def cifar_resnet32(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarResNet:
    """ResNet-32 for 32x32 inputs."""
    return _build(32, num_classes, in_channels, width_mult, **kwargs)


@register("cifar_resnet44", input_size=32)
def cifar_resnet44(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarResNet:
    """ResNet-44 for 32x32 inputs."""
    return _build(44, num_classes, in_channels, width_mult, **kwargs)


@register("cifar_resnet56", input_size=32)
def cifar_resnet56(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarResNet:
    """ResNet-56 for 32x32 inputs (125.49M MACs, 0.85M params)."""
    return _build(56, num_classes, in_channels, width_mult, **kwargs)


@register("cifar_resnet110", input_size=32)
def cifar_resnet110(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarResNet:
    """ResNet-110 for 32x32 inputs (252.89M MACs, 1.73M params)."""
    return _build(110, num_classes, in_channels, width_mult, **kwargs)
