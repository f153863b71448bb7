"""Trial checkpoints: the one way a trainable saves its trained weights with its last report and
the driver reads them back (a plain state_dict, loaded with ``weights_only=True``)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from ray import tune

from structsearch.surgery import WEIGHTS_FILE, load_state_dict_file


def report_with_weights(metrics: dict, model: torch.nn.Module, *, weights_file: str = WEIGHTS_FILE,
                        files: dict | None = None) -> None:
    """``tune.report(metrics)`` with a checkpoint holding ``model``'s state_dict (on the CPU)
    and ``files`` (name -> JSON-able data) beside it."""
    metrics = dict(metrics, node=node_id())
    with tempfile.TemporaryDirectory() as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(tmp, weights_file))
        for name, data in (files or {}).items():
            Path(tmp, name).write_text(json.dumps(data))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def node_id() -> str:
    """The Ray node this trial runs on (the first 12 hex digits of its node ID), so a cluster
    run's candidates.csv says where each candidate trained."""
    try:
        import ray
        return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001 - outside Ray (direct calls in tests and benchmarks)
        return ""


def checkpoint_weights(checkpoint, *, weights_file: str = WEIGHTS_FILE) -> dict:
    """The state_dict saved by :func:`report_with_weights` in ``checkpoint`` (a
    ``tune.Checkpoint`` or a checkpoint path/URI)."""
    if not hasattr(checkpoint, "as_directory"):
        checkpoint = tune.Checkpoint(str(checkpoint))
    with checkpoint.as_directory() as ckpt_dir:
        return load_state_dict_file(Path(ckpt_dir) / weights_file)
