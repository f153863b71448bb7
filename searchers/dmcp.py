"""DMCP sampler: width vectors drawn from learned Markov chains (Guo et al., CVPR 2020).

The chains come from a trained DMCP supernet (``structsearch.dmcp.DMCPSupernet.export()``,
reported by ``trainables.dmcp_supernet`` under the key ``dmcp``). Per group, the chain's widths
are ``[min, b_1, ..., b_K]`` and block ``k`` is kept with transition probability ``p_k`` given
that block ``k-1`` is. The sampler proposes the expected-sampling point first (``dmcp:es``: each
expected width ``min + sum_k size_k * prod_{i<=k} p_i`` rounded to the grid), then direct
samples (``dmcp:ds``: walk each chain, keep block ``k`` while ``U < p_k``) whose MACs lie within
``tol`` of the target. When ``max_draws`` walks in a row give nothing new inside that window,
walks projected into the budget are proposed instead (``dmcp:ds-projected``). Every proposal is
on the grid, within the budget and new (duplicates are skipped); the search ends (``FINISHED``)
after ``num_candidates`` proposals or when the chains yield nothing new.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from structsearch.ranking import walk_chains

from .core import FINISHED, Need, SearchCore

EXPORT_FILE = "chains.json"


def read_export(path) -> dict:
    """The chains a DMCP supernet trial exported: ``path`` is ``chains.json`` or its directory."""
    path = Path(path)
    if path.is_dir():
        path = path / EXPORT_FILE
    with open(path) as fh:
        return json.load(fh)


def expected_widths(probs, chains) -> np.ndarray:
    """``E[w_g] = min_g + sum_k size_gk * P_gk`` with ``P = cumprod(p)`` (floats, one per group)."""
    out = np.empty(len(chains))
    for g, (p, chain) in enumerate(zip(probs, chains)):
        chain = np.asarray(chain, dtype=np.float64)
        out[g] = chain[0] + float(np.diff(chain) @ np.cumprod(np.asarray(p, dtype=np.float64)))
    return out


# One chain walk for the supernet's DS read-out and this sampler (same samples for one seed).
walk = walk_chains


class DMCPSampler(SearchCore):
    """ES point, then in-window DS samples from learned DMCP chains (see the module docstring).

    Give the chains as ``chains`` (the dict ``DMCPSupernet.export()`` returns, with ``groups``
    keyed by index or listed in order, or its JSON file/directory path) or as ``probs``
    (per-group transition probabilities) plus ``chain_widths`` (per-group ``[min, b_1, ...,
    b_K]``). ``target_macs`` (default: the budget ``limit``, MACs) is the DS target; a sample is
    kept when its MACs are within ``tol * target_macs`` of it. ``max_draws`` bounds the chain
    walks spent per proposal before falling back to projected walks.
    """

    name = "dmcp"
    # The chains come from a supernet trial the pipeline runs first; these parameters under
    # search.params.dmcp are that trial's (structsearch.dmcp.train_supernet), not the sampler's.
    needs = (Need("dmcp_chains", "chains", takes=("epochs", "lr_weights", "lr_arch", "num_blocks",
                                                  "budget_loss", "budget_weight", "batch_size",
                                                  "min_ratio")),)
    budget_kinds = ("macs",)  # the supernet's expected cost is differentiable MACs

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None, chains: dict | str | None = None,
                 probs: list | None = None, chain_widths: list | None = None,
                 target_macs: float | None = None, tol: float = 0.01, max_draws: int = 20000,
                 batch: int = 256, es_rounding: str = "block"):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        if chains is not None:
            if isinstance(chains, (str, Path)):
                chains = read_export(chains)
            groups = chains["groups"]
            if isinstance(groups, dict):  # the export's form: keyed by group index
                groups = [groups[k] for k in sorted(groups, key=int)]
            probs = [g["p"] for g in groups]
            chain_widths = [g["widths"] for g in groups]
            names = [g.get("name") for g in groups]
            if len(groups) == len(space) and any(n is not None and n != g.name
                                                 for n, g in zip(names, space.groups)):
                raise ValueError("the DMCP chains were learned on a different space (group names differ)")
        if probs is None or chain_widths is None:
            raise ValueError("dmcp needs the learned chains: chains=<export dict> or probs + chain_widths")
        if len(probs) != len(space) or len(chain_widths) != len(space):
            raise ValueError(f"dmcp chains cover {len(probs)} groups but the space has {len(space)}")
        self.probs = [np.asarray(p, dtype=np.float64) for p in probs]
        self.chains = [np.asarray(c, dtype=np.int64) for c in chain_widths]
        for g, (p, chain) in enumerate(zip(self.probs, self.chains)):
            if len(chain) != len(p) + 1 or np.any(np.diff(chain) <= 0):
                raise ValueError(f"chain {g} needs ascending widths, one more than its probabilities")
            if np.any((p < 0) | (p > 1)):
                raise ValueError(f"chain {g} has probabilities outside [0, 1]")
            if chain[-1] != space.groups[g].width:
                raise ValueError(f"chain {g} ends at {chain[-1]} but the group is "
                                 f"{space.groups[g].width} wide")
        if es_rounding not in ("block", "grid"):
            raise ValueError("dmcp.es_rounding must be 'block' (the paper) or 'grid'")
        self.es_rounding = es_rounding
        self.target_macs = float(limit if target_macs is None else target_macs)
        self.tol = float(tol)
        self.max_draws = int(max_draws)
        self.batch = int(batch)
        self.seen: set[tuple[int, ...]] = set()
        self.es_done = False
        self.exhausted = False

    def expected(self) -> np.ndarray:
        return expected_widths(self.probs, self.chains)

    def es_point(self) -> np.ndarray:
        """The ES read-out: each expected width rounded to the nearest block (chain width), as
        the paper does, or with ``es_rounding="grid"`` to the nearest grid width."""
        e = self.expected()
        if self.es_rounding == "grid":
            return self.space.snap(e)
        return np.array([c[np.argmin(np.abs(c - v - 1e-9))] for c, v in zip(self.chains, e)],
                        dtype=np.int64)

    def _next(self):
        if not self.es_done:
            self.es_done = True
            w = self.feasible(self.es_point())
            self.seen.add(w)
            return w, "dmcp:es"
        if self.exhausted:
            return FINISHED
        t, window = self.target_macs, self.tol * self.target_macs
        drawn = 0
        while drawn < self.max_draws:
            draws = walk(self.rng, self.probs, self.chains, self.batch)
            drawn += self.batch
            macs = np.asarray(self.space.macs(draws), dtype=np.float64)
            for w in draws[np.abs(macs - t) <= window]:
                w = self.feasible(w)
                if w not in self.seen:
                    self.seen.add(w)
                    return w, "dmcp:ds"
        # The window is (nearly) empty under these chains: fall back to projected walks, the
        # one closest to the target first.
        draws = walk(self.rng, self.probs, self.chains, self.batch)
        repaired = [self.feasible(w) for w in draws]
        gaps = np.abs(np.asarray(self.space.macs(np.array(repaired)), dtype=np.float64) - t)
        for i in np.argsort(gaps, kind="stable"):
            if repaired[i] not in self.seen:
                self.seen.add(repaired[i])
                return repaired[i], "dmcp:ds-projected"
        self.exhausted = True
        return FINISHED
