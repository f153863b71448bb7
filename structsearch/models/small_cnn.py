"""A small VGG-style CNN for the offline demo datasets (28x28 MNIST, 8x8 digits).

About 18M MACs at 28x28 and 1.2M at 8x8, with 66k params at 10 classes, so a demo search
trains candidates quickly on a couple of CPU threads.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .registry import init_weights, register, scale_channels


class SmallCNN(nn.Module):
    """Four 3x3 conv-BN-ReLU layers with a 2x2 max pool after the second, GAP, Linear.

    ``widths`` are the four conv output widths; ``width_mult`` scales them. Global average
    pooling makes the head independent of the input size (any side >= 2 works).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        width_mult: float = 1.0,
        widths: Sequence[int] = (32, 32, 64, 64),
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths needs 4 ints, got {list(widths)}")
        scaled = [scale_channels(w, width_mult) for w in widths]
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(scaled):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            if i == 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.fc(torch.flatten(x, 1))


@register("small_cnn", input_size=28)
def small_cnn(
    *, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, **kwargs
) -> SmallCNN:
    """Demo CNN for 28x28 (and 8x8) inputs."""
    return SmallCNN(
        num_classes=num_classes, in_channels=in_channels, width_mult=width_mult, **kwargs
    )
