"""The search's trial scheduler (Ray Tune's ASHA) and its state as plain data.

The search journal stores :func:`scheduler_state` (JSON-safe: lists, dicts with string keys,
numbers, strings) instead of the live scheduler; ``make_scheduler(search_cfg, state=...)``
rebuilds one that stops trials exactly as the saved one would have. What decides ASHA's future
stops is, per bracket, each rung's recorded metric values by trial id (a rung's cutoff is a
percentile of them, and a trial already recorded in a rung is not judged there again), plus which
bracket each live trial belongs to; the rest (milestones, metric, mode, ``max_t``) comes from the
config and is checked against the saved values. Ray is imported only inside the functions.
"""
from __future__ import annotations

_VERSION = 1


def make_scheduler(search_cfg, state: dict | None = None):
    """The ASHA scheduler of ``search_cfg`` (``search.scheduler: asha`` with trained fitness and
    at least two epochs), or ``None`` for FIFO. With ``state`` (from :func:`scheduler_state`),
    the scheduler continues with the saved rungs; raises ValueError when the state does not fit
    the config (e.g. ``search.epochs`` changed)."""
    s = search_cfg
    if s.scheduler != "asha" or s.fitness == "adaptive_bn" or s.epochs < 2:
        if state is not None:
            raise ValueError("the journal holds ASHA scheduler state, but this config runs no "
                             "scheduler (search.scheduler, search.fitness or search.epochs changed?)")
        return None
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(metric="val_acc", mode="max", grace_period=1, max_t=s.epochs,
                              reduction_factor=2)
    if state is not None:
        _restore(scheduler, state)
    return scheduler


def _settings(scheduler) -> dict:
    return {"time_attr": scheduler._time_attr, "metric": scheduler._metric,
            "mode": scheduler._mode, "max_t": scheduler._max_t,
            "reduction_factor": scheduler._reduction_factor,
            "stop_last_trials": bool(scheduler._stop_last_trials),
            "milestones": [[m for m, _ in b._rungs] for b in scheduler._brackets]}


def scheduler_state(scheduler) -> dict | None:
    """Plain, JSON-safe data from which :func:`make_scheduler` rebuilds ``scheduler`` (an
    ``ASHAScheduler``), or ``None`` for no scheduler."""
    if scheduler is None:
        return None
    from ray.tune.schedulers import AsyncHyperBandScheduler

    if not isinstance(scheduler, AsyncHyperBandScheduler):
        raise TypeError(f"cannot save the state of a {type(scheduler).__name__}; only ASHA's")
    index = {id(b): i for i, b in enumerate(scheduler._brackets)}
    return {
        "version": _VERSION,
        **_settings(scheduler),
        # Per bracket, per rung (highest milestone first, as Ray keeps them): trial id ->
        # recorded value (the metric times the mode's sign).
        "rungs": [[{str(t): float(v) for t, v in recorded.items()} for _, recorded in b._rungs]
                  for b in scheduler._brackets],
        "trial_brackets": {str(t): index[id(b)] for t, b in scheduler._trial_info.items()},
        "num_stopped": int(scheduler._num_stopped),
        "counter": int(scheduler._counter),
    }


def _restore(scheduler, state: dict) -> None:
    if state.get("version") != _VERSION:
        raise ValueError(f"unknown ASHA scheduler state version {state.get('version')!r}")
    mine = _settings(scheduler)
    saved = {k: state.get(k) for k in mine}
    if saved != mine:
        diff = ", ".join(f"{k}: saved {saved[k]!r}, now {mine[k]!r}" for k in mine
                         if saved[k] != mine[k])
        raise ValueError(f"the saved ASHA scheduler state does not fit this config ({diff})")
    for bracket, rungs in zip(scheduler._brackets, state["rungs"]):
        for (_, recorded), values in zip(bracket._rungs, rungs):
            recorded.clear()
            recorded.update({str(t): float(v) for t, v in values.items()})
    scheduler._trial_info = {str(t): scheduler._brackets[int(i)]
                             for t, i in state["trial_brackets"].items()}
    scheduler._num_stopped = int(state["num_stopped"])
    scheduler._counter = int(state["counter"])
