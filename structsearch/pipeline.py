"""The search flow: config -> baseline -> scores -> WidthSpace -> Ray Tune candidates -> winner
-> final stage (fine-tune | Scratch-E | Scratch-B) -> report. The only module that starts Ray.

Every stage checks the run directory first and skips work whose outputs exist, so ``--resume``
continues where an interrupted run stopped.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from . import config as config_mod
from . import criteria as criteria_mod
from . import data as data_mod
from . import models
from . import report
from .config import Config, ConfigError
from .journal import Journal, JournalError, journal_path, load_journal, save_journal
from .space import ParamsSpace, WidthError, WidthSpace
from .surgery import CheckpointError, load_state_dict_file, load_weights, prune, save_pruned
from .train import TrainSpec, evaluate, train

log = logging.getLogger("structsearch")


class RunDirError(ValueError):
    """The run directory cannot be used as asked (one line: what and the fix)."""


class SearchFailed(RuntimeError):
    """The search ran but produced nothing to keep (e.g. every candidate failed)."""


def say(msg: str) -> None:
    print(f"[structsearch] {msg}", flush=True)


# ---------------------------------------------------------------------------- preparation
@dataclasses.dataclass
class Prepared:
    cfg: Config
    run_dir: Path
    splits: data_mod.Splits
    data_spec: data_mod.DataSpec
    model_kwargs: dict
    model: torch.nn.Module
    space: WidthSpace
    max_macs: float  # the budget in the searcher's cost unit: MACs, parameters, or ms of latency
    device: str
    search_space: WidthSpace | None = None  # the space searchers see (its cost is the budget's)

    @property
    def cost_kind(self) -> str:
        """What the budget limits: ``macs``, ``params`` or ``latency`` (predicted ms)."""
        if self.search_space is None or self.search_space is self.space:
            return "macs"
        return "params" if isinstance(self.search_space, ParamsSpace) else "latency"

    @property
    def latency(self) -> bool:
        return self.cost_kind == "latency"


def data_spec_of(cfg: Config) -> data_mod.DataSpec:
    d = cfg.data
    return data_mod.DataSpec(name=d.name, root=d.root, download=d.download, val_fraction=d.val_fraction,
                             batch_size=d.batch_size, seed=cfg.seed, augment=d.augment)


def load_data(cfg: Config) -> tuple[data_mod.DataSpec, data_mod.Splits]:
    spec = data_spec_of(cfg)
    if cfg.data.name not in data_mod.names():
        raise ConfigError(f"data.name: unknown dataset '{cfg.data.name}'; choose one of "
                          f"{', '.join(data_mod.names())}")
    return spec, data_mod.load(spec)


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
    return model, kwargs


def budget_macs(cfg: Config, space: WidthSpace) -> float:
    """The budget in ``space``'s cost unit (MACs, or parameters / predicted ms in a cost view),
    checked against the baseline and the smallest network of the space."""
    b = cfg.budget
    full, floor, unit = space.full_macs, space.min_macs, space.cost_unit
    if b.params is not None:
        target, key = float(b.params), "budget.params"
    elif b.latency_ms is not None:
        target, key = float(b.latency_ms), "budget.latency_ms"
    elif b.macs is not None:
        target, key = float(b.macs), "budget.macs"
    else:
        target, key = b.macs_ratio * full, "budget.macs_ratio"
    if target > full:
        raise ConfigError(f"{key}: budget {target:.4g} {unit} is above the baseline's {full:.4g} "
                          f"{unit}; nothing to prune")
    if target < floor:
        raise ConfigError(f"{key}: budget {target:.4g} {unit} is below the smallest network in the "
                          f"space ({floor:.4g} {unit}, {100 * floor / full:.1f}% of the baseline); "
                          f"raise the budget or lower space.min_ratio")
    return float(target)


def prepare_run_dir(out: str | None, config_path: str | None, resume: bool) -> Path:
    if out is None:
        stem = Path(config_path).stem if config_path else "run"
        out = os.path.join("runs", f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = Path(out).expanduser().resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file; choose a directory")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not resume:
        raise RunDirError(f"run directory {run_dir} is not empty; pass --resume to continue it "
                          f"or choose another --out")
    if resume and not run_dir.is_dir():
        raise RunDirError(f"--resume: run directory {run_dir} does not exist")
    return run_dir


def prepare(cfg: Config, run_dir: Path) -> Prepared:
    """Everything that can fail on bad input, checked before Ray starts."""
    if cfg.search.criterion not in criteria_mod.names():
        raise ConfigError(f"search.criterion: unknown criterion '{cfg.search.criterion}'; choose "
                          f"one of {', '.join(criteria_mod.names())}")
    import searchers
    if not searchers.available(cfg.search.searcher):
        raise ConfigError(f"search.searcher: '{cfg.search.searcher}' is not available in this "
                          f"version; choose one of {', '.join(searchers.names())}")
    if cfg.model.checkpoint and not Path(cfg.model.checkpoint).expanduser().is_file():
        raise ConfigError(f"model.checkpoint: file not found: {Path(cfg.model.checkpoint).expanduser()}")
    spec, splits = load_data(cfg)
    model, kwargs = build_model(cfg, splits)
    sp = cfg.space
    space = WidthSpace.from_model(model, splits.input_shape, ignore=sp.ignore, round_to=sp.round_to,
                                  min_ratio=sp.min_ratio, model_name=cfg.model.name, model_kwargs=kwargs)
    if len(space) == 0:
        raise ConfigError(f"model.name: {cfg.model.name} has no searchable channel groups "
                          f"(space.ignore: {list(sp.ignore)})")
    search_space = space
    for key in ("latency_ms", "params"):
        if getattr(cfg.budget, key) is not None and "dmcp" in cfg.search.searcher.split("+"):
            raise ConfigError(f"budget.{key}: the dmcp searcher needs a MACs budget "
                              "(its expected cost is differentiable MACs); use budget.macs_ratio")
    if cfg.budget.latency_ms is not None:
        search_space = latency_space(space, model, cfg, run_dir)
    elif cfg.budget.params is not None:
        search_space = ParamsSpace(space)
    max_macs = budget_macs(cfg, search_space)
    if cfg.model.checkpoint:
        try:
            load_weights(model, Path(cfg.model.checkpoint).expanduser())
        except CheckpointError as exc:
            raise ConfigError(f"model.checkpoint: {exc}") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prepared = Prepared(cfg, run_dir, splits, spec, kwargs, model, space, max_macs, device, search_space)
    check_searcher(prepared)
    run_dir.mkdir(parents=True, exist_ok=True)
    if prepared.latency and getattr(prepared.search_space, "fresh_table", False):
        prepared.search_space.latency_table.save(run_dir / "latency.json")
    return prepared


def latency_space(space: WidthSpace, model, cfg: Config, run_dir: Path) -> WidthSpace:
    """A latency-costed view of ``space``; the table is measured once on the search device (the
    device candidates train on) and kept in RUN_DIR/latency.json (reused on --resume)."""
    from .latency import LatencySpace, LatencyTable
    # The device the candidates train on: a GPU only when trials ask for one.
    device = "cuda" if cfg.search.resources.gpu > 0 and torch.cuda.is_available() else "cpu"
    file = run_dir / "latency.json"
    table, fresh = None, False
    if file.is_file():
        table = LatencyTable.load(file)
        if len(table.widths) != len(space) or table.device != device:
            table = None
    if table is None:
        say(f"latency: measuring {len(space)} groups on {device} (batch {cfg.budget.latency_batch_size})")
        table = LatencyTable.measure(model, space, device=device, batch_size=cfg.budget.latency_batch_size)
        fresh = True
    view = LatencySpace(space, table)
    view.fresh_table = fresh  # prepare() saves a new table once the whole input is known to be good
    return view


def check_searcher(p: Prepared) -> None:
    """Catch bad searcher parameters and seed names before any training: the searcher is built
    once with placeholders for what needs the trained baseline (seed vectors, chains)."""
    from . import seeds
    s = p.cfg.search
    for entry in s.seeds:
        name, _, crit = str(entry).partition(":")
        if name == "global" and crit and crit not in criteria_mod.names():
            raise ConfigError(f"search.seeds: '{entry}' names an unknown criterion; choose one of "
                              f"{', '.join(criteria_mod.names())}")
        if name != "global" and name not in seeds.names():
            raise ConfigError(f"search.seeds: unknown proposal '{entry}'; choose from "
                              f"{', '.join(seeds.names())} or global:<criterion>")
    build_searcher(p, placeholders=True)


def check_resources(cfg: Config, address: str | None) -> None:
    """Per-trial resources a local machine cannot give (a cluster is checked by Ray itself)."""
    if address and address.startswith("ray://"):
        raise ConfigError(f"--address {address}: Ray Client (ray://) is not supported, the search "
                          f"driver must run on a cluster node; run structsearch there with "
                          f"--address auto (or the head's host:6379)")
    if address:
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




def versions() -> dict:
    from importlib.metadata import version
    # Read Ray's version from its metadata: importing Ray is left to the search stage.
    return {"structsearch": __version__, "torch": torch.__version__, "ray": version("ray"),
            "python": platform.python_version(), "platform": platform.platform()}


# ---------------------------------------------------------------------------- stages
def baseline_spec(cfg: Config) -> TrainSpec:
    b = cfg.baseline
    return TrainSpec(epochs=b.epochs, lr=b.lr, momentum=b.momentum, nesterov=b.nesterov,
                     weight_decay=b.weight_decay, schedule=b.schedule,
                     label_smoothing=b.label_smoothing, batch_size=cfg.data.batch_size)


def stage_baseline(p: Prepared) -> dict:
    out = p.run_dir / "baseline"
    metrics_file, weights_file = out / "metrics.json", out / "weights.pt"
    if metrics_file.is_file() and weights_file.is_file():
        p.model.load_state_dict(load_state_dict_file(weights_file))
        say(f"baseline: reusing {out}")
        return json.loads(metrics_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not p.cfg.model.checkpoint:
        spec = baseline_spec(p.cfg)
        say(f"baseline: training {p.cfg.model.name} for {spec.epochs} epochs on {p.cfg.data.name}")
        train(p.model, p.splits.train, spec, val_split=p.splits.val, device=p.device, seed=p.cfg.seed,
              regularizer=sparsity_regularizer(p.cfg),
              on_epoch=lambda e, m: say(f"  baseline epoch {e}/{spec.epochs}: val_acc "
                                        f"{100 * m['val_acc']:.2f}%"))
    val = evaluate(p.model, p.splits.val, device=p.device)
    test = evaluate(p.model, p.splits.test, device=p.device)
    full = p.space.full_widths
    metrics = {"val_acc": val["top1"], "test_acc": test["top1"], "macs": int(p.space.macs(full)),
               "params": int(sum(t.numel() for t in p.model.parameters())),
               "epochs": p.cfg.baseline.epochs if not p.cfg.model.checkpoint else None,
               "source": p.cfg.model.checkpoint or "trained", "seconds": time.perf_counter() - start}
    p.model.cpu()
    tmp = out / "weights.pt.tmp"
    torch.save({k: v.detach().cpu() for k, v in p.model.state_dict().items()}, tmp)
    os.replace(tmp, weights_file)
    report.write_json(metrics, metrics_file)
    say(f"baseline: val {100 * val['top1']:.2f}%, test {100 * test['top1']:.2f}%, "
        f"{metrics['macs'] / 1e6:.3f} M MACs")
    return metrics


def sparsity_regularizer(cfg: Config):
    """The baseline's sparsity training (Network Slimming or SSL), or None."""
    from .sparsity import GroupLasso, SlimmingL1
    params = dict(cfg.baseline.sparsity or {})
    kind = params.pop("kind", None)
    if kind is None:
        return None
    if "modules" in params:
        params["modules"] = tuple(params["modules"])
    return SlimmingL1(**params) if kind == "slimming" else GroupLasso(**params)


