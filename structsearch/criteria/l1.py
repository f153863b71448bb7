"""L1-norm of filters (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017)."""
from __future__ import annotations

from torch import nn

from .base import Criterion, per_group


class L1Norm(Criterion):
    """Score of output channel j = sum of |weights| of filter j over inputs and kernel."""

    name = "l1"

    def scores(self, model, space, batches=None):
        def score(module):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                return module.weight.abs().flatten(1).sum(1)
            return None
        return per_group(model, space, score)
