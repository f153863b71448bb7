"""What searchers need from the pipeline, provided generically.

A searcher never touches a model, so what it needs from one (seed width vectors, a criterion's
channel scores, a DMCP supernet's chains) it declares as ``needs`` (``searchers.core.Need``);
this module provides each kind and builds the searcher with them. Before training (the input
check) every need is met with a stand-in of the right shape, so bad searcher parameters are
reported before any work starts.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import criteria as criteria_mod
from . import models
from .config import ConfigError
from .space import WidthError

DEFAULT_SEEDS = ("uniform", "global:l1", "global:bn_scale", "global:hrank")


def score_batches(p, n_images: int = 640):
    """A fixed sample of training batches for data-driven criteria (HRank: 5 x 128)."""
    sub = p.splits.train.subset(min(n_images, len(p.splits.train)), seed=p.cfg.seed)
    return list(sub.batches(128, shuffle=False, augment=False))


def criterion_scores(p, name: str, **params) -> list[np.ndarray]:
    """Channel scores of criterion ``name`` on the baseline, cached under RUN_DIR/scores."""
    from .criteria.cache import cached_scores
    if name == "random":
        params.setdefault("seed", p.cfg.seed)
    criterion = criteria_mod.get(name, **{**(p.cfg.search.criteria or {}).get(name, {}), **params})
    batches = score_batches(p) if getattr(criterion, "needs_data", False) else None
    return cached_scores(criterion, p.model.cpu(), p.space, batches, p.run_dir / "scores",
                         data_key=f"{p.cfg.data.name}:{p.cfg.seed}")


def criterion_selection(p):
    """The run criterion's per-width selection state on the baseline (He et al.'s LASSO: the
    consumers' Gram matrices), computed once per run; None for criteria that keep the top-w."""
    from .preflight import run_criterion
    criterion = run_criterion(p.cfg)
    if not criterion.selects_per_width:
        return None
    if "selection" not in p.cache:  # the search, supernet and final stages share it
        batches = score_batches(p) if criterion.needs_data else None
        p.cache["selection"] = criterion.selection_state(p.model.cpu(), p.space, batches)
    return p.cache["selection"]


def sensitivity_curves(p) -> list[dict]:
    """Li et al.'s per-group sensitivity curves of the baseline under the run's criterion,
    measured once: RUN_DIR/sensitivity.csv and sensitivity.png (reused on --resume)."""
    from .sensitivity import read_csv, sensitivity, write_csv
    path = p.run_dir / "sensitivity.csv"
    if path.is_file():
        return read_csv(path)
    scores = criterion_scores(p, p.cfg.search.criterion)
    rows = sensitivity(p.model, p.space, p.cfg.search.criterion, p.splits.val, scores=scores,
                       device=p.device, out_png=p.run_dir / "sensitivity.png")
    p.model.cpu()
    write_csv(rows, path)
    return rows


def check_seed_names(names) -> None:
    from . import seeds
    for entry in names:
        name, _, crit = str(entry).partition(":")
        if name == "global" and crit and crit not in criteria_mod.names():
            raise ConfigError(f"search.seeds: '{entry}' names an unknown criterion; choose one of "
                              f"{', '.join(criteria_mod.names())}")
        if name != "global" and name.partition("@")[0] not in seeds.names():
            raise ConfigError(f"search.seeds: unknown proposal '{entry}'; choose from "
                              f"{', '.join(seeds.names())} (presets as NAME@paper or "
                              f"NAME@scaled) or global:<criterion>")
        if "@" in name:
            try:
                seeds.preset_fit(name)
            except KeyError as exc:
                raise ConfigError(f"search.seeds: {exc.args[0]}") from None


def seed_proposals(p, names) -> list[dict]:
    """Width vectors of the named seeded proposals under the budget (``global:<criterion>``
    ranks one criterion's scores globally; presets apply to their own model)."""
    from . import seeds
    check_seed_names(names)
    out = []
    for entry in names:
        name, _, crit = str(entry).partition(":")
        kwargs = {"limit": p.budget.limit, "cost": p.view}
        if name == "sensitivity":
            kwargs["rows"] = sensitivity_curves(p)
        if name == "global":
            # Network Slimming's read-out: one threshold on raw |gamma|; L1 / HRank: per layer
            # max-normalised first (their magnitudes differ by layer).
            crit = crit or p.cfg.search.criterion
            crit_params, kwargs["normalize"] = criteria_mod.global_readout(crit)
            kwargs["scores"] = criterion_scores(p, crit, **crit_params)
        try:
            widths = seeds.propose(name, p.model, p.space, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"search.seeds: '{entry}' does not apply to {p.cfg.model.name}: "
                              f"{str(exc).splitlines()[0]}") from None
        out.append({"origin": seeds.label(str(entry)), "widths": [int(w) for w in widths]})
    return out