def score_batches(p: Prepared, n_images: int = 640):
    """A fixed sample of training batches for data-driven criteria (HRank: 5 x 128)."""
    sub = p.splits.train.subset(min(n_images, len(p.splits.train)), seed=p.cfg.seed)
    return list(sub.batches(128, shuffle=False, augment=False))


def criterion_scores(p: Prepared, name: str, **params) -> list[np.ndarray]:
    """Channel scores of criterion ``name`` on the baseline, cached under RUN_DIR/scores."""
    from .criteria.cache import cached_scores
    if name == "random":
        params.setdefault("seed", p.cfg.seed)
    criterion = criteria_mod.get(name, **params)
    batches = score_batches(p) if getattr(criterion, "needs_data", False) else None
    return cached_scores(criterion, p.model.cpu(), p.space, batches, p.run_dir / "scores",
                         data_key=f"{p.cfg.data.name}:{p.cfg.seed}")


def stage_scores(p: Prepared) -> list[np.ndarray]:
    return criterion_scores(p, p.cfg.search.criterion)


DEFAULT_SEEDS = ("uniform", "global:l1", "global:bn_scale", "global:hrank")


def seed_proposals(p: Prepared, names) -> list[dict]:
    """Width vectors of the named seeded proposals under the budget (``global:<criterion>``
    ranks one criterion's scores globally; presets apply to their own model)."""
    from . import seeds
    out = []
    for entry in names:
        name, _, crit = str(entry).partition(":")
        try:
            if name == "global":
                crit = crit or p.cfg.search.criterion
                widths = seeds.propose("global", p.model, p.search_space, macs=p.max_macs,
                                       scores=criterion_scores(p, crit))
            elif name in seeds.names():
                widths = seeds.propose(name, p.model, p.search_space, macs=p.max_macs)
            else:
                raise KeyError(name)
        except KeyError:
            raise ConfigError(f"search.seeds: unknown proposal '{entry}'; choose from "
                              f"{', '.join(seeds.names())} or global:<criterion>") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"search.seeds: '{entry}' does not apply to {p.cfg.model.name}: "
                              f"{str(exc).splitlines()[0]}") from None
        out.append({"origin": str(entry), "widths": [int(w) for w in widths]})
    return out


