"""What every trial needs, shipped once per experiment with ``tune.with_parameters``."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from structsearch import data as data_mod
from structsearch import entrypoints
from structsearch import models
from structsearch import criteria
from structsearch.criteria import criterion_keep
from structsearch.space import WidthSpace
from structsearch.surgery import prune, reconstruct
from structsearch.train import TrainSpec

_SPLITS_CACHE: dict = {}


@dataclass(frozen=True)
class TrialSetup:
    """Everything a candidate or final trial rebuilds its model and data from."""

    model_name: str
    model_kwargs: dict
    data_spec: data_mod.DataSpec
    space: WidthSpace
    scores: list  # one numpy array per group (criterion scores; higher = keep)
    train: TrainSpec
    seed: int = 0
    baseline_macs: int = 0
    fault_injection: dict = field(default_factory=dict)
    fitness: str = "train"  # "train": k epochs then val accuracy; "adaptive_bn": EagleEye
    criterion: str = "l1"  # the run's criterion (it picks each candidate's channels)
    criterion_params: dict = field(default_factory=dict)  # search.criteria[criterion]
    selection: list | None = None  # the criterion's per-width selection state (LASSO's Grams)
    reconstruct: bool = False  # least-squares refit of the consumers before training
    # Models and data passed as Python objects (structsearch.search) travel by value: a
    # cloudpickle blob, loaded and registered again wherever this setup is unpickled (a Ray
    # worker), after ``paths`` (the driver's own import directories: entry points and the
    # classes a by-value object refers to by name) are on sys.path there.
    objects: bytes = b""
    paths: tuple = ()

    def __setstate__(self, state: dict) -> None:
        import sys
        self.__dict__.update(state)
        for path in state.get("paths") or ():
            if path not in sys.path:
                sys.path.append(path)
        if state.get("objects"):
            # The driver's own objects, passed in memory through Ray's object store (as Ray
            # passes every trial parameter); nothing in the run directory is ever unpickled.
            import cloudpickle
            entrypoints.adopt(cloudpickle.loads(state["objects"]))


def device_for_trial() -> str:
    """CUDA only when Ray gave this trial a GPU: a 0-GPU trial on a GPU machine still sees the
    card, and training there would bypass Ray's accounting."""
    if not torch.cuda.is_available():
        return "cpu"
    try:
        import ray
        return "cuda" if ray.get_gpu_ids() else "cpu"
    except Exception:  # noqa: BLE001 - outside a Ray worker (direct calls in tests, benchmarks)
        return "cuda"


def load_splits(spec: data_mod.DataSpec, device: str):
    """Datasets are loaded once per worker process and kept (actors are reused across trials)."""
    key = (spec, device)
    if key not in _SPLITS_CACHE:
        _SPLITS_CACHE.clear()
        _SPLITS_CACHE[key] = data_mod.load(spec, device=device)
    return _SPLITS_CACHE[key]


def run_criterion(setup: TrialSetup):
    return criteria.get(setup.criterion, **setup.criterion_params)


def needs_batches(setup: TrialSetup, inherit: bool) -> bool:
    """Whether building an inherited candidate reads training images: for its reconstruction,
    or for a criterion that selects on the model (He et al.'s sequential order)."""
    return inherit and (setup.reconstruct or run_criterion(setup).selects_on_model)


