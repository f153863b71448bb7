"""DMCP supernet trial: learn Markov chain widths under a MACs budget (one Ray Tune trial).

The baseline (with its trained weights) becomes a :class:`~structsearch.dmcp.DMCPSupernet`
whose channel prefix follows the run's criterion scores, so the channels the chains keep first
are the ones candidate trials inherit. Every epoch reports the expected MACs and the largest
network's validation accuracy; the last report adds the exported chains under ``chains`` (what
``searchers.dmcp.DMCPSampler(chains=...)`` takes) and a checkpoint holding ``chains.json`` and the
supernet's weights and alphas (``supernet.pt``).
"""
from __future__ import annotations

import time

from ray import tune

from structsearch import models
from structsearch.dmcp import DMCPSupernet, order_from_scores, train_supernet

from .checkpoint import report_with_weights
from .common import TrialSetup, cpu_threads, device_for_trial, load_splits

EXPORT_FILE = "chains.json"
WEIGHTS = "supernet.pt"


def dmcp_trainable(config: dict, *, setup: TrialSetup, baseline_state: dict | None) -> None:
    """Config: ``epochs``, ``lr_weights``, ``lr_arch``, ``target_macs`` (MACs), ``num_blocks``;
    optional ``min_ratio`` (default the space's), ``batch_size`` (default the run's),
    ``budget_loss`` (``log_l1``), ``budget_weight`` (0.1), ``seed`` (the run's).

    Reports per epoch: ``epoch``, ``expected_macs``, ``expected_macs_ratio`` (of the baseline),
    ``es_macs``, ``target_macs``, ``val_acc`` (largest network), ``train_loss``,
    ``budget_loss``, ``seconds``; the final report adds ``chains`` (the export dict), ``es_widths``
    and ``status``."""
    cpu_threads()
    start = time.perf_counter()
    device = device_for_trial()
    splits = load_splits(setup.data_spec, device)
    model = models.build(setup.model_name, **setup.model_kwargs)
    if baseline_state is not None:
        model.load_state_dict(baseline_state)
    space = setup.space
    order = order_from_scores(setup.scores) if setup.scores else None
    supernet = DMCPSupernet(model, space, num_blocks=int(config.get("num_blocks", 9)),
                            min_ratio=float(config.get("min_ratio", space.min_ratio)), order=order)
    target = float(config["target_macs"])
    baseline_macs = float(setup.baseline_macs or space.full_macs)
    epochs = int(config["epochs"])
    reports: list[dict] = []

    def on_epoch(epoch: int, metrics: dict):
        result = {
            "epoch": epoch,
            "expected_macs": metrics["expected_macs"],
            "expected_macs_ratio": metrics["expected_macs"] / baseline_macs,
            "es_macs": metrics["es_macs"],
            "target_macs": target,
            "val_acc": metrics["val_acc"],
            "train_loss": metrics["train_loss"],
            "budget_loss": metrics["budget_loss"],
            "seconds": time.perf_counter() - start,
        }
        if epoch < epochs:
            tune.report(result)
        else:
            reports.append(result)

    train_supernet(supernet, splits.train, val_split=splits.val, epochs=epochs,
                   lr_weights=float(config["lr_weights"]), lr_arch=float(config["lr_arch"]),
                   target_macs=target, batch_size=int(config.get("batch_size", setup.train.batch_size)),
                   seed=int(config.get("seed", setup.seed)), device=device, on_epoch=on_epoch,
                   budget_kind=str(config.get("budget_loss", "log_l1")),
                   budget_weight=float(config.get("budget_weight", 0.1)))
    export = supernet.export(target_macs=target)
    final = dict(reports[-1]) if reports else {"epoch": 0, "target_macs": target}
    final.update(chains=export, es_widths=export["es_widths"], status="ok",
                 seconds=time.perf_counter() - start)
    report_with_weights(final, supernet, weights_file=WEIGHTS, files={EXPORT_FILE: export})