def default_seeds(p: Prepared) -> list[str]:
    from . import seeds
    names = list(DEFAULT_SEEDS)
    short = p.cfg.model.name.replace("cifar_", "")
    names += [n for n in seeds.names() if n.split("_", 1)[-1].startswith(short)
              and n.split("_", 1)[-1] in (short, short + "_a", short + "_b")]
    return names


DMCP_SUPERNET_KEYS = ("epochs", "lr_weights", "lr_arch", "num_blocks", "budget_loss", "budget_weight",
                      "batch_size", "min_ratio")


def dmcp_supernet_config(p: Prepared) -> dict:
    """The supernet trial's config: ``search.params.dmcp`` keys for it, with defaults sized to
    the run (twice the candidate epochs, at least 4; the search lr for weights)."""
    own = dict((p.cfg.search.params or {}).get("dmcp", {}))
    conf = {"epochs": max(4, 2 * p.cfg.search.epochs), "lr_weights": p.cfg.search.lr * 2,
            "lr_arch": 0.2, "num_blocks": 9, "target_macs": p.max_macs}
    conf.update({k: v for k, v in own.items() if k in DMCP_SUPERNET_KEYS})
    return conf


def searcher_params(p: Prepared, chains: dict | None = None, *, placeholders: bool = False) -> dict:
    """Parameters of every searcher in ``search.searcher`` (``a+b`` too), with the seeded
    proposals and channel scores the numpy-only searchers cannot compute themselves. With
    ``placeholders`` (input checks before training) seed vectors are a uniform stand-in and
    no score is computed."""
    s = p.cfg.search
    params = {k: dict(v) for k, v in (s.params or {}).items()}
    if s.abc:
        params.setdefault("abc", {}).update(s.abc)
    stand_in = [{"origin": "check", "widths": [int(w) for w in p.space.uniform(0.5)]}]

    def seeded(names):
        return stand_in if placeholders else seed_proposals(p, names)

    for name in s.searcher.split("+"):
        own = params.setdefault(name, {})
        for key in ("proposals", "initial"):  # width vectors written in the config
            for i, item in enumerate(own.get(key) or []):
                widths = item.get("widths") if isinstance(item, dict) else item
                try:
                    p.space.validate(widths)
                except WidthError as exc:
                    raise WidthError(f"search.params.{name}.{key}[{i}]: {exc}") from None
        if name == "seeded" and "proposals" not in own:
            own["proposals"] = seeded(s.seeds or default_seeds(p))
        elif name in ("abc", "tpe", "nsga2") and s.seeds and "initial" not in own:
            own["initial"] = seeded(s.seeds)
        elif name == "dropnet" and "scores" not in own and not placeholders:
            # Raw activations: DropNet's global ranking compares channels across groups.
            own["scores"] = criterion_scores(p, "activation", normalize=False)
        elif name == "dmcp":
            for key in DMCP_SUPERNET_KEYS:
                own.pop(key, None)
            own["chains"] = chains
    return params


