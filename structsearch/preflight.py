"""Everything a run needs that can fail on bad input, checked before Ray starts: the data, the
model, its WidthSpace, the budget and its cost view, the searcher's parameters, the resources."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from . import criteria as criteria_mod
from . import data as data_mod
from . import models
from .budget import Budget, BudgetError, CostView, LatencyCost, MacsCost, ParamsCost, resolve
from .config import Config, ConfigError
from .space import WidthSpace
from .surgery import CheckpointError, load_weights


def say(msg: str) -> None:
    print(f"[structsearch] {msg}", flush=True)


@dataclasses.dataclass
class Prepared:
    """A checked run: its config, directory, data, baseline model, space and budget."""

    cfg: Config
    run_dir: Path
    splits: data_mod.Splits
    data_spec: data_mod.DataSpec
    model_kwargs: dict
    model: torch.nn.Module
    space: WidthSpace
    budget: Budget
    view: CostView  # the budget's cost: MACs, parameters or predicted latency
    device: str
    cache: dict = dataclasses.field(default_factory=dict)  # per-run results computed once


def data_spec_of(cfg: Config) -> data_mod.DataSpec:
    d = cfg.data
    return data_mod.DataSpec(name=d.name, root=d.root, download=d.download, val_fraction=d.val_fraction,
                             batch_size=d.batch_size, seed=cfg.seed, augment=d.augment,
                             kwargs=json.dumps(d.kwargs, sort_keys=True), image_size=d.image_size,
                             workers=d.workers, mean=tuple(float(v) for v in d.mean),
                             std=tuple(float(v) for v in d.std))


def load_data(cfg: Config) -> tuple[data_mod.DataSpec, data_mod.Splits]:
    spec = data_spec_of(cfg)
    if cfg.data.name not in data_mod.names() and ":" not in cfg.data.name:
        raise ConfigError(f"data.name: unknown dataset '{cfg.data.name}'; choose one of "
                          f"{', '.join(data_mod.names())} or package.module:factory (your own)")
    if cfg.data.kwargs and ":" not in cfg.data.name:
        raise ConfigError(f"data.kwargs: only an entry point (package.module:factory) takes "
                          f"arguments; {cfg.data.name} does not")
    splits = data_mod.load(spec)
    differ = data_mod.unpublished_files(spec)  # the driver only: trials load the same files
    if differ:
        say(f"note: {', '.join(differ)} in {spec.root} differ from the published {spec.name} "
            f"files (a modified or damaged copy?); they parse as CIFAR batches, so the run goes on")
    return spec, splits


def build_model(cfg: Config, splits: data_mod.Splits) -> tuple[torch.nn.Module, dict]:
    kwargs = dict(cfg.model.kwargs)
    kwargs["num_classes"] = cfg.model.num_classes or splits.num_classes
    kwargs["in_channels"] = splits.input_shape[0]
    if cfg.model.num_classes and cfg.model.num_classes != splits.num_classes:
        raise ConfigError(f"model.num_classes: {cfg.model.num_classes} does not match the "
                          f"{splits.num_classes} classes of {cfg.data.name}; remove the key")
    torch.manual_seed(cfg.seed)  # the baseline's initial weights belong to the run's seed
    try:
        model = models.build(cfg.model.name, **kwargs)
    except KeyError as exc:
        raise ConfigError(f"model.name: {exc.args[0]}") from None
    except TypeError as exc:
        raise ConfigError(f"model.kwargs: {exc}") from None
    check_output(model, splits.input_shape, kwargs["num_classes"], cfg.model.name)
    return model, kwargs


def check_output(model, input_shape, num_classes: int, name: str) -> None:
    """One forward pass of two zero images: the output must be (batch, classes) logits."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, *input_shape))
    except Exception as exc:  # noqa: BLE001 - any failure here is a model/data mismatch
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.name: {name} cannot run on the data's images of shape "
                          f"{tuple(input_shape)} (C, H, W): {first[:200]}") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise ConfigError(f"model.name: {name} returns {shape} for a batch of 2, expected "
                          f"(batch, {num_classes}) class logits; give the model a {num_classes}-"
                          f"class head (or set model.num_classes to match the data)")


