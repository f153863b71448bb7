"""Ray Tune glue for the pipeline: starting Ray, the one helper every Tune experiment starts
through, and the progress callback. Imported only once a run reaches its first Tune stage."""
from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Callable

from ray import tune

from .preflight import say

log = logging.getLogger("structsearch")


def init_ray(address: str | None) -> None:
    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs = {"logging_level": logging.WARNING, "log_to_driver": False, "configure_logging": True}
    # Printed on every local start; the authentication itself stays on.
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        QuietTokenNotice())
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Workers must import this checkout's packages even when it is not pip-installed.
        root = str(Path(__file__).resolve().parent.parent)
        paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        paths += user_paths()  # where entry points (package.module:factory) import from
        # The dashboard starts when ray[default] is installed (the `dashboard` extra).
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}, **kwargs)
    from .signals import reinstall
    reinstall()  # ray.init replaced SIGTERM's handler; the command line wants its own


def cluster_nodes() -> tuple[list[dict], bool]:
    """The resources of each alive node of the joined cluster, and whether it autoscales (Ray's
    cluster launcher leaves its bootstrap config on the head, which is what Tune checks too)."""
    import ray
    nodes = [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]
    return nodes, (Path.home() / "ray_bootstrap_config.yaml").exists()


def user_paths() -> list[str]:
    """The driver's ``sys.path`` directories outside the Python installation (the working
    directory, a test folder, a project added by hand): local workers import from them too."""
    import sys
    prefixes = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    out = []
    for entry in sys.path:
        path = Path(entry or os.getcwd()).resolve()
        if path.is_dir() and not any(str(path).startswith(p) for p in prefixes):
            out.append(str(path))
    return list(dict.fromkeys(out))


def trial_dirname(trial) -> str:
    return f"{trial.trainable_name.split('_')[0]}_{trial.trial_id}"