class _Progress:
    """A Tune callback printing one line per finished candidate (no table floods)."""

    def __new__(cls, total: int, label: str, done: int = 0, best: float | None = None):
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self):
                # A resumed search goes on counting from what its journal holds.
                self.done, self.best = done, best

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._line(trial, "ok")

            def on_trial_error(self, iteration, trials, trial, **info):
                self._line(trial, "error")

            def _line(self, trial, status):
                self.done += 1
                res = trial.last_result or {}
                acc = res.get("val_acc")
                if res.get("status") == "error":
                    status = "error"
                if status == "ok" and acc is not None and (self.best is None or acc > self.best):
                    self.best = acc
                best = f", best {100 * self.best:.2f}%" if self.best is not None else ""
                shown = f"val {100 * acc:.2f}%" if status == "ok" and acc is not None else status
                ratio = res.get("macs_ratio")
                ratio = f" at {100 * ratio:.1f}% MACs" if ratio else ""
                say(f"{label} {self.done}/{total}: {trial.config.get('origin', trial.config.get('run', {}).get('protocol', ''))}"
                    f" {shown}{ratio}{best}")

        return Progress()


def _trial_dirname(trial) -> str:
    return f"{trial.trainable_name.split('_')[0]}_{trial.trial_id}"


def init_ray(address: str | None) -> None:
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Workers must import this checkout's packages even when it is not pip-installed.
        root = str(Path(__file__).resolve().parent.parent)
        paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        # The dashboard starts when ray[default] is installed (the `dashboard` extra).
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}, **kwargs)


def _setup(p: Prepared, scores, baseline: dict):
    from trainables.common import TrialSetup
    s = p.cfg.search
    spec = dataclasses.replace(baseline_spec(p.cfg), epochs=s.epochs, lr=s.lr, schedule=s.schedule)
    return TrialSetup(model_name=p.cfg.model.name, model_kwargs=p.model_kwargs, data_spec=p.data_spec,
                      space=p.space, scores=scores, train=spec, seed=p.cfg.seed,
                      baseline_macs=int(baseline["macs"]), fault_injection=dict(s.fault_injection),
                      fitness=s.fitness)


def budget_text(p: Prepared) -> str:
    if p.cost_kind == "params":
        return f"{p.max_macs / 1e6:.4f} M parameters"
    return f"{p.max_macs:.3f} ms predicted latency" if p.latency else f"{p.max_macs / 1e6:.3f} M MACs"


def build_searcher(p: Prepared, chains: dict | None = None, *, placeholders: bool = False):
    """The searcher core with its parameters, checked before Ray starts. DMCP's sampler needs
    the supernet's chains: before they exist it is checked with uniform placeholder chains."""
    import searchers
    s = p.cfg.search
    if "dmcp" in s.searcher.split("+") and chains is None:
        chains = _placeholder_chains(p)
    params = searcher_params(p, chains, placeholders=placeholders)
    own = params if "+" in s.searcher else params.get(s.searcher, {})
    try:
        return searchers.build(s.searcher, p.search_space, max_macs=p.max_macs,
                               num_candidates=s.candidates, seed=p.cfg.seed, params=own)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"search.params.{s.searcher}: {str(exc).splitlines()[0]}") from None


def _placeholder_chains(p: Prepared) -> dict:
    from .dmcp import DMCPSupernet
    conf = dmcp_supernet_config(p)
    supernet = DMCPSupernet(models.build(p.cfg.model.name, **p.model_kwargs), p.space,
                            num_blocks=int(conf["num_blocks"]),
                            min_ratio=float(conf.get("min_ratio", p.space.min_ratio)))
    try:
        return supernet.export(target_macs=p.max_macs)
    finally:
        supernet.remove_hooks()