def budget_target(cfg: Config, view: CostView) -> tuple[float, str]:
    """The configured budget in ``view``'s unit and the config key it came from."""
    b = cfg.budget
    if b.params is not None:
        return float(b.params), "budget.params"
    if b.latency_ms is not None:
        return float(b.latency_ms), "budget.latency_ms"
    if b.macs is not None:
        return float(b.macs), "budget.macs"
    return b.macs_ratio * view.full, "budget.macs_ratio"


def cost_view(cfg: Config, space: WidthSpace, model, run_dir: Path) -> CostView:
    """The view the budget is measured in."""
    if cfg.budget.latency_ms is not None:
        return latency_view(space, model, cfg, run_dir)
    if cfg.budget.params is not None:
        return ParamsCost(space)
    return MacsCost(space)


def latency_view(space: WidthSpace, model, cfg: Config, run_dir: Path) -> LatencyCost:
    """A latency cost view of ``space``; the table is measured once on the search device (the
    device candidates train on) and kept in RUN_DIR/latency.json (reused on --resume)."""
    from .latency import LatencyTable
    # The device the candidates train on: a GPU only when trials ask for one.
    device = "cuda" if cfg.search.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    file = run_dir / "latency.json"
    try:
        table = LatencyTable.load(file) if file.is_file() else None
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{file}: {e}") from None
    fresh = table is None or table.groups != len(space) or table.device != device
    if fresh:
        say(f"latency: measuring {len(space)} groups on {device} (batch {cfg.budget.latency_batch_size})")
        table = LatencyTable.measure(model, space, device=device,
                                     batch_size=cfg.budget.latency_batch_size)
    view = LatencyCost(space, table)
    view.fresh_table = fresh  # prepare() saves a new table once the input is known good
    return view


def run_criterion(cfg: Config, name: str | None = None):
    """Criterion ``name`` (default: the run's) with the parameters ``search.criteria`` gives it."""
    name = name or cfg.search.criterion
    if name not in criteria_mod.names():
        raise ConfigError(f"search.criteria.{name}: unknown criterion; choose one of "
                          f"{', '.join(criteria_mod.names())}")
    params = dict((cfg.search.criteria or {}).get(name, {}))
    try:
        return criteria_mod.get(name, **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search.criteria.{name}: {exc}") from None


def trace_space(cfg: Config, model, splits, kwargs: dict) -> WidthSpace:
    """The model's WidthSpace, traced and self-checked; frozen groups are said in one line."""
    import warnings

    from .space import TracingError, TracingTimeout, TracingWarning
    sp = cfg.space
    try:
        with warnings.catch_warnings():  # preflight says what was frozen itself, once
            warnings.simplefilter("ignore", category=TracingWarning)
            space = WidthSpace.from_model(model, splits.input_shape, ignore=sp.ignore,
                                          round_to=sp.round_to, min_ratio=sp.min_ratio,
                                          model_name=cfg.model.name, model_kwargs=kwargs,
                                          check=sp.check, timeout_s=sp.trace_timeout_s)
    except TracingTimeout as exc:
        raise ConfigError(f"space.trace_timeout_s: {exc}; raise it, or freeze the layers that "
                          f"slow tracing with space.ignore") from None
    except TracingError as exc:
        raise ConfigError(f"model.name: {exc}") from None
    if len(space) == 0:
        raise ConfigError(f"model.name: {cfg.model.name} has no searchable channel groups "
                          f"(space.ignore: {list(sp.ignore)})")
    if space.frozen:
        from .tracing import reason_kind
        kinds: dict[str, int] = {}
        for _, why in space.frozen:
            kinds[reason_kind(why)] = kinds.get(reason_kind(why), 0) + 1
        say(f"space: {len(space)} groups searchable, {len(space.frozen)} frozen ("
            + ", ".join(f"{n} x {k}" for k, n in kinds.items()) + "; listed in summary.json)")
    return space


def prepare(cfg: Config, run_dir: Path) -> Prepared:
    """Everything that can fail on bad input, checked before Ray starts."""
    import searchers
    if cfg.search.criterion not in criteria_mod.names():
        raise ConfigError(f"search.criterion: unknown criterion '{cfg.search.criterion}'; choose "
                          f"one of {', '.join(criteria_mod.names())}")
    for name in cfg.search.criteria:
        run_criterion(cfg, name)
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).expanduser().is_file():
        raise ConfigError(f"model.checkpoint: file not found: {Path(cfg.model.checkpoint).expanduser()}")
    kinds = searchers.budget_kinds(cfg.search.searcher)
    for key, kind in (("latency_ms", "latency"), ("params", "params")):
        if getattr(cfg.budget, key) is not None and kind not in kinds:
            raise ConfigError(f"budget.{key}: the {cfg.search.searcher} searcher works under "
                              f"{' or '.join(kinds)} budgets only; use budget.macs_ratio")
    spec, splits = load_data(cfg)
    model, kwargs = build_model(cfg, splits)
    space = trace_space(cfg, model, splits, kwargs)
    view = cost_view(cfg, space, model, run_dir)
    target, key = budget_target(cfg, view)
    try:
        budget = resolve(view, target=target, key=key)
    except BudgetError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.model.checkpoint:
        try:
            load_weights(model, Path(cfg.model.checkpoint).expanduser())
        except CheckpointError as exc:
            raise ConfigError(f"model.checkpoint: {exc}") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prepared = Prepared(cfg, run_dir, splits, spec, kwargs, model, space, budget, view, device)
    from .needs import check_searcher, check_seed_names
    check_searcher(prepared)
    try:
        check_seed_names(cfg.final.baselines)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("search.seeds", "final.baselines", 1)) from None
    run_dir.mkdir(parents=True, exist_ok=True)
    if getattr(view, "fresh_table", False):
        view.table.save(run_dir / "latency.json")
    return prepared


