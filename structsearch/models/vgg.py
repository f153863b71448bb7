"""VGG for 32x32 inputs with Li et al.'s (2017, "Pruning Filters for Efficient ConvNets") head.

VGG-16 at 32x32: 313.2M conv MACs + 0.27M linear MACs (bias excluded), ~15.0M params.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from .registry import init_weights, register, scale_channels

# "M" is a 2x2 max pool; ints are the output widths of 3x3 convs.
LayerSpec = Union[int, str]

VGG_CONFIGS: dict[str, tuple[LayerSpec, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ),
}


class CifarVGG(nn.Module):
    """Plain VGG: ``cfg`` gives the conv widths in order (ints) and max pools (``"M"``).

    Each conv is 3x3, padding 1, no bias, followed by BN and ReLU. After the last conv a global
    average pool (2x2 -> 1x1 at 32x32 input) feeds the head
    ``Linear(c, hidden) - BatchNorm1d - ReLU - Linear(hidden, num_classes)``.
    ``width_mult`` scales every conv width and ``hidden_features``.
    """

    def __init__(
        self,
        cfg: Sequence[LayerSpec],
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        hidden_features: int = 512,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for spec in cfg:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            if not isinstance(spec, int) or spec < 1:
                raise ValueError(f"cfg entries must be positive ints or 'M', got {spec!r}")
            width = scale_channels(spec, width_mult)
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            channels = width
        if not any(isinstance(m, nn.Conv2d) for m in layers):
            raise ValueError("cfg must contain at least one conv width")
        hidden = scale_channels(hidden_features, width_mult)
        self.features = nn.Sequential(*layers)
        # Adaptive pooling equals the 2x2 average pool at 32x32 and keeps other sizes working.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _build(
    config: str, num_classes: int, in_channels: int, width_mult: float, **kwargs
) -> CifarVGG:
    return CifarVGG(
        VGG_CONFIGS[config],
        num_classes=num_classes,
        in_channels=in_channels,
        width_mult=width_mult,
        **kwargs,
    )


@register("cifar_vgg11", input_size=32)
def cifar_vgg11(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarVGG:
    """VGG-11 with BN and Li et al.'s head, for 32x32 inputs."""
    return _build("vgg11", num_classes, in_channels, width_mult, **kwargs)


@register("cifar_vgg13", input_size=32)
def cifar_vgg13(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarVGG:
    """VGG-13 with BN and Li et al.'s head, for 32x32 inputs."""
    return _build("vgg13", num_classes, in_channels, width_mult, **kwargs)


@register("cifar_vgg16", input_size=32)
def cifar_vgg16(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarVGG:
    """VGG-16 with BN and Li et al.'s head, for 32x32 inputs (313.5M MACs, 15.0M params)."""
    return _build("vgg16", num_classes, in_channels, width_mult, **kwargs)


@register("cifar_vgg19", input_size=32)
def cifar_vgg19(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> CifarVGG:
    """VGG-19 with BN and Li et al.'s head, for 32x32 inputs."""
    return _build("vgg19", num_classes, in_channels, width_mult, **kwargs)