def stage_supernet(p: Prepared, scores, baseline: dict) -> dict:
    """DMCP: train the supernet's Markov chains under the budget as one Ray trial; the chains go
    to RUN_DIR/dmcp/dmcp.json (reused on --resume)."""
    from ray import tune

    from trainables.dmcp_supernet import dmcp_trainable

    out = p.run_dir / "dmcp" / "dmcp.json"
    if out.is_file():
        say(f"dmcp: reusing {out}")
        return json.loads(out.read_text())
    s = p.cfg.search
    conf = dmcp_supernet_config(p)
    setup = _setup(p, scores, baseline)
    state = {k: v.cpu() for k, v in p.model.state_dict().items()}
    trainable = tune.with_resources(
        tune.with_parameters(dmcp_trainable, setup=setup, baseline_state=state),
        {"cpu": max(s.resources.cpu, 1), "gpu": s.resources.gpu})
    _fresh_experiment(p, "dmcp")
    say(f"dmcp: training the supernet for {conf['epochs']} epochs towards {p.max_macs / 1e6:.3f} M MACs")
    tuner = tune.Tuner(trainable, param_space=conf,
                       tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=_trial_dirname,
                                                   trial_name_creator=_trial_dirname),
                       run_config=tune.RunConfig(name="dmcp", storage_path=tune_storage(p), verbose=0))
    result = tuner.fit()[0]
    if result.error is not None:
        raise SearchFailed(f"the DMCP supernet trial failed: {str(result.error).splitlines()[-1][:300]}")
    chains = result.metrics["dmcp"]
    out.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(chains, out)
    say(f"dmcp: expected MACs {100 * result.metrics.get('expected_macs_ratio', 0):.1f}% of the baseline")
    return chains


def tune_storage(p: Prepared) -> str:
    """Where Tune keeps its experiments: RUN_DIR/tune, or under ``search.storage_path`` (a path
    or URI such as s3://bucket/prefix that every node of a cluster can reach). Shared storage is
    keyed by the run directory's name plus a hash of its full path, so two runs with the same
    name never share (or delete) each other's experiments."""
    base = p.cfg.search.storage_path
    if not base:
        return str(p.run_dir / "tune")
    import hashlib
    key = f"{p.run_dir.name}-{hashlib.sha1(str(p.run_dir).encode()).hexdigest()[:8]}"
    if "://" in base:
        return f"{base.rstrip('/')}/{key}"
    return str(Path(base).expanduser().resolve() / key)


def _experiment(p: Prepared, name: str) -> str:
    return f"{tune_storage(p).rstrip('/')}/{name}"


def _fresh_experiment(p: Prepared, name: str) -> str:
    """The experiment's path, emptied first when it is local (a new run never mixes with old
    trials; remote storage is left to its own lifecycle rules)."""
    path = _experiment(p, name)
    if "://" not in path and Path(path).exists():
        shutil.rmtree(path)
    return path


def _scheduler(p: Prepared):
    s = p.cfg.search
    if s.scheduler != "asha" or s.fitness == "adaptive_bn" or s.epochs < 2:
        return None
    from ray.tune.schedulers import ASHAScheduler
    return ASHAScheduler(metric="val_acc", mode="max", grace_period=1, max_t=s.epochs,
                         reduction_factor=2)


# What a journal entry keeps of a trial's last result: the columns of candidates.csv. (The
# searcher has already consumed the rest, e.g. DropNet's channel scores.)
_JOURNAL_METRICS = ("trial_id", "val_acc", "macs", "params", "macs_ratio", "epoch",
                    "time_total_s", "status", "error")


def _journal_callback(journal: Journal, path: Path, searcher, scheduler):
    """A Tune callback that records each finished candidate in the search journal (its
    ``journal`` attribute is the latest one written). Tune calls it right after telling the
    searcher the result, so the journal's trials and searcher state always belong together (see
    structsearch.journal)."""
    from ray.tune import Callback

    class JournalCallback(Callback):
        def __init__(self):
            self.journal, self.save_error = journal, None

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._record(trial, None)

        def on_trial_error(self, iteration, trials, trial, **info):
            # Tune has just written the error to the trial's local directory (storage gets it
            # on its next sync); its last line names the exception.
            text = ""
            if trial.error_file and Path(trial.error_file).is_file():
                text = Path(trial.error_file).read_text(errors="replace")
            lines = [line for line in text.splitlines() if line.strip()]
            self._record(trial, (lines[-1] if lines else "trial failed")[:200])

        def _record(self, trial, error: str | None) -> None:
            if self.save_error is not None or any(t["trial_id"] == trial.trial_id
                                                  for t in self.journal.trials):
                return
            last = trial.last_result or {}
            self.write([*self.journal.trials, {
                "trial_id": trial.trial_id, "config": dict(trial.config),
                "metrics": {k: last[k] for k in _JOURNAL_METRICS if k in last}, "error": error,
                "checkpoint": trial.checkpoint if error is None else None}])

        def write(self, trials: list[dict]) -> None:
            """Write the searcher's and scheduler's state with ``trials``, then take it as the
            journal: a failed write changes nothing in memory; it is raised when the search
            returns (raising here would fail the trial)."""
            new = Journal(core=searcher.core.state(), unfinished=searcher.unfinished(),
                          trials=trials, finished=searcher.finished, scheduler=scheduler)
            try:
                save_journal(path, new)
            except OSError as exc:
                self.save_error = exc
                return
            self.journal = new

    return JournalCallback()