def check_resources(cfg: Config, address: str | None) -> None:
    """Per-trial resources that neither this machine nor, with ``address`` (or a Ray the caller
    has joined), any node of the cluster can give (Tune would wait for ever, warning now and
    then)."""
    if address and address.startswith("ray://"):
        raise ConfigError(f"--address {address}: Ray Client (ray://) is not supported, the search "
                          f"driver must run on a cluster node; run structsearch there with "
                          f"--address auto (or the head's host:6379)")
    import sys
    ray = sys.modules.get("ray")  # a caller of the API may have joined a cluster already
    if address or (ray is not None and ray.is_initialized()):
        from .tuning import cluster_nodes, init_ray
        init_ray(address)  # joining is the only way to see the nodes (no-op when joined)
        check_cluster(cfg, address or "the connected Ray", *cluster_nodes())
        return
    r = cfg.search.resources
    cpus = os.cpu_count() or 1
    if r.cpu > cpus:
        raise ConfigError(f"search.resources.cpu: {r.cpu:g} CPUs per trial but this machine has "
                          f"{cpus}; lower it or join a cluster with --address")
    gpus = torch.cuda.device_count()
    if r.gpu > gpus:
        raise ConfigError(f"search.resources.gpu: {r.gpu:g} GPUs per trial but this machine has "
                          f"{gpus}; set search.resources.gpu: 0 or join a cluster with --address")


# Set to 1 to wait for a node that can hold a trial where autoscaling is not recognised (Ray's
# cluster launcher is, by the bootstrap file it leaves on the head node).
WAIT_FOR_NODES = "STRUCTSEARCH_WAIT_FOR_NODES"


def check_cluster(cfg: Config, address: str, nodes: list[dict], autoscaling: bool) -> None:
    """One trial's ``search.resources`` must fit on one alive node of the cluster (``nodes``:
    each node's resources); a cluster that can add nodes is only told what it must add."""
    r = cfg.search.resources
    if any(n.get("CPU", 0) >= r.cpu and n.get("GPU", 0) >= r.gpu for n in nodes):
        return
    have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "none"
    wanted = f"search.resources: {r.cpu:g} CPU and {r.gpu:g} GPU per trial"
    if autoscaling or os.environ.get(WAIT_FOR_NODES, "") not in ("", "0"):
        say(f"{wanted}, no node of the cluster at {address} has them yet (nodes: {have}); "
            f"the search waits until the autoscaler adds one")
        return
    raise ConfigError(f"{wanted}, but no node of the cluster at {address} has that much (nodes: "
                      f"{have}); lower search.resources or add a node that has them (an "
                      f"autoscaling cluster: set {WAIT_FOR_NODES}=1 to wait for one)")
