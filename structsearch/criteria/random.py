"""Random channel choice (ABCPruner's default): fitness then depends on the structure alone."""
from __future__ import annotations

import numpy as np

from .base import Criterion


class RandomCriterion(Criterion):
    """Seeded random scores: a different seed keeps different channels."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def scores(self, model, space, batches=None):
        rng = np.random.default_rng(self.seed)
        return [rng.random(g.width) for g in space.groups]
