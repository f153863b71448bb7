"""Final stage (Liu et al., "Rethinking the Value of Network Pruning"): the winner trained by
``finetune`` (inherit weights, small constant lr), ``scratch_e`` (random init, baseline epochs)
and ``scratch_b`` (random init, epochs scaled by baseline MACs / pruned MACs), each measured on
the test split."""
from __future__ import annotations

import dataclasses
import time

import torch
from ray import tune

from structsearch.train import TrainSpec, evaluate, recalibrate_bn, train

from .checkpoint import report_with_weights
from .common import (TrialSetup, build_pruned_model, cpu_threads, device_for_trial, load_splits,
                     needs_batches, reconstruction_batches, widths_seed)


def final_trainable(config: dict, *, setup: TrialSetup, baseline_state: dict,
                    winner_state: dict | None, runs: dict) -> None:
    """``config``: ``protocol``, a key of ``runs`` (key -> ``protocol``, ``widths``, ``epochs``,
    ``lr``, ``schedule``, ``compile``; a one-shot baseline also has ``source: oneshot``)."""
    cpu_threads()
    device = device_for_trial()
    final, model = final_run(runs[config["protocol"]], setup, baseline_state, winner_state,
                             load_splits(setup.data_spec, device), device, report=tune.report)
    report_with_weights(final, model)


def trains_nothing(run: dict) -> bool:
    """A run that is the winner as it stands (its fine-tune for 0 epochs): the driver measures it
    without a trial (a one-shot baseline still trains as a candidate does first)."""
    return int(run["epochs"]) == 0 and run["protocol"] == "finetune" and run.get("source") != "oneshot"


def final_run(run: dict, setup: TrialSetup, baseline_state: dict, winner_state: dict | None,
              splits, device: str, report=None) -> tuple[dict, torch.nn.Module]:
    """Train ``run`` (an entry of the final stage's ``runs``) and measure it on the validation
    and test splits; ``report`` receives each epoch's result but the last. Returns the metrics
    and the trained model."""
    key, start = run["key"], time.perf_counter()
    widths = [int(w) for w in run["widths"]]
    if run.get("source") == "oneshot":
        model = oneshot_candidate(setup, baseline_state, widths, splits, device)
    else:
        model = winner_model(setup, baseline_state, winner_state, widths, run["protocol"])
    if run.get("compile") and int(run["epochs"]) > 0 and device.startswith("cuda"):
        # One architecture trained for many epochs: compiling pays off here, unlike candidates
        # (and unlike a run that only measures).
        model = model.to(device)
        model.forward = torch.compile(model.forward)
    epochs = int(run["epochs"])

    def on_epoch(epoch: int, metrics: dict):
        if epoch < epochs and report is not None:
            report({"protocol": key, "epoch": epoch, "val_acc": metrics["val_acc"]})

    spec, result = final_training(model, setup, splits, device, epochs, float(run["lr"]),
                                  run["schedule"], on_epoch)
    test = evaluate(model, splits.test, device=device)
    val = evaluate(model, splits.val, device=device)
    final = {"protocol": key, "epoch": spec.epochs, "val_acc": val["top1"],
             "test_acc": test["top1"], "test_loss": test["loss"], "epochs": spec.epochs,
             "lr": spec.lr, "seconds": time.perf_counter() - start,
             "train_loss": result.get("train_loss")}
    return final, model


def final_training(model, setup: TrialSetup, splits, device: str, epochs: int, lr: float,
                   schedule: str, on_epoch) -> tuple[TrainSpec, dict]:
    """A final-stage run's training (``epochs`` at ``lr``, seeded by the run's seed; nothing
    for 0 epochs): ``(its spec, train's result)``. A fine-tune re-evaluation trains the same."""
    spec: TrainSpec = dataclasses.replace(setup.train, epochs=epochs, lr=lr, schedule=schedule)
    if spec.epochs <= 0:
        return spec, {}
    return spec, train(model, splits.train, spec, val_split=splits.val, device=device,
                       seed=setup.seed + 1, on_epoch=on_epoch)


def winner_model(setup: TrialSetup, baseline_state: dict, winner_state: dict | None, widths,
                 protocol: str) -> torch.nn.Module:
    """The winner's architecture: its trained weights (fine-tune) or a fresh initialisation."""
    inherit = protocol == "finetune"
    # Scratch runs draw their initial weights from the run's seed: reruns are identical.
    torch.manual_seed(setup.seed + {"finetune": 11, "scratch_e": 12, "scratch_b": 13}.get(protocol, 0))
    # The shapes are the winner's; every weight comes from its state (fine-tune) or a fresh
    # initialisation (scratch), so which channels are cut does not matter: skip the criterion.
    model = build_pruned_model(setup, baseline_state, widths, inherit=inherit,
                               keep=[range(int(w)) for w in widths])
    if inherit and winner_state is not None:
        model.load_state_dict(winner_state)
    return model


def oneshot_candidate(setup: TrialSetup, baseline_state: dict, widths, splits,
                      device: str) -> torch.nn.Module:
    """A one-shot baseline brought to where the winner starts its fine-tune: cut from the
    baseline by the run's criterion (and reconstruction), then trained as a candidate is (the
    search's epochs, lr and schedule, seeded by its widths; with the adaptive-BN fitness, its BN
    statistics recalibrated as a candidate's are)."""
    batches = reconstruction_batches(splits.train, setup.seed) if needs_batches(setup, True) \
        else None
    model = build_pruned_model(setup, baseline_state, widths, inherit=True, batches=batches)
    if setup.fitness == "train" and setup.train.epochs > 0:
        train(model, splits.train, setup.train, device=device,
              seed=widths_seed(widths, setup.seed))
    elif setup.fitness == "adaptive_bn":  # where an adaptive-BN candidate is left (EagleEye)
        recalibrate_bn(model, splits.train, batches=50, batch_size=setup.train.batch_size,
                       device=device, seed=widths_seed(widths, setup.seed))
    torch.manual_seed(setup.seed + 11)
    return model
