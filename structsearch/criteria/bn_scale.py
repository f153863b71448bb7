"""BN scale |gamma| (Liu et al., "Network Slimming", ICCV 2017)."""
from __future__ import annotations

from torch import nn

from .base import Criterion, per_group


class BNScale(Criterion):
    """Score of channel j = |gamma_j| of the BN that normalises it.

    ``normalize=False`` keeps raw |gamma| (mean over a group's BN layers) instead of
    per-layer max-normalised values: Network Slimming's global threshold needs the raw scale.
    """

    name = "bn_scale"
    comparable_across_layers = True  # sparsity training puts every layer's gammas on one scale

    def __init__(self, normalize: bool = True):
        self.normalize = normalize

    def scores(self, model, space, batches=None):
        def score(module):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                return module.weight.abs()
            return None
        result = per_group(model, space, score, normalize=self.normalize)
        # A group without any BN (e.g. a plain linear layer) falls back to L1 so it still ranks.
        if any(not s.any() for s in result):
            from .l1 import L1Norm
            l1 = L1Norm().scores(model, space)
            result = [s if s.any() else f for s, f in zip(result, l1)]
        return result
