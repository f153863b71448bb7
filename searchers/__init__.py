"""Width-vector searchers: numpy ask/tell cores plus one Ray Tune adapter (``adapter.py``)."""
from __future__ import annotations

from .artificial_bee_colony import ArtificialBeeColony
from .dmcp import DMCPSampler
from .dropnet import DropNetSchedule
from .optuna_search import NSGA2Search, TPESearch
from .seeded import SeededProposals
from .core import FINISHED, WORST, Proposal, SearchCore
from .random_search import RandomSearch
from .uniform import UniformSweep

_REGISTRY = {
    "abc": ArtificialBeeColony,
    "seeded": SeededProposals,
    "tpe": TPESearch,
    "nsga2": NSGA2Search,
    "dropnet": DropNetSchedule,
    "dmcp": DMCPSampler,
    "random": RandomSearch,
    "uniform": UniformSweep,
}


def names() -> list[str]:
    return sorted(_REGISTRY)


def available(name: str) -> bool:
    """Whether ``name`` (or every part of ``a+b``) is a registered searcher."""
    return all(part in _REGISTRY for part in name.split("+"))


def build(name: str, space, *, max_macs: float, num_candidates: int, seed: int = 0,
          params: dict | None = None) -> SearchCore:
    """The searcher core ``name`` over ``space`` under ``max_macs``; ``a+b`` splits the candidate
    budget between searchers ``a`` and ``b``, which take turns."""
    if "+" in name:
        from .composite import CompositeSearch
        parts = name.split("+")
        shares = [num_candidates // len(parts) + (i < num_candidates % len(parts)) for i in range(len(parts))]
        cores = [build(part, space, max_macs=max_macs, num_candidates=max(share, 1), seed=seed + i,
                       params=(params or {}).get(part)) for i, (part, share) in enumerate(zip(parts, shares))]
        return CompositeSearch(space, cores, max_macs=max_macs, seed=seed)
    if name not in _REGISTRY:
        raise KeyError(f"searcher '{name}' is not available; choose one of {', '.join(names())}")
    return _REGISTRY[name](space, max_macs=max_macs, num_candidates=num_candidates, seed=seed,
                           **(params or {}))


__all__ = ["ArtificialBeeColony", "DMCPSampler", "SeededProposals", "TPESearch", "NSGA2Search", "DropNetSchedule", "FINISHED", "WORST", "Proposal", "SearchCore", "RandomSearch", "UniformSweep",
           "names", "build"]
