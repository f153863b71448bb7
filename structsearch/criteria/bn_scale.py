"""BN scale |gamma| (Liu et al., "Network Slimming", ICCV 2017)."""
from __future__ import annotations

from torch import nn

from .base import Criterion, per_group


class BNScale(Criterion):
    """Score of channel j = |gamma_j| of the BN that normalises it."""

    name = "bn_scale"

    def scores(self, model, space, batches=None):
        def score(module):
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                return module.weight.abs()
            return None
        result = per_group(model, space, score)
        # A group without any BN (e.g. a plain linear layer) falls back to L1 so it still ranks.
        if any(not s.any() for s in result):
            from .l1 import L1Norm
            l1 = L1Norm().scores(model, space)
            result = [s if s.any() else f for s, f in zip(result, l1)]
        return result
