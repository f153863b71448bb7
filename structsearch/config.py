"""Typed run configuration: YAML (safe loader) -> frozen dataclasses, validated once at the edge.

Every error raised here is a :class:`ConfigError` whose message is one line that names the key
and the fix, so the CLI can print it and exit with code 2 before Ray starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A malformed config: the message is a single line naming the key and the fix."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "small_cnn"
    num_classes: int | None = None  # None: taken from the dataset
    checkpoint: str | None = None  # a trained baseline state_dict (weights_only)
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist5k"
    root: str = "~/data"
    download: bool = False
    val_fraction: float = 0.1
    batch_size: int = 128
    augment: bool | None = None  # None: the dataset's default
    kwargs: dict = field(default_factory=dict)  # arguments of a package.module:factory entry point
    image_size: int | None = None  # image folders: crop side (None: 224, ImageNet's)
    # image folders: per-channel mean and std of the pixels in [0, 1] (empty: ImageNet's)
    mean: tuple = ()
    std: tuple = ()
    workers: int = 8  # image folders: DataLoader worker processes per training process


@dataclass(frozen=True)
class BaselineConfig:
    epochs: int = 160
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "multistep"  # cosine | multistep | constant
    label_smoothing: float = 0.0
    # Sparsity training: {kind: slimming, s: 1e-4} or {kind: group_lasso, lambda_n: .., lambda_c: ..}
    sparsity: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BudgetConfig:
    macs_ratio: float | None = None  # fraction of the baseline's MACs, in (0, 1]
    macs: float | None = None  # absolute MACs
    params: float | None = None  # absolute parameter count (instead of MACs)
    latency_ms: float | None = None  # predicted forward latency on the search device
    latency_batch_size: int = 1  # batch size the latency is measured at


@dataclass(frozen=True)
class SpaceConfig:
    # Width steps: "auto" (multiples of 8 for groups of 32+ channels, else 1: hardware-friendly
    # widths, see benchmarks/speedup.py) or one integer step for every group (1: any width).
    round_to: int | str = "auto"
    min_ratio: float = 0.1
    ignore: tuple = ()
    check: bool = True  # verify the traced space on pruned copies; failing groups are frozen
    trace_timeout_s: float = 120.0  # tracing + check time limit (a clear error past it)


@dataclass(frozen=True)
class ResourcesConfig:
    cpu: float = 1
    gpu: float = 0


@dataclass(frozen=True)
class SearchConfig:
    searcher: str = field(default_factory=lambda: _default_searcher())
    criterion: str = "l1"
    candidates: int = 20
    epochs: int = 2
    lr: float = 0.01
    schedule: str = "cosine"
    concurrent: int = 2
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    params: dict = field(default_factory=dict)  # {searcher name: {parameter: value}}
    # {criterion name: {parameter: value}}, e.g. {lasso: {order: sequential}} (He et al.'s order)
    criteria: dict = field(default_factory=dict)
    abc: dict = field(default_factory=dict)
    fitness: str = "train"  # train | adaptive_bn (EagleEye: recalibrate BN, no training)
    # Two stages (EagleEye's protocol): with fitness adaptive_bn, the best `train_top` candidates
    # by adaptive-BN accuracy are then trained `epochs` epochs and the winner is picked among
    # them (re-evaluation and the one-shot baselines then use the trained fitness). 0: off.
    train_top: int = 0
    # Least-squares refit of the consumers of pruned channels before a candidate trains (He et
    # al.'s reconstruction); null: the criterion's own default (on for lasso).
    reconstruct: bool | None = None
    scheduler: str = "fifo"  # fifo | asha (early stopping on val_acc, grace 1 epoch)
    storage_path: str | None = None  # Tune storage (shared FS path or URI) for clusters
    max_failures: int = 0  # retries of a trial that raised (transient errors)
    # No winner's curse: the top `reevaluate` candidates train `reevaluate_seeds` more times
    # under other seeds and the winner is the best mean (0 or 1: the single best run wins;
    # with reevaluate_by finetune, 0: off, 1: the best run against the one-shot structures).
    reevaluate: int = 3
    reevaluate_seeds: int = 1
    # How the top candidates are re-evaluated: "seeds" (`reevaluate_seeds` more trainings at the
    # search's epochs, best mean wins) or "finetune" (each, and the pool's one-shot baseline
    # structures, gets the final stage's fine-tune; the best validation accuracy after it wins).
    reevaluate_by: str = "seeds"
    # Seeded proposals (uniform, global:<criterion>, ssl, paper presets): the seeded searcher's
    # candidates, and the first sources / trials of abc, tpe and nsga2. Empty: searcher default.
    seeds: tuple = ()
    fault_injection: dict = field(default_factory=dict)  # {raise: p, nan: p}: testing only


@dataclass(frozen=True)
class FinalConfig:
    # None: Liu et al.'s CIFAR recipe (40 epochs after a 160-epoch baseline) scaled by this
    # run's baseline.epochs (see fine_tune_epochs); a number is used as it is.
    finetune_epochs: int | None = None
    finetune_lr: float = 0.001
    scratch: tuple = ("E", "B")
    # Scratch-B's epoch factor cap; None: the paper's, none but on ImageNet (2), see
    # scratch_b_cap. A large number uncaps ImageNet.
    scratch_b_max_factor: float | None = None
    scratch_lr: float | None = None  # None: baseline lr
    compile: bool = False  # torch.compile the final runs on CUDA (candidates never: new shapes each)
    # One-shot baselines at the same budget, trained like the winner (a candidate's epochs from
    # the baseline's weights, then the fine-tune): "was the search worth it?". Seed names
    # (uniform, global = global:<search.criterion>, global:<criterion>, presets); [] for none.
    baselines: tuple = ("uniform", "global")


@dataclass(frozen=True)
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    final: FinalConfig = field(default_factory=FinalConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


SCHEDULES = ("cosine", "multistep", "constant")
REEVALUATE_BY = ("seeds", "finetune")  # search.reevaluate_by


def _default_searcher() -> str:
    import searchers
    return searchers.DEFAULT


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


class _NotFinite(ConfigError):
    pass


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _NotFinite:
                raise  # a number of the right type, but nan or inf: say that, not the type
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads 62.7e6 (no sign in the exponent) as a string.
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # every comparison with nan is False: stop it here
                raise _NotFinite(f"{key}: must be a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        if isinstance(value, (str, int)):
            return (value,)
    else:  # pragma: no cover - all annotations above are covered
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _bad(key: str, msg: str) -> None:
    raise ConfigError(f"{key}: {msg}")


FOLDER_DATASETS = ("imagefolder", "imagenet")  # streamed from disk, cropped to data.image_size


def _check(cfg: Config) -> None:
    _check_finite_in_mappings(cfg)
    _check_data_and_budget(cfg)
    _check_training(cfg)
    _check_search(cfg)
    _check_final_and_sparsity(cfg)


# The free-form mappings (a searcher's or criterion's parameters, a factory's keyword arguments)
# are checked by whoever takes them; nan and inf are refused here for all of them at once.
_MAPPINGS = ("model.kwargs", "data.kwargs", "baseline.sparsity", "search.params", "search.abc",
             "search.criteria", "search.fault_injection")


def _check_finite_in_mappings(cfg: Config) -> None:
    def walk(value, key):
        if isinstance(value, float) and not math.isfinite(value):
            _bad(key, f"must be a finite number, got {value!r}")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
    for dotted in _MAPPINGS:
        section, name = dotted.split(".")
        walk(getattr(getattr(cfg, section), name), dotted)


def _check_training(cfg: Config) -> None:
    """Optimiser settings (our SGD skips torch's own checks), the seed, the tracer's limits."""
    bad, b, f, sp = _bad, cfg.baseline, cfg.final, cfg.space
    if cfg.seed < 0:
        bad("seed", f"must be an integer >= 0, got {cfg.seed}")
    if cfg.model.num_classes is not None and cfg.model.num_classes < 1:
        bad("model.num_classes", f"must be >= 1 (or leave it out: the dataset's), got "
                                 f"{cfg.model.num_classes}")
    lrs = [("baseline.lr", b.lr), ("final.finetune_lr", f.finetune_lr)]
    lrs += [("final.scratch_lr", f.scratch_lr)] if f.scratch_lr is not None else []
    for key, lr in lrs:
        if lr <= 0:
            bad(key, f"must be > 0, got {lr}")
    if not 0 <= b.momentum < 1:
        bad("baseline.momentum", f"must be in [0, 1), got {b.momentum}")
    if b.nesterov and b.momentum == 0:
        bad("baseline.nesterov", "Nesterov momentum needs baseline.momentum > 0 (e.g. 0.9)")
    if b.weight_decay < 0:
        bad("baseline.weight_decay", f"must be >= 0, got {b.weight_decay}")
    if not 0 <= b.label_smoothing < 1:
        bad("baseline.label_smoothing", f"must be in [0, 1), got {b.label_smoothing}")
    if sp.trace_timeout_s <= 0:
        bad("space.trace_timeout_s", f"must be > 0 seconds, got {sp.trace_timeout_s}")
    for pattern in sp.ignore:
        if not isinstance(pattern, str):
            bad("space.ignore", f"expected module names or glob patterns (strings), got "
                                f"{pattern!r}")


def _check_data_and_budget(cfg: Config) -> None:
    bad = _bad
    d, b, s, sp = cfg.data, cfg.budget, cfg.search, cfg.space
    if not 0 < d.val_fraction < 1:
        bad("data.val_fraction", f"must be in (0, 1), got {d.val_fraction}")
    if d.batch_size < 1:
        bad("data.batch_size", f"must be >= 1, got {d.batch_size}")
    if d.workers < 0:
        bad("data.workers", f"must be >= 0 (0: decode in the training process), got {d.workers}")
    if d.image_size is not None:
        if d.name not in FOLDER_DATASETS:
            bad("data.image_size", f"only image folders ({', '.join(FOLDER_DATASETS)}) are resized; "
                                   f"{d.name}'s images keep their own size, so remove the key")
        if not 8 <= d.image_size <= 4096:
            bad("data.image_size", f"must be a crop side in pixels in [8, 4096], got {d.image_size}")
    _check_normalisation(d)
    if cfg.baseline.epochs < 0:
        bad("baseline.epochs", f"must be >= 0, got {cfg.baseline.epochs}")
    for key, sched in (("baseline.schedule", cfg.baseline.schedule), ("search.schedule", s.schedule)):
        if sched not in SCHEDULES:
            bad(key, f"unknown schedule '{sched}'; choose one of {', '.join(SCHEDULES)}")
    given = [k for k in ("macs_ratio", "macs", "params", "latency_ms") if getattr(b, k) is not None]
    if not given:
        bad("budget", "set one of budget.macs_ratio (e.g. 0.5), budget.macs, budget.params or "
                      "budget.latency_ms")
    if len(given) > 1:
        bad("budget", "set only one of budget.macs_ratio, budget.macs, budget.params and "
                      "budget.latency_ms")
    if b.latency_ms is not None and b.latency_ms <= 0:
        bad("budget.latency_ms", f"must be > 0, got {b.latency_ms}")
    if b.latency_batch_size < 1:
        bad("budget.latency_batch_size", f"must be >= 1, got {b.latency_batch_size}")
    if b.macs_ratio is not None and not 0 < b.macs_ratio <= 1:
        bad("budget.macs_ratio", f"must be in (0, 1], got {b.macs_ratio}")
    if b.macs is not None and b.macs <= 0:
        bad("budget.macs", f"must be > 0, got {b.macs}")
    if b.params is not None and b.params <= 0:
        bad("budget.params", f"must be > 0, got {b.params}")
    if sp.round_to != "auto" and (not isinstance(sp.round_to, int) or sp.round_to < 1):
        bad("space.round_to", f"expected auto or an integer >= 1, got {sp.round_to!r}")
    if not 0 < sp.min_ratio <= 1:
        bad("space.min_ratio", f"must be in (0, 1], got {sp.min_ratio}")


def _check_normalisation(d: DataConfig) -> None:
    if not (d.mean or d.std):
        return
    if d.name not in FOLDER_DATASETS:
        _bad("data.mean" if d.mean else "data.std",
             f"only image folders ({', '.join(FOLDER_DATASETS)}) take their normalisation from "
             f"the config; {d.name} has its own, so remove the key")
    def in_range(v, key, low) -> bool:
        try:
            return low <= _coerce(v, float, key) <= 1
        except ConfigError:
            return False
    for key, values, low in (("data.mean", d.mean, 0.0), ("data.std", d.std, 1e-6)):
        if len(values) != 3 or not all(in_range(v, key, low) for v in values):
            _bad(key, f"expected 3 numbers (R, G, B) in [{low:g}, 1] for pixels scaled to "
                      f"[0, 1], e.g. ImageNet's mean [0.485, 0.456, 0.406] and std "
                      f"[0.229, 0.224, 0.225]; set both or neither, got {list(values)}")


def _check_search(cfg: Config) -> None:
    # The searcher registry is the one list of names (numpy only: cheap to import here).
    import searchers
    bad, s, names = _bad, cfg.search, searchers.names()
    if not searchers.available(s.searcher):
        close = difflib.get_close_matches(s.searcher, names, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        bad("search.searcher", f"unknown searcher '{s.searcher}'; {hint}choose one of {', '.join(names)}")
    for key, low in (("candidates", 1), ("epochs", 1), ("concurrent", 1)):
        if getattr(s, key) < low:
            bad(f"search.{key}", f"must be >= {low}, got {getattr(s, key)}")
    if s.resources.cpu <= 0 or s.resources.gpu < 0:
        bad("search.resources", f"cpu must be > 0 and gpu >= 0, got cpu={s.resources.cpu} gpu={s.resources.gpu}")
    if s.fitness not in ("train", "adaptive_bn"):
        bad("search.fitness", f"choose train or adaptive_bn, got '{s.fitness}'")
    if s.train_top < 0 or (s.train_top and s.fitness != "adaptive_bn"):
        bad("search.train_top", f"trains the best candidates of a cheap first stage: set "
            f"search.fitness: adaptive_bn with it (or 0 for one stage), got {s.train_top}")
    if s.train_top > s.candidates:
        bad("search.train_top", f"must be at most search.candidates ({s.candidates}), got "
            f"{s.train_top}")
    if s.scheduler not in ("fifo", "asha"):
        bad("search.scheduler", f"choose fifo or asha, got '{s.scheduler}'")
    if s.scheduler == "asha" and not searchers.early_stopping(s.searcher):
        bad("search.scheduler", f"asha stops trials early, but {s.searcher} needs each candidate's "
                                f"fully trained result; use fifo with it")
    if s.max_failures < 0:
        bad("search.max_failures", f"must be >= 0, got {s.max_failures}")
    for key in ("reevaluate", "reevaluate_seeds"):
        if getattr(s, key) < 0:
            bad(f"search.{key}", f"must be >= 0, got {getattr(s, key)}")
    if s.reevaluate_by not in REEVALUATE_BY:
        bad("search.reevaluate_by", f"choose {' or '.join(REEVALUATE_BY)}, got '{s.reevaluate_by}'")
    if s.lr <= 0:
        bad("search.lr", f"must be > 0, got {s.lr}")
    for name, value in (s.params or {}).items():
        if name not in names or not isinstance(value, dict):
            bad(f"search.params.{name}", f"expected a mapping of parameters under a searcher name "
                f"({', '.join(names)})")
    for name, value in (s.criteria or {}).items():
        if not isinstance(value, dict):
            bad(f"search.criteria.{name}", "expected a mapping of parameters under a criterion "
                "name, e.g. search.criteria.lasso.order: sequential")
    for key, p in (s.fault_injection or {}).items():
        if key not in ("raise", "nan") or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            bad(f"search.fault_injection.{key}", "expected keys 'raise'/'nan' with probabilities in [0, 1]")


# Liu et al.'s CIFAR fine-tune: 40 epochs after a 160-epoch baseline.
FINETUNE_EPOCHS, FINETUNE_PER_BASELINE_EPOCHS = 40, 160
IMAGENET_SCRATCH_B_CAP = 2.0


def fine_tune_epochs(cfg: Config) -> int:
    """``final.finetune_epochs``, or when unset the CIFAR recipe's 40 scaled by the run's epoch
    budget (``baseline.epochs`` / 160), at least one epoch."""
    if cfg.final.finetune_epochs is not None:
        return int(cfg.final.finetune_epochs)
    scaled = FINETUNE_EPOCHS * cfg.baseline.epochs / FINETUNE_PER_BASELINE_EPOCHS
    return max(1, math.floor(scaled + 0.5))  # half up (round() would go to the even number)


def scratch_b_cap(cfg: Config) -> float | None:
    """Scratch-B's epoch factor cap: ``final.scratch_b_max_factor``, or when unset Liu et al.'s
    rule, 2x on ImageNet and none elsewhere."""
    if cfg.final.scratch_b_max_factor is not None:
        return float(cfg.final.scratch_b_max_factor)
    return IMAGENET_SCRATCH_B_CAP if cfg.data.name == "imagenet" else None


def resolved_final(cfg: Config) -> Config:
    """``cfg`` with the final stage's unset epochs and cap replaced by what they resolve to, so
    a run saved before they could be unset compares equal on ``--resume``."""
    final = dataclasses.replace(cfg.final, finetune_epochs=fine_tune_epochs(cfg),
                                scratch_b_max_factor=scratch_b_cap(cfg))
    return dataclasses.replace(cfg, final=final)


def _check_final_and_sparsity(cfg: Config) -> None:
    bad, f = _bad, cfg.final
    for kind in f.scratch:
        if kind not in ("E", "B"):
            bad("final.scratch", f"entries must be 'E' or 'B', got {kind!r}")
    if f.finetune_epochs is not None and f.finetune_epochs < 0:
        bad("final.finetune_epochs", f"must be >= 0, got {f.finetune_epochs}")
    if f.scratch_b_max_factor is not None and f.scratch_b_max_factor < 1:
        bad("final.scratch_b_max_factor", f"must be >= 1, got {f.scratch_b_max_factor}")
    sparsity = cfg.baseline.sparsity or {}
    if sparsity:
        kinds = {"slimming": {"s", "modules", "epochs"},
                 "group_lasso": {"lambda_n", "lambda_c", "modules", "include_linear", "epochs"}}
        kind = sparsity.get("kind")
        if not isinstance(kind, str) or kind not in kinds:
            bad("baseline.sparsity.kind", f"choose slimming or group_lasso, got {kind!r}")
        extra = set(sparsity) - kinds[kind] - {"kind"}
        if extra:
            bad(f"baseline.sparsity.{sorted(extra)[0]}", f"not a parameter of {kind} ({', '.join(sorted(kinds[kind]))})")
        # A copy with the strengths as floats (YAML 1.1 reads 1e-4, with no dot, as a string).
        object.__setattr__(cfg.baseline, "sparsity", _check_sparsity_values(dict(sparsity)))


def _check_sparsity_values(sparsity: dict) -> dict:
    for key in ("s", "lambda_n", "lambda_c"):
        if key in sparsity:
            value, full = sparsity[key], f"baseline.sparsity.{key}"
            try:
                number = _coerce(value, float, full)  # a number, or a string such as 1e-4
            except ConfigError:
                number = -1.0  # not a finite number: the message of a negative one
            if number < 0:
                _bad(full, f"must be a finite number >= 0, got {value!r}")
            sparsity[key] = number
    epochs = sparsity.get("epochs", 0)
    whole = isinstance(epochs, int) or (isinstance(epochs, float) and epochs.is_integer())
    if isinstance(epochs, bool) or not whole or epochs < 0:
        _bad("baseline.sparsity.epochs", f"must be an integer >= 0, got {epochs!r}")
    modules = sparsity.get("modules", [])
    if modules is not None and (not isinstance(modules, (list, tuple))
                                or not all(isinstance(m, str) for m in modules)):
        _bad("baseline.sparsity.modules", f"expected a list of module names or glob patterns, "
                                          f"got {modules!r}")
    if not isinstance(sparsity.get("include_linear", False), bool):
        _bad("baseline.sparsity.include_linear", "expected true or false")
    return sparsity


def from_dict(data: Any) -> Config:
    """Validate a plain mapping (as read from YAML) into a :class:`Config`. The ``_resolved``
    section that :func:`dump` adds (versions, split digest) is informational and ignored."""
    if isinstance(data, dict) and "_resolved" in data:
        data = {k: v for k, v in data.items() if k != "_resolved"}
    cfg = _build(Config, data, "")
    _check(cfg)
    return cfg


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a nested mapping, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set budget.macs_ratio=0.3")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            if not isinstance(node[part], dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
            node = node[part]
        node[parts[-1]] = _parse_scalar(text)
    return data


def read_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping with the safe loader; errors name the file and the line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}; pass the path of a YAML config such as configs/demo.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: malformed YAML{where} ({problem}); fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections (seed, model, data, ...)")
    return data


def load(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a config file."""
    return from_dict(apply_overrides(read_yaml(path), overrides))


def dump(cfg: Config, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write the fully resolved config (plus ``extra`` facts such as versions) as YAML."""
    data = cfg.to_dict()
    if extra:
        data["_resolved"] = json.loads(json.dumps(extra, default=str))
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)
