"""Measured forward latency of a model (torch; the closed-form costs live in cost.py).

A speed-up is a ratio of two noisy timings, so :func:`speedup` times the baseline and the pruned
network interleaved (A B A B ..., so a busy moment slows both), after a warm-up, and keeps the
minimum of many runs (the run least disturbed by the rest of the machine), under torch and,
when installed (the ``onnx`` extra), onnxruntime, at batch 1 and at the training batch.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

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


def interleaved(runners: dict, *, repeats: int = 30, warmup: int = 3,
                max_seconds: float = 10.0) -> dict[str, float]:
    """Minimum wall time in ms of each zero-argument callable in ``runners``, timed in turn
    (A B A B ...) after ``warmup`` rounds; stops early after ``max_seconds`` (at least 5
    rounds)."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    best = {name: float("inf") for name in runners}
    start = time.perf_counter()
    for i in range(repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
        if i >= 4 and time.perf_counter() - start > max_seconds:
            break
    return {name: 1000.0 * t for name, t in best.items()}


def torch_runner(model: nn.Module, x: torch.Tensor, device: str):
    """A zero-argument forward of ``model`` on ``x`` (synchronised on CUDA), for :func:`interleaved`."""
    def run():
        with torch.inference_mode():
            model(x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return run


def _onnx_runners(models: dict[str, nn.Module], input_shape, batch_sizes, folder: Path):
    """Per batch size, onnxruntime runners for each model (one thread per torch thread); None
    when onnxruntime or onnx is not installed."""
    try:
        import onnxruntime as ort
        from .surgery import export_onnx
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    sessions = {}
    for name, model in models.items():
        path = export_onnx(model, input_shape, folder / f"{name}.onnx")
        sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    out = {}
    for b in batch_sizes:
        x = np.random.default_rng(0).standard_normal((b, *input_shape)).astype(np.float32)
        out[b] = {name: (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x}))
                  for name, s in sessions.items()}
    return out


def speedup(baseline: nn.Module, pruned: nn.Module, input_shape, *, batch_size: int = 32,
            device: str = "cpu", repeats: int = 30, max_seconds: float = 5.0,
            runtimes=("torch", "onnxruntime")) -> dict:
    """Measured forward latency (ms) of ``baseline`` and ``pruned``: interleaved, minimum of
    up to ``repeats`` runs, at batch 1 and ``batch_size``, under torch on ``device`` and (on
    CPU, when installed) onnxruntime. ``runs`` lists every measurement; the top-level
    ``baseline_ms`` / ``winner_ms`` / ``speedup`` are torch's at ``batch_size``."""
    models = {"baseline": baseline.to(device).eval(), "winner": pruned.to(device).eval()}
    sizes = sorted({1, int(batch_size)})
    runs = []
    for b in sizes:
        x = torch.randn(b, *input_shape, device=device)
        ms = interleaved({k: torch_runner(m, x, device) for k, m in models.items()},
                         repeats=repeats, max_seconds=max_seconds)
        runs.append(_row("torch", b, ms))
    if "onnxruntime" in runtimes and device == "cpu":
        with tempfile.TemporaryDirectory() as folder:
            onnx = _onnx_runners(models, input_shape, sizes, Path(folder))
            for b in sizes if onnx else ():
                runs.append(_row("onnxruntime", b, interleaved(onnx[b], repeats=repeats,
                                                               max_seconds=max_seconds)))
    head = next(r for r in runs if r["runtime"] == "torch" and r["batch_size"] == sizes[-1])
    return {"device": device, "batch_size": sizes[-1], "threads": torch.get_num_threads(),
            "method": f"interleaved, minimum of up to {repeats} runs",
            "baseline_ms": head["baseline_ms"], "winner_ms": head["winner_ms"],
            "speedup": head["speedup"], "runs": runs}


def _row(runtime: str, batch: int, ms: dict) -> dict:
    return {"runtime": runtime, "batch_size": batch, "baseline_ms": ms["baseline"],
            "winner_ms": ms["winner"],
            "speedup": ms["baseline"] / ms["winner"] if ms["winner"] > 0 else None}
