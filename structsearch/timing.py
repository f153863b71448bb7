"""Measured forward latency of a model (torch; the closed-form costs live in cost.py)."""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn


def measure_latency(model: nn.Module, input_shape, *, batch_size: int = 1, device: str = "cpu",
                    repeats: int = 20, warmup: int = 5) -> float:
    """Median forward latency in milliseconds of ``model`` on random input, in eval mode."""
    model = model.to(device).eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def speedup(baseline: nn.Module, pruned: nn.Module, input_shape, *, batch_size: int = 32,
            device: str = "cpu") -> dict:
    """Measured forward latency (ms) of ``baseline`` and ``pruned`` on ``device``: the pruned
    network is physically smaller, so it must also be faster."""
    base_ms = measure_latency(baseline, input_shape, batch_size=batch_size, device=device)
    pruned_ms = measure_latency(pruned, input_shape, batch_size=batch_size, device=device)
    return {"device": device, "batch_size": batch_size, "baseline_ms": base_ms,
            "winner_ms": pruned_ms, "speedup": base_ms / pruned_ms if pruned_ms > 0 else None}
