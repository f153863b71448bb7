"""HRank (Lin et al., "HRank: Filter Pruning using High-Rank Feature Map", CVPR 2020)."""
from __future__ import annotations

import torch

from .features import FeatureCriterion


def feature_map_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Matrix rank of every (H, W) map of a (N, C, H, W) batch, as a float (N, C) tensor."""
    return torch.linalg.matrix_rank(maps.float()).to(torch.float32)


class HRank(FeatureCriterion):
    """Score of channel j = average matrix rank of its post-BN+ReLU feature map over the images
    of the first ``num_batches`` batches (the paper uses 5 batches of 128).

    A channel with a low-rank map carries little information and is removed first. Ranks are
    bounded by min(H, W), so scores of layers at different resolutions differ in scale; each
    member is max-normalised before a group combines them.
    """

    name = "hrank"
    statistic = staticmethod(feature_map_ranks)
