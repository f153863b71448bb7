"""Channel rankings and chain walks on plain arrays (numpy only: searchers import these).

``criterion_keep`` turns per-group channel scores into the kept channels of a width vector;
``order_from_scores`` is the same ranking as a permutation (a width-w prefix keeps the same
channels); ``walk_chains`` draws DMCP's direct samples from per-group Markov chains.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def criterion_keep(scores: list[np.ndarray], widths) -> dict[int, np.ndarray]:
    """Indices of the top ``widths[g]`` channels of each group (ties broken by channel index)."""
    keep = {}
    for g, (s, w) in enumerate(zip(scores, widths)):
        order = np.lexsort((np.arange(len(s)), -np.asarray(s)))
        keep[g] = np.sort(order[: int(w)])
    return keep


def order_from_scores(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-group permutation of root channels, highest score first (ties by channel index), the
    same ranking :func:`criterion_keep` uses, so a width-w prefix keeps the same channels."""
    return [np.lexsort((np.arange(len(s)), -np.asarray(s, dtype=np.float64))) for s in scores]


def walk_chains(rng: np.random.Generator, probs: Sequence[np.ndarray],
                chains: Sequence[np.ndarray], n: int) -> np.ndarray:
    """``n`` direct samples (DS): per group, keep block ``k`` while ``U < p_k``; (n, G) ints."""
    out = np.empty((n, len(chains)), dtype=np.int64)
    for g, (p, chain) in enumerate(zip(probs, chains)):
        p = np.asarray(p, dtype=np.float64)
        if len(p) == 0:
            out[:, g] = chain[0]
            continue
        kept = rng.random((n, len(p))) < p
        count = np.cumprod(kept, axis=1).sum(axis=1)
        out[:, g] = np.asarray(chain)[count]
    return out
