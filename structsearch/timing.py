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