def build_pruned_model(setup: TrialSetup, baseline_state: dict | None, widths, *,
                       inherit: bool, keep=None, original_init: bool = False,
                       batches=None) -> torch.nn.Module:
    """The baseline (with its trained weights when ``inherit``) cut to ``widths``.

    ``keep`` lists, per group, the root channels to keep (sorted or not); by default the run's
    criterion chooses them at these widths. Without ``inherit`` the weights are re-initialised:
    at random, or with ``original_init`` to the run seed's initialisation of the full network,
    cut to the kept channels (DropNet's reset to the initial weights: the same for every step).
    ``batches`` (see :func:`needs_batches`) are the training images an inherited model's
    selection (a criterion that ``selects_on_model``) and least-squares reconstruction of the
    consumers of pruned channels (``setup.reconstruct``, He et al.'s) fit on.
    """
    with torch.random.fork_rng(devices=[]):
        if original_init:
            torch.manual_seed(setup.seed)
        full = models.build(setup.model_name, **setup.model_kwargs)
    if inherit and baseline_state is not None:
        full.load_state_dict(baseline_state)
    criterion = run_criterion(setup)
    if keep is None and inherit and criterion.selects_on_model and batches is not None:
        keep = criterion.select_on_model(full, setup.space, widths, batches, scores=setup.scores)
    elif keep is None:
        keep = criterion.select(setup.selection, setup.scores, widths) \
            if setup.selection is not None else criterion_keep(setup.scores, widths)
    else:
        keep = {g: np.sort(np.asarray(k, dtype=np.int64)) for g, k in enumerate(keep)}
        if [len(k) for k in keep.values()] != [int(w) for w in widths]:
            raise ValueError("keep must list exactly widths[g] channels for every group")
    model = prune(full, setup.space, widths, keep=keep)
    if not inherit and not original_init:
        reset_parameters(model)
    if inherit and setup.reconstruct and batches is not None:
        reconstruct(model, full, setup.space, keep, batches, seed=setup.seed)
    return model


def reconstruction_batches(split, seed: int, n_images: int = 640) -> list:
    """The fixed training images a candidate's reconstruction fits on (as the scores' sample)."""
    sub = split.subset(min(n_images, len(split)), seed=seed)
    return list(sub.batches(128, shuffle=False, augment=False))


def kept_channel_scores(model: torch.nn.Module, setup: TrialSetup, widths, split,
                        num_batches: int = 20) -> list[list[float]]:
    """Mean post-activation (DropNet's score, raw so that groups compare) of each channel of a
    pruned model, per group of ``setup.space``, in ascending order of the kept root channels.

    The pruned model is traced again to find its groups, which are matched to the baseline's by
    their member layers (a pruned copy has the same layers, only narrower).
    """
    from structsearch.criteria.activation import pooled_activation
    from structsearch.criteria.features import feature_scores

    space = setup.space
    on_cpu = next(model.parameters()).device.type == "cpu"
    pruned = WidthSpace.from_model(model if on_cpu else copy.deepcopy(model).cpu(), space.input_shape,
                                   min_width=1, check=False)
    by_members = {frozenset((m.module, m.dim) for m in g.members): g for g in pruned.groups}
    ordered = []
    for g, w in zip(space.groups, widths):
        match = by_members.get(frozenset((m.module, m.dim) for m in g.members))
        if match is None or match.width != int(w):
            raise RuntimeError(f"cannot match group {g.name} of the baseline in the pruned model")
        ordered.append(match)
    scores = feature_scores(model, dataclasses.replace(pruned, groups=ordered), split, num_batches,
                            pooled_activation, normalize=False)
    return [[float(v) for v in s] for s in scores]


def reset_parameters(model: torch.nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()


def widths_seed(widths, seed: int) -> int:
    """A stable per-architecture seed, so one config gives the same results on re-run."""
    text = f"{seed}:" + ",".join(str(int(w)) for w in widths)
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16)


def injected_fault(fault: dict, widths, seed: int) -> str | None:
    """Deterministic fault for testing failure handling: 'raise', 'nan' or None."""
    if not fault:
        return None
    u = np.random.default_rng(widths_seed(widths, seed) + 7).random()
    p_raise, p_nan = float(fault.get("raise", 0)), float(fault.get("nan", 0))
    if u < p_raise:
        return "raise"
    if u < p_raise + p_nan:
        return "nan"
    return None


def cpu_threads() -> None:
    # Ray sets OMP_NUM_THREADS to the trial's CPUs; make torch follow it.
    n = os.environ.get("OMP_NUM_THREADS")
    if n and n.isdigit():
        torch.set_num_threads(max(1, int(n)))
