"""Candidate trial: prune the baseline to the proposed widths, train ``k`` epochs, validate.

The config is a :class:`~structsearch.candidate.Candidate` (``Candidate.to_config``). Its
``options`` may carry a searcher's instructions: ``keep`` (per group, the root channels to keep
instead of the criterion's top ones), ``init`` (``inherit``: the baseline's trained weights, the
default; ``original``: the run seed's initial weights, DropNet's reset) and ``channel_scores``
(report the mean post-activation of every kept channel after training under
``channel_scores``: one flat list of floats, group after group, in ascending order of each
group's kept root channels, for DropNet's next step) and ``finetune`` (``{"epochs", "lr"}``: after
its training, the candidate gets the final stage's fine-tune and reports the validation accuracy
after it, a re-evaluation by ``search.reevaluate_by: finetune``; with ``weights``, a search
checkpoint, it is not trained again but fine-tuned from there, as the final stage does).
"""
from __future__ import annotations

import math
import time

import torch
from ray import tune

from structsearch.candidate import Candidate
from structsearch.train import evaluate, recalibrate_bn, train

from .checkpoint import checkpoint_weights, report_with_weights
from .common import (TrialSetup, build_pruned_model, cpu_threads, device_for_trial,
                     injected_fault, kept_channel_scores, load_splits, needs_batches,
                     reconstruction_batches,
                     widths_seed)
from .final import final_training, winner_model


def candidate_trainable(config: dict, *, setup: TrialSetup, baseline_state: dict) -> None:
    """Reports ``val_acc``, ``val_loss``, ``train_loss``, ``epoch`` and ``status`` after every
    epoch and checkpoints the trained weights with the last report."""
    cpu_threads()
    start = time.perf_counter()
    candidate = Candidate.from_config(config)
    widths, options = list(candidate.widths), candidate.options
    fault = injected_fault(setup.fault_injection, widths, setup.seed)
    if fault == "raise":
        raise RuntimeError("injected fault (search.fault_injection)")
    device = device_for_trial()
    splits = load_splits(setup.data_spec, device)
    if options.get("weights"):
        # A fine-tune re-evaluation of a search candidate starts where the final stage would:
        # from the candidate's own search checkpoint (its options, e.g. DropNet's keep, stand).
        model = winner_model(setup, baseline_state, checkpoint_weights(options["weights"]),
                             widths, "finetune")
        final = _finetune(model, setup, splits, device, options["finetune"], {"val_acc": None},
                          start)
        return report_with_weights(dict(final, seconds=time.perf_counter() - start), model)
    original = options.get("init", "inherit") == "original"
    reconstructed = setup.reconstruct and not original
    model = build_pruned_model(setup, baseline_state, widths, inherit=not original,
                               keep=options.get("keep"), original_init=original,
                               batches=reconstruction_batches(splits.train, setup.seed)
                               if needs_batches(setup, not original) else None)
    if fault == "nan":
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    # A re-evaluation repeat (options["repeat"] = 1, 2, ...) trains the same widths anew under
    # another seed: a second opinion on a top candidate, not a copy of its first run.
    seed = widths_seed(widths, setup.seed + 7919 * int(options.get("repeat", 0)))
    if setup.fitness == "adaptive_bn":
        final = _adaptive_bn_fitness(model, setup, splits, device, seed)
    else:
        final = _train_fitness(model, setup, splits, device, seed, start)
        if final is None:
            return
    if options.get("finetune") and final["status"] == "ok":
        final = _finetune(model, setup, splits, device, options["finetune"], final, start)
    final["seconds"] = time.perf_counter() - start
    final["reconstructed"] = reconstructed
    if final["status"] == "ok" and options.get("channel_scores"):
        try:
            scores = kept_channel_scores(model, setup, widths, splits.train)
            final["channel_scores"] = [v for group in scores for v in group]
        except Exception as exc:  # noqa: BLE001 - the trained result stands; DropNet falls back
            final["channel_scores_error"] = f"{type(exc).__name__}: {exc}"[:200]
    report_with_weights(final, model)


