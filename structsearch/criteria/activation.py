"""Mean post-activation (Tan & Motani, "DropNet", ICML 2020)."""
from __future__ import annotations

import torch

from .base import Criterion
from .features import feature_scores


def pooled_activation(maps: torch.Tensor) -> torch.Tensor:
    """|global-average-pooled| post-ReLU value of every channel of a (N, C, H, W) batch: (N, C)."""
    return maps.mean(dim=(2, 3)).abs()


class MeanActivation(Criterion):
    """Score of channel j = mean over images of |GAP(relu(output_j))| over the first
    ``num_batches`` batches: channels that rarely fire are dropped first."""

    name = "activation"
    needs_data = True

    def __init__(self, num_batches: int = 5):
        if num_batches < 1:
            raise ValueError("num_batches must be >= 1")
        self.num_batches = num_batches

    def scores(self, model, space, batches=None):
        return feature_scores(model, space, batches, self.num_batches, pooled_activation)
