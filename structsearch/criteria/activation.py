"""Mean post-activation (Tan & Motani, "DropNet", ICML 2020)."""
from __future__ import annotations

import torch

from .features import FeatureCriterion


def pooled_activation(maps: torch.Tensor) -> torch.Tensor:
    """|global-average-pooled| post-ReLU value of every channel of a (N, C, H, W) batch: (N, C)."""
    return maps.mean(dim=(2, 3)).abs()


class MeanActivation(FeatureCriterion):
    """Score of channel j = mean over images of |GAP(relu(output_j))| over the first
    ``num_batches`` batches: channels that rarely fire are dropped first."""

    name = "activation"
    statistic = staticmethod(pooled_activation)