def _train_fitness(model, setup: TrialSetup, splits, device: str, seed: int,
                   start: float) -> dict | None:
    """Train ``setup.train.epochs`` epochs, reporting each but the last; returns the last
    epoch's result (None when training diverged: that result is already reported)."""
    epochs = setup.train.epochs
    last: dict = {}

    def on_epoch(epoch: int, metrics: dict):
        result = dict(epoch=epoch, val_acc=metrics["val_acc"], val_loss=metrics["val_loss"],
                      train_loss=metrics["train_loss"], status="ok",
                      seconds=time.perf_counter() - start)
        if epoch < epochs:
            tune.report(result)
        else:
            last.update(result)

    try:
        train(model, splits.train, setup.train, val_split=splits.val, device=device, seed=seed,
              on_epoch=on_epoch)
    except FloatingPointError as exc:
        # A diverged candidate is a result, not a crash: report it as failed with its reason.
        tune.report(dict(epoch=0, val_acc=0.0, status="error", error=str(exc),
                         seconds=time.perf_counter() - start))
        return None
    if not math.isfinite(last["val_acc"]):
        last.update(status="error", error="non-finite validation accuracy", val_acc=0.0)
    return last


def _finetune(model, setup: TrialSetup, splits, device: str, finetune: dict, searched: dict,
              start: float) -> dict:
    """The fine-tune the final stage would give this candidate as the winner (the seeds and
    constant lr of :func:`trainables.final.final_run`): the same run, so a re-evaluated winner's
    fine-tuned validation accuracy is the final stage's. Reports each epoch but the last."""
    epochs = int(finetune["epochs"])
    before = setup.train.epochs if setup.fitness == "train" else 0

    def on_epoch(epoch: int, metrics: dict):
        if epoch < epochs:
            tune.report(dict(epoch=before + epoch, val_acc=metrics["val_acc"], status="ok",
                             val_loss=metrics["val_loss"], train_loss=metrics["train_loss"],
                             seconds=time.perf_counter() - start))

    try:
        _, result = final_training(model, setup, splits, device, epochs, float(finetune["lr"]),
                                   "constant", on_epoch)
    except FloatingPointError as exc:
        return dict(searched, epoch=before, val_acc=0.0, status="error", error=f"fine-tune: {exc}")
    val = evaluate(model, splits.val, device=device)
    if not math.isfinite(val["loss"]):
        return dict(searched, epoch=before, val_acc=0.0, status="error",
                    error="fine-tune: non-finite validation loss")
    return dict(epoch=before + epochs, val_acc=val["top1"], val_loss=val["loss"],
                train_loss=result.get("train_loss"), status="ok",
                val_acc_before_finetune=searched["val_acc"])


def _adaptive_bn_fitness(model, setup: TrialSetup, splits, device: str, seed: int) -> dict:
    """EagleEye's cheap fitness: recalibrated BN statistics, no gradient step."""
    recalibrate_bn(model, splits.train, batches=50, batch_size=setup.train.batch_size,
                   device=device, seed=seed)
    val = evaluate(model, splits.val, device=device)
    if not math.isfinite(val["loss"]):
        return dict(epoch=0, val_acc=0.0, val_loss=val["loss"], train_loss=None, status="error",
                    error="non-finite validation loss")
    return dict(epoch=0, val_acc=val["top1"], val_loss=val["loss"], train_loss=None, status="ok")


def reevaluation_trainable(config: dict, *, setup: TrialSetup, baseline_state: dict) -> None:
    """One repeat of a top candidate (``config["run"]["candidate"]``: its trial config, with
    ``options.repeat``), trained and reported as :func:`candidate_trainable` does."""
    candidate_trainable(config["run"]["candidate"], setup=setup, baseline_state=baseline_state)
