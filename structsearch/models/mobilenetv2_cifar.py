"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 inputs.

Changes from the ImageNet network, as is common for CIFAR: the stem conv has stride 1 and the
first two stride-2 inverted-residual stages (24 and 32 channels) have stride 1, so the feature
map reaches 4x4 instead of 1x1 before global pooling.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import init_weights, register, scale_channels

# (expand_ratio, out_channels, blocks, first_stride) per stage; strides already adapted.
CIFAR_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 on ImageNet
    (6, 32, 3, 1),  # stride 2 on ImageNet
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """Conv (no bias) - BN - ReLU6, 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                  padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(),
    )


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped when expand_ratio is 1) - depthwise 3x3 - linear project 1x1."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, stride: int,
                 *, expand: bool = True) -> None:
        super().__init__()
        if not expand and hidden_channels != in_channels:
            raise ValueError("without the expansion conv, hidden_channels must equal in_channels")
        layers: list[nn.Module] = []
        if expand:
            layers.append(conv_bn_relu6(in_channels, hidden_channels, 1))
        layers += [
            conv_bn_relu6(
                hidden_channels, hidden_channels, 3, stride=stride, groups=hidden_channels
            ),
            nn.Conv2d(hidden_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs; ``width_mult`` scales every width (stem, blocks, last conv).

    ``settings`` rows are ``(expand_ratio, out_channels, blocks, first_stride)``.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        settings: Sequence[Sequence[int]] = CIFAR_SETTINGS,
        stem_channels: int = 32,
        last_channels: int = 1280,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = scale_channels(stem_channels, width_mult)
        features: list[nn.Module] = [conv_bn_relu6(in_channels, channels, 3, stride=1)]
        for expand_ratio, out_channels, blocks, first_stride in settings:
            width = scale_channels(out_channels, width_mult)
            for i in range(blocks):
                features.append(
                    InvertedResidual(
                        channels,
                        channels * expand_ratio,
                        width,
                        first_stride if i == 0 else 1,
                        expand=expand_ratio != 1,
                    )
                )
                channels = width
        last = scale_channels(last_channels, width_mult)
        features.append(conv_bn_relu6(channels, last, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@register("cifar_mobilenet_v2", input_size=32)
def cifar_mobilenet_v2(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarMobileNetV2:
    """MobileNetV2 for 32x32 inputs (stem and first two downsampling stages at stride 1)."""
    return CifarMobileNetV2(
        num_classes=num_classes, in_channels=in_channels, width_mult=width_mult, **kwargs
    )