def candidate_row(p: Prepared, baseline: dict, trial: dict) -> dict:
    """One candidates.csv row (plus the driver-only ``_checkpoint`` and ``_token``) from a
    journal entry."""
    s = p.cfg.search
    cfg, m = trial["config"], trial["metrics"]
    status = "error" if trial["error"] is not None or m.get("status") == "error" else "ok"
    if status == "ok" and s.fitness == "train" and m.get("epoch", 0) < s.epochs:
        status = "stopped"  # ended early by the scheduler; its accuracy is not comparable
    widths = cfg.get("widths", [])
    macs = m.get("macs", p.space.macs(widths) if widths else None)
    return {
        "trial_id": m.get("trial_id") or trial["trial_id"],
        "searcher": cfg.get("searcher", s.searcher), "origin": cfg.get("origin", ""),
        "widths": widths, "macs": macs,
        "params": m.get("params", p.space.params(widths) if widths else None),
        "macs_ratio": (macs / baseline["macs"]) if macs else None,
        "val_acc": m.get("val_acc") if status != "error" else None,
        "epochs": m.get("epoch", 0), "seconds": round(float(m.get("time_total_s", 0.0)), 2),
        "status": status,
        "error": trial["error"] if trial["error"] is not None else m.get("error", ""),
        "cost": p.search_space.macs(widths) if widths else None,
        "_checkpoint": trial["checkpoint"] if (trial["checkpoint"] and status == "ok") else None,
        "_token": cfg.get("token", 0),
    }


