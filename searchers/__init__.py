"""Width-vector searchers: numpy ask/tell cores (``core.SearchCore``) plus one Ray Tune adapter
(``adapter.py``). ``REGISTRY`` below is the only list of searcher names: config validation,
the pipeline and the tests read it."""
from __future__ import annotations

import inspect

from .artificial_bee_colony import ArtificialBeeColony
from .composite import CompositeSearch
from .core import FINISHED, WORST, Need, Proposal, SearchCore
from .dmcp import DMCPSampler
from .dropnet import DropNetSchedule
from .optuna_search import NSGA2Search, TPESearch
from .random_search import RandomSearch
from .seeded import SeededProposals
from .uniform import UniformSweep
from structsearch.registry import Registry

REGISTRY: Registry[type[SearchCore]] = Registry("searcher")
for _cls in (ArtificialBeeColony, SeededProposals, TPESearch, NSGA2Search, DropNetSchedule,
             DMCPSampler, RandomSearch, UniformSweep):
    REGISTRY.add(_cls.name, _cls)

# search.searcher when the config names none: the bee colony, seeded with the one-shot baselines
# (benchmarks/RESULTS.md, search quality: it never fell below them; random search did).
DEFAULT = ArtificialBeeColony.name

# Constructor arguments every searcher takes from the pipeline, not from search.params.
_COMMON = ("space", "limit", "num_candidates", "seed", "view")


def register(cls: type[SearchCore]) -> type[SearchCore]:
    """Add a searcher class under its ``name`` (usable as a class decorator). Built-in searchers
    are listed in ``REGISTRY`` above; a searcher of your own registers itself in your code before
    the search starts (the searcher runs in the driver, never in a trial)."""
    if not (isinstance(cls, type) and issubclass(cls, SearchCore)) or cls.name in ("", "base"):
        raise TypeError("register() takes a SearchCore subclass with its own `name`")
    if "+" in cls.name:
        raise ValueError(f"searcher name {cls.name!r} may not contain '+' (it combines searchers)")
    REGISTRY.add(cls.name, cls)
    return cls


def names() -> list[str]:
    return REGISTRY.names()


def parts(name: str) -> list[str]:
    """The searchers of ``name`` (``a+b`` combines several)."""
    return name.split("+")


def available(name: str) -> bool:
    """Whether ``name`` (or every part of ``a+b``) is a registered searcher."""
    return all(part in REGISTRY for part in parts(name))


def get(name: str) -> type[SearchCore]:
    return REGISTRY.get(name)


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """The parameters searcher ``name`` takes under ``search.params.<name>`` (its constructor's
    keyword arguments after the common ones), with their annotations and defaults."""
    sig = inspect.signature(get(name).__init__)
    return {k: p for k, p in sig.parameters.items() if k not in _COMMON and k != "self"
            and p.kind == inspect.Parameter.KEYWORD_ONLY}


def needs(name: str) -> list[tuple[str, Need]]:
    """``(part, need)`` for every need of every part of ``name``."""
    return [(part, need) for part in parts(name) for need in get(part).needs]


def early_stopping(name: str) -> bool:
    """Whether a trial scheduler may stop the trials of every part of ``name`` early."""
    return all(get(part).early_stopping for part in parts(name))


def budget_kinds(name: str) -> tuple[str, ...]:
    """The budget kinds every part of ``name`` works under."""
    kinds = ("macs", "params", "latency")
    return tuple(k for k in kinds if all(k in get(part).budget_kinds for part in parts(name)))


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "list": (list, tuple),
          "dict": (dict,), "None": (type(None),)}


def check_params(name: str, params: dict | None) -> dict:
    """``params`` for searcher ``name`` checked against its declared parameters (names and
    types); entries a need takes (see :class:`Need`) are left out. Raises ValueError naming
    the parameter and what is expected."""
    declared = parameters(name)
    takes = {key for need in get(name).needs for key in need.takes}
    out = {}
    for key, value in (params or {}).items():
        if key in takes:
            continue
        if key not in declared:
            valid = ", ".join(sorted([*declared, *takes])) or "none"
            raise ValueError(f"unknown parameter '{key}' (valid: {valid})")
        annotation = str(declared[key].annotation)
        allowed = [t for part in annotation.replace(" ", "").split("|") for t in _TYPES.get(part, (object,))]
        if isinstance(value, bool) and bool not in allowed:
            allowed = []
        if not isinstance(value, tuple(allowed)) and declared[key].annotation is not inspect.Parameter.empty:
            raise ValueError(f"parameter '{key}' must be {annotation}, got {value!r}")
        out[key] = value
    return out


def provider_params(name: str, params: dict | None) -> dict:
    """The entries of ``params`` that searcher ``name``'s needs take (their provider's)."""
    takes = {key for need in get(name).needs for key in need.takes}
    return {k: v for k, v in (params or {}).items() if k in takes}


def build(name: str, space, *, limit: float, num_candidates: int, seed: int = 0, view=None,
          params: dict | None = None) -> SearchCore:
    """The searcher core ``name`` over ``space`` under ``limit`` (in ``view``'s unit, MACs by
    default); ``a+b`` splits the candidate budget between searchers ``a`` and ``b``, which take
    turns, and ``params`` is then keyed by part."""
    if "+" in name:
        names_ = parts(name)
        shares = [num_candidates // len(names_) + (i < num_candidates % len(names_))
                  for i in range(len(names_))]
        cores = [build(part, space, limit=limit, num_candidates=max(share, 1), seed=seed + i,
                       view=view, params=(params or {}).get(part))
                 for i, (part, share) in enumerate(zip(names_, shares))]
        return CompositeSearch(space, cores, limit=limit, seed=seed, view=view)
    return get(name)(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view,
                     **check_params(name, params))


__all__ = ["REGISTRY", "ArtificialBeeColony", "CompositeSearch", "DMCPSampler", "SeededProposals",
           "TPESearch", "NSGA2Search", "DropNetSchedule", "FINISHED", "WORST", "Need", "Proposal",
           "SearchCore", "RandomSearch", "UniformSweep", "register", "names", "parts", "available", "get",
           "parameters", "needs", "early_stopping", "budget_kinds", "check_params",
           "provider_params", "build"]
