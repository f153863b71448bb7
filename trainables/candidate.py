"""Candidate trial: prune the baseline to the proposed widths, train ``k`` epochs, validate.

Besides ``widths`` the config may carry a searcher's instructions (``searchers.core.Proposal.options``):
``keep`` (per group, the root channels to keep instead of the criterion's top ones), ``init``
(``inherit``: the baseline's trained weights, the default; ``original``: the run seed's initial
weights, DropNet's reset) and ``channel_scores`` (report the mean post-activation of every kept
channel after training, as a JSON string, for DropNet's next step).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time

import torch
from ray import tune

from structsearch.train import evaluate, recalibrate_bn, train

from .common import (TrialSetup, build_pruned_model, cpu_threads, device_for_trial,
                     injected_fault, kept_channel_scores, load_splits, widths_seed)

WEIGHTS = "weights.pt"


def candidate_trainable(config: dict, *, setup: TrialSetup, baseline_state: dict) -> None:
    """Reports ``val_acc``, ``macs``, ``params``, ``macs_ratio``, ``epoch`` after every epoch and
    checkpoints the trained weights with the last report."""
    cpu_threads()
    start = time.perf_counter()
    widths = [int(w) for w in config["widths"]]
    space = setup.space
    facts = {"macs": int(space.macs(widths)), "params": int(space.params(widths)),
             "macs_ratio": space.macs(widths) / setup.baseline_macs, "status": "ok"}
    fault = injected_fault(setup.fault_injection, widths, setup.seed)
    if fault == "raise":
        raise RuntimeError("injected fault (search.fault_injection)")
    device = device_for_trial()
    splits = load_splits(setup.data_spec, device)
    original = config.get("init", "inherit") == "original"
    model = build_pruned_model(setup, baseline_state, widths, inherit=not original,
                               keep=config.get("keep"), original_init=original)
    if fault == "nan":
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    seed = widths_seed(widths, setup.seed)
    epochs = setup.train.epochs
    reports = []

    def on_epoch(epoch: int, metrics: dict):
        result = dict(facts, epoch=epoch, val_acc=metrics["val_acc"], val_loss=metrics["val_loss"],
                      train_loss=metrics["train_loss"], seconds=time.perf_counter() - start)
        if epoch < epochs:
            tune.report(result)
        else:
            reports.append(result)

    if setup.fitness == "adaptive_bn":
        # EagleEye's cheap fitness: recalibrated BN statistics, no gradient step.
        recalibrate_bn(model, splits.train, batches=50, batch_size=setup.train.batch_size,
                       device=device, seed=seed)
        val = evaluate(model, splits.val, device=device)
        acc = val["top1"] if math.isfinite(val["loss"]) else 0.0
        reports.append(dict(facts, epoch=0, val_acc=acc, val_loss=val["loss"], train_loss=None,
                            seconds=time.perf_counter() - start))
        if not math.isfinite(val["loss"]):
            reports[-1].update(status="error", error="non-finite validation loss")
        epochs = 0
    try:
        if epochs:
            train(model, splits.train, setup.train, val_split=splits.val, device=device, seed=seed,
                  on_epoch=on_epoch)
    except FloatingPointError as exc:
        # A diverged candidate is a result, not a crash: report it as failed with its reason.
        tune.report(dict(facts, epoch=0, val_acc=0.0, status="error", error=str(exc),
                         seconds=time.perf_counter() - start))
        return
    final = reports[-1]
    if not math.isfinite(final["val_acc"]):
        final.update(status="error", error="non-finite validation accuracy", val_acc=0.0)
    elif config.get("channel_scores"):
        try:
            final["channel_scores"] = json.dumps(kept_channel_scores(model, setup, widths, splits.train))
        except Exception as exc:  # noqa: BLE001 - the trained result stands; DropNet falls back
            final["channel_scores_error"] = f"{type(exc).__name__}: {exc}"[:200]
    with tempfile.TemporaryDirectory() as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(tmp, WEIGHTS))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))