class _NoTunerRestoreHint(logging.Filter):
    """Tune ends an interrupted run with "Resume experiment with: Tuner.restore(...)"; structsearch
    resumes from its own journal and says so itself ("continue with --resume")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


def stage_search(p: Prepared, scores, baseline: dict, core, *, journal: Journal | None) -> list[dict]:
    """Train the searcher's candidates as Tune trials; returns one row per candidate. Given an
    interrupted run's journal (RUN_DIR/tune/search_journal.pkl) the search continues: finished
    candidates are kept, candidates that were training when the run stopped train again."""
    from ray import tune

    from searchers.adapter import TuneSearcher
    from trainables.candidate import candidate_trainable

    s = p.cfg.search
    path = journal_path(p.run_dir)
    start = time.perf_counter()
    if journal is None or not journal.trials:  # nothing had finished: start afresh
        _fresh_experiment(p, "search")
        journal = Journal(core=core.state())
        save_journal(path, journal)  # marks the experiment as this journal's
    else:
        core.load_state(journal.core)
    remaining = core.num_candidates - len(journal.trials)
    if remaining > 0 and (journal.unfinished or not journal.finished):
        searcher = TuneSearcher(core, metric="val_acc", requeue=journal.unfinished)
        if journal.trials:
            say(f"search: resuming after {len(journal.trials)} of {core.num_candidates} candidates "
                f"({len(journal.unfinished)} to train again)")
        else:
            say(f"search: {s.searcher} over {len(p.space)} groups, {core.num_candidates} candidates "
                f"x {s.epochs} epochs, {s.concurrent} at a time, budget {budget_text(p)}")
        kept = [candidate_row(p, baseline, t) for t in journal.trials]
        best = max((r["val_acc"] for r in kept if r["status"] == "ok" and r["val_acc"] is not None),
                   default=None)
        progress = _Progress(core.num_candidates, "candidate", done=len(kept), best=best)
        setup = _setup(p, scores, baseline)
        state = {k: v.cpu() for k, v in p.model.state_dict().items()}
        trainable = tune.with_resources(
            tune.with_parameters(candidate_trainable, setup=setup, baseline_state=state),
            {"cpu": s.resources.cpu, "gpu": s.resources.gpu})
        # A resumed ASHA goes on with its rungs (which trials reached which epoch, how well).
        scheduler = journal.scheduler if journal.scheduler is not None else _scheduler(p)
        recorder = _journal_callback(journal, path, searcher, scheduler)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=remaining,
                                        max_concurrent_trials=s.concurrent, reuse_actors=True,
                                        scheduler=scheduler,
                                        trial_dirname_creator=_trial_dirname,
                                        trial_name_creator=_trial_dirname),
            run_config=tune.RunConfig(name="search", storage_path=tune_storage(p), verbose=0,
                                      callbacks=[progress, recorder],
                                      failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        hint = _NoTunerRestoreHint()
        logging.getLogger("ray.tune.tune").addFilter(hint)
        try:
            tuner.fit()
        finally:
            logging.getLogger("ray.tune.tune").removeFilter(hint)
        recorder.write(recorder.journal.trials)  # the searcher may have said FINISHED since
        journal = recorder.journal
        if recorder.save_error is not None:
            raise JournalError(f"cannot write the search journal {path} ({recorder.save_error}); "
                               f"free space or fix permissions, then run again with --resume")
        if searcher.unfinished() or (len(journal.trials) < core.num_candidates and not searcher.finished):
            # Tune returns normally after Ctrl-C: the search is not over, so no winner yet.
            raise KeyboardInterrupt
    rows = sorted((candidate_row(p, baseline, t) for t in journal.trials), key=lambda r: r["_token"])
    say(f"search: {len(rows)} candidates in {time.perf_counter() - start:.0f} s "
        f"({sum(r['status'] != 'ok' for r in rows)} failed)")
    return rows


def budget_summary(p: Prepared, baseline: dict) -> dict:
    if p.latency:
        return {"latency_ms": p.max_macs, "max_macs": None, "macs_ratio": None,
                "baseline_latency_ms": p.search_space.full_macs}
    if p.cost_kind == "params":
        return {"params": p.max_macs, "max_macs": None, "macs_ratio": None,
                "params_ratio": p.max_macs / baseline["params"]}
    return {"max_macs": p.max_macs, "macs_ratio": p.max_macs / baseline["macs"]}


def pick_winner(rows: list[dict], max_macs: float) -> dict | None:
    # "cost" is what the budget limits: MACs, parameters, or the predicted latency.
    ok = [r for r in rows if r["status"] == "ok" and r["val_acc"] is not None
          and r.get("cost", r["macs"]) <= max_macs * (1 + 1e-9)]
    if not ok:
        return None
    # Ties go to the cheaper network.
    return max(ok, key=lambda r: (r["val_acc"], -r["macs"]))


def final_runs(cfg: Config, baseline: dict, winner: dict) -> list[dict]:
    f, b = cfg.final, cfg.baseline
    runs = []
    if f.finetune_epochs >= 0:
        runs.append({"protocol": "finetune", "epochs": f.finetune_epochs, "lr": f.finetune_lr,
                     "schedule": "constant"})
    base_epochs = b.epochs
    scratch_lr = f.scratch_lr or b.lr
    if "E" in f.scratch:
        runs.append({"protocol": "scratch_e", "epochs": base_epochs, "lr": scratch_lr, "schedule": b.schedule})
    if "B" in f.scratch:
        factor = min(baseline["macs"] / max(winner["macs"], 1), f.scratch_b_max_factor)
        runs.append({"protocol": "scratch_b", "epochs": int(math.ceil(base_epochs * factor)),
                     "lr": scratch_lr, "schedule": b.schedule})
    for r in runs:
        r["widths"] = list(winner["widths"])
        r["compile"] = bool(f.compile)
    return runs


def stage_final(p: Prepared, scores, baseline: dict, winner: dict, winner_state: dict) -> dict:
    from ray import tune

    from trainables.final import final_trainable

    done = {}
    for key in ("finetune", "scratch_e", "scratch_b"):
        file = p.run_dir / "winner" / key / "metrics.json"
        if file.is_file():
            done[key] = json.loads(file.read_text())
    runs = [r for r in final_runs(p.cfg, baseline, winner) if r["protocol"] not in done]
    if not runs:
        return done
    s = p.cfg.search
    setup = _setup(p, scores, baseline)
    state = {k: v.cpu() for k, v in p.model.state_dict().items()}
    trainable = tune.with_resources(
        tune.with_parameters(final_trainable, setup=setup, baseline_state=state, winner_state=winner_state),
        {"cpu": s.resources.cpu, "gpu": s.resources.gpu})
    say("final: " + ", ".join(f"{r['protocol']} {r['epochs']} ep" for r in runs) + " in parallel")
    _fresh_experiment(p, "final")
    tuner = tune.Tuner(
        trainable, param_space={"run": tune.grid_search(runs)},
        tune_config=tune.TuneConfig(max_concurrent_trials=len(runs), trial_dirname_creator=_trial_dirname,
                                    trial_name_creator=_trial_dirname),
        run_config=tune.RunConfig(name="final", storage_path=tune_storage(p), verbose=0,
                                  callbacks=[_Progress(len(runs), "final")]))
    results = tuner.fit()
    for result in results:
        run = result.config["run"]
        key = run["protocol"]
        if result.error is not None:
            say(f"final: {key} failed: {str(result.error).splitlines()[-1][:200]}")
            continue
        m = result.metrics
        entry = {k: m.get(k) for k in ("val_acc", "test_acc", "test_loss", "epochs", "lr", "seconds")}
        out = p.run_dir / "winner" / key
        save_trained(p, winner["widths"], result.checkpoint, out)
        report.write_json(entry, out / "metrics.json")
        done[key] = entry
    return done


def save_trained(p: Prepared, widths, checkpoint, out: Path, extra: dict | None = None) -> dict:
    """Save a trial's trained weights (from its Tune checkpoint) as ``out/arch.json`` +
    ``out/weights.pt``; returns the state_dict."""
    with checkpoint.as_directory() as ckpt_dir:
        state = load_state_dict_file(Path(ckpt_dir) / "weights.pt")
    model = prune(models.build(p.cfg.model.name, **p.model_kwargs), p.space, widths)
    model.load_state_dict(state)
    save_pruned(model, p.space, widths, out, extra=extra)
    return state


def save_winner(p: Prepared, winner: dict) -> dict:
    """Copy the winning candidate's trained weights to winner/ (arch.json + weights.pt)."""
    return save_trained(p, winner["widths"], winner["_checkpoint"], p.run_dir / "winner",
                        extra={"val_acc": winner["val_acc"], "trial_id": winner["trial_id"],
                               "origin": winner["origin"]})


def measure_speed(p: Prepared, winner_dir: Path, batch_size: int = 32) -> dict:
    """Measured forward latency of the baseline and the pruned winner on the driver's device:
    the pruned network is physically smaller, so it must also be faster."""
    from .timing import measure_latency
    from .surgery import load_pruned
    shape = p.splits.input_shape
    base_ms = measure_latency(p.model, shape, batch_size=batch_size, device=p.device)
    win_ms = measure_latency(load_pruned(winner_dir), shape, batch_size=batch_size, device=p.device)
    return {"device": p.device, "batch_size": batch_size, "baseline_ms": base_ms, "winner_ms": win_ms,
            "speedup": base_ms / win_ms if win_ms > 0 else None}