class QuietTokenNotice(logging.Filter):
    """Ray says "Token authentication is enabled for this Ray cluster" on every local start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled for this Ray cluster" not in record.getMessage()


class NoTunerRestoreHint(logging.Filter):
    """Tune ends an interrupted run with "Resume experiment with: Tuner.restore(...)"; structsearch
    resumes from its own journal and says so itself ("continue with --resume"). Tune says so
    only when Ctrl-C (or SIGTERM, see :mod:`.signals`) stopped the experiment: ``interrupted``.
    Records below ``level`` (the logger's own before the experiment) are dropped."""

    interrupted = False

    def __init__(self, level: int = logging.NOTSET):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if "Tuner.restore(" in record.getMessage():
            self.interrupted = True
            return False
        return record.levelno >= self.level


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a Tune experiment; ``results`` is its ResultGrid (finished trials and the
    ones cut short), for a stage to keep what finished."""

    def __init__(self, results):
        super().__init__()
        self.results = results


def run_experiment(name: str, trainable, *, storage: str, resources: dict, params: dict,
                   param_space: dict | None = None, search_alg=None, num_samples: int = 1,
                   concurrent: int | None = None, scheduler=None, callbacks=(),
                   max_failures: int = 0, keep_checkpoints: int | None = None):
    """Run one Tune experiment ``storage/name`` of ``trainable`` (its large arguments ``params``
    shipped once with ``tune.with_parameters``, each trial given ``resources``); returns Tune's
    ResultGrid. Every Tune experiment of structsearch (supernet, search, final) starts here."""
    wrapped = tune.with_resources(tune.with_parameters(trainable, **params), resources)
    tuner = tune.Tuner(
        wrapped, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, num_samples=num_samples,
                                    max_concurrent_trials=concurrent, reuse_actors=True,
                                    scheduler=scheduler, trial_dirname_creator=trial_dirname,
                                    trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  callbacks=list(callbacks),
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints)))
    # Tune's warnings reach the hint even where the caller silenced them (it drops them again).
    log = logging.getLogger("ray.tune.tune")
    level, hint = log.level, NoTunerRestoreHint(log.getEffectiveLevel())
    log.addFilter(hint)
    log.setLevel(min(log.getEffectiveLevel(), logging.WARNING))
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        results = tuner.fit()
    finally:
        log.removeFilter(hint)
        log.setLevel(level)
        if handler is not None:  # Tune leaves its Ctrl-C handler behind after a normal end:
            signal.signal(signal.SIGINT, handler)  # a later Ctrl-C would only set its dead flag
    if hint.interrupted:
        # Tune returns normally after Ctrl-C, with the unfinished trials cut short: no stage may
        # go on with them (stage_search writes its journal and stage_final keeps what finished).
        raise Interrupted(results)
    return results


class Progress(tune.Callback):
    """One line per finished trial (no table floods): ``describe(trial, status)`` says what the
    trial was and returns its fitness (or None); the best so far is shown beside it."""

    def __init__(self, total: int, label: str, describe: Callable, *, done: int = 0,
                 best: float | None = None):
        # A resumed search goes on counting from what its journal holds.
        self.total, self.label, self.describe = total, label, describe
        self.done, self.best = done, best

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trial, "ok")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "error")

    def _line(self, trial, status: str) -> None:
        self.done += 1
        res = trial.last_result or {}
        if res.get("status") == "error":
            status = "error"
        what, acc, extra = self.describe(trial)
        if status == "ok" and acc is not None and (self.best is None or acc > self.best):
            self.best = acc
        best = f", best {100 * self.best:.2f}%" if self.best is not None else ""
        shown = f"val {100 * acc:.2f}%" if status == "ok" and acc is not None else status
        say(f"{self.label} {self.done}/{self.total}: {what} {shown}{extra}{best}")


def checkpoint_uri(checkpoint) -> str | None:
    """A Tune checkpoint as a path (local storage) or URI (remote storage) that
    ``tune.Checkpoint(uri)`` opens again; None for no checkpoint."""
    if checkpoint is None:
        return None
    fs = getattr(checkpoint, "filesystem", None)
    kind = getattr(fs, "type_name", "local") if fs is not None else "local"
    return checkpoint.path if kind == "local" else f"{kind}://{checkpoint.path}"


def trial_error_line(trial) -> str:
    """The last line of a failed trial's error file (it names the exception)."""
    text = ""
    if trial.error_file and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed")[:200]


class JournalRecorder(tune.Callback):
    """Records each finished candidate in the search journal; ``journal`` is the latest one
    written. Tune calls it right after telling the searcher the result, so the journal's trials
    and searcher state always belong together (see :mod:`structsearch.journal`).

    ``make_row(trial, error)`` builds the trial's candidates.csv row (once, here);
    ``state()`` returns the trial scheduler's plain state (or None)."""

    def __init__(self, journal, path: Path, searcher, make_row: Callable, scheduler_state: Callable):
        self.journal, self.path, self.searcher = journal, path, searcher
        self.make_row, self.scheduler_state = make_row, scheduler_state
        self.save_error: OSError | None = None

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._record(trial, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        # Tune has just written the error to the trial's local directory.
        self._record(trial, trial_error_line(trial))

    def _record(self, trial, error: str | None) -> None:
        if self.save_error is not None or any(t["trial_id"] == trial.trial_id
                                              for t in self.journal.trials):
            return
        row = self.make_row(trial, error)
        checkpoint = checkpoint_uri(trial.checkpoint) if row["status"] == "ok" else None
        self.write([*self.journal.trials, {"trial_id": trial.trial_id, "config": dict(trial.config),
                                           "row": row, "checkpoint": checkpoint}])

    def write(self, trials: list[dict]) -> None:
        """Write the searcher's and scheduler's state with ``trials``, then take it as the
        journal: a failed write changes nothing in memory; it is raised when the search returns
        (raising here would fail the trial)."""
        from .journal import Journal, save_journal
        new = Journal(core=self.searcher.core.state(), unfinished=self.searcher.unfinished(),
                      trials=trials, finished=self.searcher.finished,
                      scheduler=self.scheduler_state())
        try:
            save_journal(self.path, new)
        except OSError as exc:
            self.save_error = exc
            return
        self.journal = new
