"""How fast the width space answers a searcher, and how fast surgery cuts a network.

Claims (targets from the design): ``space.macs`` evaluates >= 1e5 width vectors per second, both
batched and one vector per call; ``prune`` cuts ResNet-50 (224x224, 1000 classes) in <= 0.5 s.
Figures are medians over ``--repeats`` runs on CPU, printed with the hardware and versions.

    PYTHONPATH=. python3 benchmarks/space_speed.py [--repeats 5] [--batch 10000] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch_pruning
import torchvision

from structsearch import WidthSpace, models, prune
from structsearch.surgery import _one_intra_op_thread


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost_speed(name: str, size: int, args) -> tuple[WidthSpace, torch.nn.Module]:
    model = models.build(name, num_classes=1000 if name.startswith("torchvision:") else 10)
    start = time.perf_counter()
    space = WidthSpace.from_model(model, (3, size, size))
    trace = time.perf_counter() - start
    rng = np.random.default_rng(0)
    batch = space.sample(rng, args.batch)
    batched = median_seconds(lambda: space.macs(batch), args.repeats)
    singles = [list(map(int, w)) for w in batch[: args.single]]  # lists, as a searcher holds them

    def one_by_one():
        for w in singles:
            space.macs(w)

    single = median_seconds(one_by_one, args.repeats)
    print(f"{name} @ {size}x{size}: {len(space)} groups, {space.full_macs / 1e6:.2f} M MACs, "
          f"trace {trace:.2f} s")
    print(f"  space.macs batched ({args.batch} vectors/call): "
          f"{args.batch / batched:,.0f} vectors/s")
    print(f"  space.macs one vector/call ({args.single} calls): "
          f"{args.single / single:,.0f} vectors/s")
    return space, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
    parser.add_argument("--batch", type=int, default=10_000, help="width vectors per batched call")
    parser.add_argument("--single", type=int, default=2_000, help="one-vector calls per timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores, torch threads {args.threads})")
    print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, numpy {np.__version__}, "
          f"torch-pruning {torch_pruning.__version__}")
    print(f"repeats: {args.repeats} (median)\n")

    cost_speed("cifar_resnet56", 32, args)
    space, model = cost_speed("torchvision:resnet50", 224, args)

    rng = np.random.default_rng(1)
    vectors = [space.uniform(1.0), space.uniform(0.5)] + list(space.sample(rng, args.repeats))
    for label, w in [("full widths", vectors[0]), ("uniform 0.5", vectors[1])]:
        seconds = median_seconds(lambda: prune(model, space, w), args.repeats)
        print(f"prune ResNet-50 @ 224, {label}: {seconds:.3f} s")
    times = []
    for w in vectors[2:]:
        start = time.perf_counter()
        pruned = prune(model, space, w)
        times.append(time.perf_counter() - start)
    # The floor for any surgery that copies its weights: one copy of the pruned parameters, made
    # with one intra-op thread as prune makes it.
    params = [p.detach() for p in pruned.parameters()]
    with _one_intra_op_thread():
        floor = median_seconds(lambda: [p.clone() for p in params], args.repeats)
    print(f"prune ResNet-50 @ 224, {args.repeats} random vectors: "
          f"median {statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}); "
          f"cloning the last result's {sum(p.numel() for p in params) / 1e6:.1f} M params alone takes {floor:.3f} s")


if __name__ == "__main__":
    main()
