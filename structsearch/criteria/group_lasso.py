"""Group-lasso norm (Wen et al., "Learning Structured Sparsity in Deep Neural Networks",
NIPS 2016)."""
from __future__ import annotations

from torch import nn

from .base import Criterion, per_group


class GroupLassoNorm(Criterion):
    """Score of output channel j = L2 norm of filter j (all its weights over inputs and kernel),
    the group SSL's filter-wise penalty drives to zero.

    ``normalize=False`` keeps the raw norms (mean over a group's producers) so SSL's absolute
    threshold read-out (:func:`structsearch.seeds.propose` ``"ssl"``) can compare them.
    """

    name = "group_lasso"

    def __init__(self, normalize: bool = True):
        self.normalize = normalize

    def scores(self, model, space, batches=None):
        def score(module):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                return module.weight.flatten(1).norm(dim=1)
            return None
        return per_group(model, space, score, normalize=self.normalize)
