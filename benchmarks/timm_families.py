"""Tracing timm CNN families: groups found, groups frozen and why, trace and self-check time,
and whether random pruned models run and cost what the space says.

Per model (``timm.create_model(name, pretrained=False, num_classes=10)``, 64x64 input):
``tracing.trace`` without the self-check, then ``selfcheck.self_check`` timed on its own;
then ``--vectors`` seeded random width vectors are pruned and run on a batch of 2, and their
conv + linear MACs are compared three ways: ``space.macs``, the package's per-layer count of
one forward pass, and fvcore (``tests/counters.py``). A last line times ResNet-50 at 224x224.
Prints one markdown table (the format of benchmarks/RESULTS.md).

    PYTHONPATH=.:tests python3 benchmarks/timm_families.py [--models a,b] [--vectors 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from counters import count_macs  # noqa: E402
from structsearch import prune  # noqa: E402
from structsearch.selfcheck import _VERDICTS, self_check  # noqa: E402
from structsearch.tracing import measured_macs, reason_kind, trace  # noqa: E402

FAMILIES = [
    ("resnet10t", "residual"), ("regnetx_002", "grouped conv"),
    ("mobilenetv2_050", "depthwise"), ("mobilenetv3_small_050", "SE, hard-swish"),
    ("tinynet_e", "EfficientNet blocks"), ("lcnet_050", "depthwise + SE"),
    ("ghostnet_100", "ghost concat + slice"), ("dpn68", "dual-path concat"),
    ("rexnet_100", "slice residual"), ("densenet121", "dense concat"),
    ("cspdarknet53", "cross-stage partial"), ("res2net50_14w_8s", "hierarchical split"),
    ("mixnet_s", "mixed depthwise split"), ("hrnet_w18_small", "multi-resolution"),
    ("dla34", "tree aggregation"), ("selecsls42b", "concat"),
    ("ese_vovnet19b_dw", "OSA + eSE"), ("convnext_atto", "LayerNorm, layer scale"),
    ("nf_regnet_b0", "weight standardisation"), ("resnet50_gn", "GroupNorm"),
]


def frozen_summary(frozen) -> str:
    kinds: dict[str, int] = {}
    for _, why in frozen:
        kinds[reason_kind(why)] = kinds.get(reason_kind(why), 0) + 1
    return "; ".join(f"{n} x {k}" for k, n in kinds.items()) or "-"


def vectors_check(model, space, n: int, size: int) -> str:
    """``ok k/k`` when every random pruned model runs with (2, 10) logits and its MACs agree
    three ways; else what failed first."""
    x = torch.randn(2, 3, size, size)
    passed = 0
    for w in space.sample(np.random.default_rng(0), n):
        try:
            pruned = prune(model, space, w).eval()
            with torch.no_grad():
                out = pruned(x)
            ours = measured_macs(pruned, x[:1])[0]
            fvcore = count_macs(pruned, (3, size, size))
        except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
            return f"fails: {type(exc).__name__}"
        if tuple(out.shape) != (2, 10):
            return f"output {tuple(out.shape)}"
        if not ours == space.macs(w) == fvcore:
            return f"MACs {space.macs(w)} / {ours} / {fvcore}"
        passed += 1
    return f"ok {passed}/{n}"


def row(name: str, what: str, args) -> str:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    try:
        start = time.perf_counter()
        space = trace(model, (3, args.size, args.size), check=False, timeout_s=args.limit)
        traced = time.perf_counter() - start
        _VERDICTS.clear()
        start = time.perf_counter()
        space, _ = self_check(model, space, timeout_s=args.limit)
        checked = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001
        return f"| {name} | {what} | - | - | {type(exc).__name__}: {str(exc)[:80]} | - | - | - |"
    pruned = vectors_check(model, space, args.vectors, args.size)
    return (f"| {name} | {what} | {len(space)} | {len(space.frozen)} | "
            f"{frozen_summary(space.frozen)} | {traced:.2f} | {checked:.2f} | {pruned} |")


def resnet50_line(args) -> str:
    model = torchvision.models.resnet50().eval()
    trace(model, (3, 224, 224), check=False)  # warm-up: imports, allocator
    start = time.perf_counter()
    space = trace(model, (3, 224, 224), check=False)
    traced = time.perf_counter() - start
    _VERDICTS.clear()
    start = time.perf_counter()
    self_check(model, space)
    return (f"torchvision ResNet-50 @ 224x224: {len(space)} groups, trace {traced:.2f} s, "
            f"self-check {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(n for n, _ in FAMILIES))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--vectors", type=int, default=3)
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (one: on a shared machine two threads "
                             "waiting on each other are many times slower)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # the frozen groups are in the table
    what = dict(FAMILIES)
    print(f"{os.cpu_count()} logical cores, torch threads {args.threads}; python "
          f"{platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
          f"torchvision {torchvision.__version__}\n")
    print("| model | construct | groups | frozen | why frozen | trace s | self-check s | "
          f"pruned forward + MACs ({args.vectors} random vectors) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        print(row(name, what.get(name, ""), args), flush=True)
    print()
    print(resnet50_line(args))


if __name__ == "__main__":
    main()
