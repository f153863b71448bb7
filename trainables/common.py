"""What every trial needs, shipped once per experiment with ``tune.with_parameters``."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from structsearch import data as data_mod
from structsearch import models
from structsearch.criteria import criterion_keep
from structsearch.space import WidthSpace
from structsearch.surgery import prune
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


def build_pruned_model(setup: TrialSetup, baseline_state: dict | None, widths, *,
                       inherit: bool) -> torch.nn.Module:
    """The baseline (with its trained weights when ``inherit``) cut to ``widths``, keeping the
    channels the criterion ranks highest; without ``inherit`` the weights are re-initialised."""
    full = models.build(setup.model_name, **setup.model_kwargs)
    if inherit and baseline_state is not None:
        full.load_state_dict(baseline_state)
    keep = criterion_keep(setup.scores, widths)
    model = prune(full, setup.space, widths, keep=keep)
    if not inherit:
        reset_parameters(model)
    return model


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