def default_seeds(p) -> list[str]:
    """The default seed list: uniform, the global rankings and the model's paper presets."""
    from . import seeds
    names = list(DEFAULT_SEEDS)
    short = p.cfg.model.name.replace("cifar_", "")
    names += [seeds.label(n) for n in seeds.names() if n.split("_", 1)[-1].startswith(short)
              and n.split("_", 1)[-1] in (short, short + "_a", short + "_b")]
    return names


def _provide_seeds(p, need, stand_in: bool, supernet):
    fallback = list(need.options.get("seeds") or ()) or default_seeds(p)
    names = list(p.cfg.search.seeds) or (fallback if need.default else [])
    if not names:
        return None
    if stand_in:
        check_seed_names(names)
        return [{"origin": "check", "widths": [int(w) for w in p.space.uniform(0.5)]}]
    return seed_proposals(p, names)


def _provide_scores(p, need, stand_in: bool, supernet):
    if stand_in:
        return None
    return criterion_scores(p, need.options["criterion"],
                            **{k: v for k, v in need.options.items() if k != "criterion"})


def _provide_chains(p, need, stand_in: bool, supernet):
    if stand_in or supernet is None:
        return placeholder_chains(p, need)
    return supernet(need)


PROVIDERS: dict[str, Callable] = {"seed_proposals": _provide_seeds,
                                  "channel_scores": _provide_scores,
                                  "dmcp_chains": _provide_chains}


def needs_trial(searcher: str) -> bool:
    """Whether a need of ``searcher`` is met by a Tune trial of its own (the DMCP supernet)."""
    import searchers
    return any(need.kind == "dmcp_chains" for _, need in searchers.needs(searcher))


def supernet_config(p, need) -> dict:
    """The DMCP supernet trial's config: the ``search.params`` entries its need takes, with
    defaults sized to the run (twice the candidate epochs, at least 4; twice the search lr)."""
    import searchers
    own = {}
    for part, n in searchers.needs(p.cfg.search.searcher):
        if n == need:
            own = searchers.provider_params(part, (p.cfg.search.params or {}).get(part))
    conf = {"epochs": max(4, 2 * p.cfg.search.epochs), "lr_weights": p.cfg.search.lr * 2,
            "lr_arch": 0.2, "num_blocks": 9, "target_macs": p.budget.limit}
    conf.update(own)
    return conf


def placeholder_chains(p, need) -> dict:
    """Uniform chains of an untrained supernet: the right shape to check parameters with."""
    from .dmcp import DMCPSupernet
    conf = supernet_config(p, need)
    supernet = DMCPSupernet(models.build(p.cfg.model.name, **p.model_kwargs), p.space,
                            num_blocks=int(conf["num_blocks"]),
                            min_ratio=float(conf.get("min_ratio", p.space.min_ratio)))
    try:
        return supernet.export(target_macs=p.budget.limit)
    finally:
        supernet.remove_hooks()


def searcher_params(p, *, stand_in: bool, supernet=None) -> dict:
    """Each part's parameters: ``search.params.<part>`` (or ``search.<part>``) plus what its needs
    provide (never overriding a given parameter). Width vectors written in the config are
    checked against the space."""
    import searchers
    s = p.cfg.search
    params = {k: dict(v) for k, v in (s.params or {}).items()}
    for name in searchers.names():  # a section named after a searcher (DESIGN's search.abc)
        if getattr(s, name, None):
            params.setdefault(name, {}).update(getattr(s, name))
    for part in searchers.parts(s.searcher):
        own = params.setdefault(part, {})
        for key in ("proposals", "initial"):
            for i, item in enumerate(own.get(key) or []):
                try:
                    p.space.validate(item.get("widths") if isinstance(item, dict) else item)
                except WidthError as exc:
                    raise WidthError(f"search.params.{part}.{key}[{i}]: {exc}") from None
    for part, need in searchers.needs(s.searcher):
        own = params[part]
        if need.param not in own:
            value = PROVIDERS[need.kind](p, need, stand_in, supernet)
            if value is not None:
                own[need.param] = value
    return params


def build_searcher(p, *, stand_in: bool = False, supernet=None):
    """The searcher core with its parameters and needs. ``supernet(need) -> chains`` runs the
    DMCP supernet stage; with ``stand_in`` every need is a placeholder (the input check)."""
    import searchers
    s = p.cfg.search
    params = searcher_params(p, stand_in=stand_in, supernet=supernet)
    own = params if "+" in s.searcher else params.get(s.searcher, {})
    try:
        return searchers.build(s.searcher, p.space, limit=p.budget.limit, view=p.view,
                               num_candidates=s.candidates, seed=p.cfg.seed, params=own)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search.params.{s.searcher}: {str(exc).splitlines()[0]}") from None


def check_searcher(p) -> None:
    """Catch bad searcher parameters and seed names before any training."""
    build_searcher(p, stand_in=True)
