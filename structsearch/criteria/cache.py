"""Score cache: a search computes each criterion's scores of one set of weights once.

Entries are ``.npz`` files (plain arrays, read with ``allow_pickle=False``) named after the
criterion and a SHA-1 over the model's state_dict bytes, the criterion's name and parameters,
the space's groups and an optional data key. Writes go to a temporary file and are renamed, so
concurrent trials never read a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..space import WidthSpace
from .base import Criterion


def state_hash(model: nn.Module) -> str:
    """SHA-1 (hex) of every state_dict entry's name, dtype, shape and raw bytes."""
    digest = hashlib.sha1()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Reinterpreting as bytes covers every dtype (bf16 has no numpy equivalent).
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(criterion: Criterion, model: nn.Module, space: WidthSpace,
              data_key: str | None = None) -> str:
    """The cache key of ``criterion``'s scores of ``model`` over ``space``."""
    params = criterion.params() if hasattr(criterion, "params") else {}
    parts = {
        "weights": state_hash(model),
        "criterion": criterion.name,
        "params": params,
        "groups": [[g.name, g.width] for g in space.groups],
        "data": data_key,
    }
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_scores(criterion: Criterion, model: nn.Module, space: WidthSpace, batches,
                  cache_dir, *, data_key: str | None = None) -> list[np.ndarray]:
    """``criterion.scores(model, space, batches)``, read from / written to ``cache_dir``.

    ``data_key`` names the data the batches came from (e.g. dataset, split seed and batch
    size) for data-driven criteria; weights and criterion parameters are always in the key.
    """
    cache_dir = Path(cache_dir)
    key = cache_key(criterion, model, space, data_key)
    path = cache_dir / f"{criterion.name}-{key[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) == key:
                    return [data[f"group_{i}"] for i in range(len(space.groups))]
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign entry: recompute and overwrite
    scores = criterion.scores(model, space, batches)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), **{f"group_{i}": np.asarray(s, dtype=np.float64)
                                              for i, s in enumerate(scores)})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return scores
