"""The run directory: where a run lives, whether it may be (re)used, where Tune keeps its
experiments, and the clean-up of candidate checkpoints. See DESIGN.md for its contents."""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

from . import config as config_mod
from .config import Config, ConfigError



class RunDirError(ValueError):
    """The run directory cannot be used as asked (one line: what and the fix)."""


def open_run_dir(out: str | None, config_path: str | None, resume: bool) -> Path:
    """The absolute run directory for ``--out`` (default ``runs/<config>-<time>``), checked:
    a new run needs an empty or missing directory, ``--resume`` an existing one."""
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


def save_or_check_config(cfg: Config, run_dir: Path, extra: dict) -> None:
    """Write RUN_DIR/config.yaml for a new run; a resumed run must have the same config."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        config_mod.dump(cfg, saved, extra=extra)
        return
    previous = config_mod.read_yaml(saved)
    previous.pop("_resolved", None)
    if config_mod.resolved_final(config_mod.from_dict(previous)) != config_mod.resolved_final(cfg):
        raise ConfigError(f"the config differs from {saved}; resume with the same config and "
                          f"--set values, or start a new run directory")


def tune_storage(cfg: Config, run_dir: Path) -> str:
    """Where Tune keeps its experiments: RUN_DIR/tune, or under ``search.storage_path`` (a path
    or URI such as s3://bucket/prefix that every node of a cluster can reach). Shared storage is
    keyed by the run directory's name plus a hash of its full path, so two runs with the same
    name never share (or delete) each other's experiments."""
    base = cfg.search.storage_path
    if not base:
        return str(run_dir / "tune")
    key = f"{run_dir.name}-{hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]}"
    if "://" in base:
        return f"{base.rstrip('/')}/{key}"
    return str(Path(base).expanduser().resolve() / key)


def local_tune_dir(cfg: Config, run_dir: Path) -> Path:
    """A local directory for Tune-side artifacts (TensorBoard histograms): beside the trials
    when storage is local, else RUN_DIR/tune."""
    storage = tune_storage(cfg, run_dir)
    return Path(storage) if "://" not in storage else run_dir / "tune"


def experiment_path(cfg: Config, run_dir: Path, name: str) -> str:
    return f"{tune_storage(cfg, run_dir).rstrip('/')}/{name}"


def fresh_experiment(cfg: Config, run_dir: Path, name: str) -> str:
    """The experiment's path, emptied first when it is local (a new run never mixes with old
    trials; remote storage is left to its own lifecycle rules)."""
    path = experiment_path(cfg, run_dir, name)
    if "://" not in path and Path(path).exists():
        shutil.rmtree(path)
    return path


def check_resumable(cfg: Config, run_dir: Path, has_journal: bool) -> None:
    """Trials without a search journal come from an older structsearch: refuse to mix them."""
    experiment = experiment_path(cfg, run_dir, "search")
    if has_journal or "://" in experiment or not Path(experiment).is_dir():
        return
    if any(d.name.startswith("candidate_") for d in Path(experiment).iterdir()):
        raise RunDirError(f"--resume: {experiment} has trials but no search journal (a run of an "
                          f"older structsearch); finish it with that version or start a new run "
                          f"directory")


def clean_checkpoints(paths: list[str], keep: str | None) -> None:
    """Delete the local checkpoint directories in ``paths`` except ``keep`` (remote storage
    keeps its checkpoints)."""
    for path in paths:
        if path and path != keep and Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
