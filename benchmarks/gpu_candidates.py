"""Candidate training speed on a GPU: the device-resident fast path vs a plain DataLoader path,
and aggregate throughput of 1, 2, 4, 8 candidates packed on one GPU.

Targets (issue 8, H100): a CIFAR ResNet-56 epoch (50k images) <= 1.0 s on the fast path; 4
packed trials >= 3x the throughput of one. Synthetic CIFAR-shaped data (uint8), so no dataset
is needed. ``--tiny`` runs a few hundred images on any device (the test suite uses it on CPU).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import threading
import time

import numpy as np
import torch


def synthetic_split(n: int, device: str, seed: int = 0):
    from structsearch.data import Split
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    return Split(x=x, y=y, mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010),
                 source_indices=np.arange(n), pool="train", crop_pad=4, flip=True,
                 augment_default=True).to(device)


def fast_epoch(model_name: str, n: int, device: str, batch: int) -> float:
    """Seconds for one training epoch with data on the device (our engine: on-device crop/flip,
    bf16 autocast + channels_last on CUDA). The first epoch warms cuDNN and is not timed."""
    from structsearch import models
    from structsearch.train import TrainSpec, train
    split = synthetic_split(n, device)
    model = models.build(model_name)
    spec = TrainSpec(epochs=1, lr=0.05, batch_size=batch)
    train(model, split, spec, device=device, seed=0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    train(model, split, spec, device=device, seed=1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def plain_epoch(model_name: str, n: int, device: str, batch: int, workers: int) -> float:
    """Seconds for one epoch the usual way: CPU tensors, a DataLoader with workers doing the
    crop/flip, batches copied to the device, fp32."""
    from structsearch import models
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1) * 255
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(3, 1, 1) * 255

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, i):
            img = torch.nn.functional.pad(x[i].float(), (4, 4, 4, 4))
            a, b = np.random.randint(0, 9, 2)
            img = img[:, a:a + 32, b:b + 32]
            if np.random.rand() < 0.5:
                img = img.flip(2)
            return (img - mean) / std, y[i]

    loader = torch.utils.data.DataLoader(DS(), batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True, pin_memory=device.startswith("cuda"))
    model = models.build(model_name).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    start = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _worker(args):
    model_name, n, device, batch, barrier, timeout = args
    if device == "cpu":
        torch.set_num_threads(1)  # packed CPU trials get one core each, as Ray gives them
    barrier.wait(timeout)  # a sibling that never starts breaks the barrier instead of hanging
    return fast_epoch(model_name, n, device, batch)


def packed(model_name: str, n: int, device: str, batch: int, k: int, timeout: float) -> float:
    """Aggregate images/s of ``k`` concurrent candidate processes sharing one device; a
    worker that dies or stalls (out of memory) ends it after ``timeout`` seconds, not never."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(k)
        start = time.perf_counter()
        with ctx.Pool(k) as pool:
            job = pool.map_async(_worker, [(model_name, n, device, batch, barrier, timeout)] * k)
            try:
                times = job.get(timeout)
            except (mp.TimeoutError, threading.BrokenBarrierError):  # a sibling never came
                raise SystemExit(f"gpu_candidates: {k} packed trials of {model_name} did not "
                                 f"finish in {timeout:.0f} s (a worker died or stalled); raise "
                                 f"--timeout or pack fewer") from None
        wall = time.perf_counter() - start
    return k * n / max(times) if times else 0.0, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--models", nargs="*", default=["cifar_resnet56", "cifar_vgg16"])
    parser.add_argument("--packed", nargs="*", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--tiny", action="store_true", help="a few hundred images, 1-2 packed trials")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one packed measurement may take")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.batch, args.packed, args.workers = 128, 32, [1, 2], 0
        args.models = ["cifar_resnet20"]
    if args.device == "cpu":
        # One thread per trial: two spinning threads on a busy core slow torch down tenfold.
        torch.set_num_threads(1)
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else (platform.processor() or platform.machine())
    print(f"device: {name}; torch {torch.__version__}; cpu cores {os.cpu_count()}; "
          f"images {args.images}, batch {args.batch}, DataLoader workers {args.workers}")
    figures = {"device": name, "torch": torch.__version__, "images": args.images, "models": {}}
    for model_name in args.models:
        fast = fast_epoch(model_name, args.images, dev, args.batch)
        plain = plain_epoch(model_name, args.images, dev, args.batch, args.workers)
        print(f"{model_name}: epoch fast path {fast:.2f} s ({args.images / fast:,.0f} img/s), "
              f"plain DataLoader {plain:.2f} s ({args.images / plain:,.0f} img/s), speed-up {plain / fast:.1f}x")
        entry = {"fast_s": fast, "plain_s": plain, "packed": {}}
        base = None
        for k in args.packed:
            rate, wall = packed(model_name, args.images, dev, args.batch, k, args.timeout)
            base = base or rate
            entry["packed"][k] = rate
            print(f"  {k} packed: {rate:,.0f} img/s aggregate ({rate / base:.2f}x one trial)")
        figures["models"][model_name] = entry
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=2)


if __name__ == "__main__":
    main()