def _clean_checkpoints(rows: list[dict], winner: dict | None) -> None:
    for r in rows:
        if r.get("_checkpoint") and (winner is None or r is not winner):
            local = Path(r["_checkpoint"].path)
            if local.is_dir():  # remote storage keeps its checkpoints
                shutil.rmtree(local, ignore_errors=True)


def run_search(cfg: Config, *, out: str | None = None, config_path: str | None = None,
               resume: bool = False, address: str | None = None) -> Path:
    """Run the whole flow; returns the run directory."""
    run_dir = prepare_run_dir(out, config_path, resume)
    check_resources(cfg, address)
    p = prepare(cfg, run_dir)
    say(f"run directory: {run_dir}")
    extra = {"versions": versions(), "split": p.splits.summary(), "device": p.device,
             "budget": {"kind": p.cost_kind, "limit": p.max_macs}}
    saved = run_dir / "config.yaml"
    if saved.is_file():
        previous = config_mod.read_yaml(saved)
        previous.pop("_resolved", None)
        if config_mod.from_dict(previous) != cfg:
            raise ConfigError(f"the config differs from {saved}; resume with the same config and "
                              f"--set values, or start a new run directory")
    else:
        config_mod.dump(cfg, saved, extra=extra)
    # Read before any work starts: an unreadable journal is reported before Ray starts.
    journal = load_journal(journal_path(run_dir)) if resume else None
    experiment = _experiment(p, "search")
    if resume and journal is None and "://" not in experiment and Path(experiment).is_dir() \
            and any(d.name.startswith("candidate_") for d in Path(experiment).iterdir()):
        raise RunDirError(f"--resume: {experiment} has trials but no search journal (a run of an "
                          f"older structsearch); finish it with that version or start a new run "
                          f"directory")
    baseline = stage_baseline(p)
    scores = stage_scores(p)
    core = build_searcher(p)
    started = time.perf_counter()
    init_ray(address)
    if "dmcp" in cfg.search.searcher.split("+"):
        core = build_searcher(p, stage_supernet(p, scores, baseline))
    rows = stage_search(p, scores, baseline, core, journal=journal)
    search_seconds = time.perf_counter() - started
    winner = pick_winner(rows, p.max_macs)
    report.write_candidates(rows, run_dir / "candidates.csv")
    # TensorBoard histograms live beside the trials when storage is local, else in RUN_DIR/tune.
    local = tune_storage(p) if "://" not in tune_storage(p) else str(run_dir / "tune")
    report.write_width_histograms(rows, p.space.full_widths, Path(local) / "widths")
    summary = {
        "baseline": baseline,
        "budget": budget_summary(p, baseline),
        "space": {"groups": p.space.names, "full_widths": p.space.full_widths,
                  "round_to": p.space.round_to, "min_ratio": p.space.min_ratio},
        "search": {"searcher": cfg.search.searcher, "criterion": cfg.search.criterion,
                   "evaluated": len(rows), "errors": sum(r["status"] != "ok" for r in rows),
                   "epochs": cfg.search.epochs, "seconds": round(search_seconds, 1)},
        "winner": None, "finetune": None, "scratch_e": None, "scratch_b": None,
        "versions": extra["versions"],
    }
    if winner is None:
        report.write_json(summary, run_dir / "summary.json")
        report.render(run_dir)
        failed = sum(r["status"] == "error" for r in rows)
        if failed < len(rows):
            raise SearchFailed(f"no candidate finished within the budget ({failed} of {len(rows)} "
                               f"failed); see {run_dir / 'candidates.csv'}")
        raise SearchFailed(f"every candidate failed ({len(rows)} of {len(rows)}); see "
                           f"{run_dir / 'candidates.csv'} for the errors")
    summary["winner"] = {k: winner[k] for k in ("trial_id", "origin", "widths", "macs", "params",
                                                "macs_ratio", "val_acc", "epochs")}
    summary["winner"]["searcher"] = winner["searcher"]
    if p.latency:
        summary["winner"]["latency_ms"] = winner["cost"]
    say(f"winner: {winner['origin']} val {100 * winner['val_acc']:.2f}% at "
        f"{100 * winner['macs_ratio']:.1f}% MACs")
    winner_state = save_winner(p, winner)
    _clean_checkpoints(rows, winner)
    report.write_json(summary, run_dir / "summary.json")
    summary.update(stage_final(p, scores, baseline, winner, winner_state))
    summary["speed"] = measure_speed(p, run_dir / "winner")
    report.write_json(summary, run_dir / "summary.json")
    report.render(run_dir)
    say(f"done: {run_dir / 'report.md'}")
    for key in ("finetune", "scratch_e", "scratch_b"):
        if summary.get(key):
            say(f"  {key}: test {100 * summary[key]['test_acc']:.2f}% "
                f"(baseline {100 * baseline['test_acc']:.2f}%)")
    return run_dir


def run_baseline(cfg: Config, *, out: str | None = None, config_path: str | None = None) -> Path:
    """``structsearch train``: only the baseline stage."""
    run_dir = prepare_run_dir(out, config_path, resume=False)
    p = prepare(cfg, run_dir)
    config_mod.dump(cfg, run_dir / "config.yaml", extra={"split": p.splits.summary()})
    stage_baseline(p)
    return run_dir


__all__ = ["run_search", "run_baseline", "RunDirError", "prepare", "pick_winner", "final_runs"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `structsearch` command")
