"""Do pruned networks really run faster? MACs ratio against measured speed-up.

For each model, a uniform width vector is projected to 50% and 25% of the baseline's MACs under
``space.round_to`` 1, 8 and auto; the pruned network and the baseline are timed interleaved
(minimum of up to 30 runs, ``structsearch.timing.speedup``) under torch and onnxruntime, with
one thread each. Prints one markdown row per (model, budget, round_to) with the target: a
speed-up of at least 0.85 x (baseline MACs / pruned MACs) for VGG-16 and ResNet-50 under both
runtimes, and at least 1.6x for ResNet-56 at 50% MACs.
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from structsearch import models
from structsearch.space import WidthSpace
from structsearch.surgery import prune
from structsearch.timing import speedup

# model -> (input shape, batch size, target kind)
MODELS = {
    "cifar_resnet56": ((3, 32, 32), 32, "resnet56"),
    "cifar_vgg16": ((3, 32, 32), 8, "ratio"),
    "cifar_mobilenet_v2": ((3, 32, 32), 32, None),
    "torchvision:resnet50": ((3, 224, 224), 1, "ratio"),
}
QUICK = {"small_cnn": ((1, 28, 28), 32, None)}


def target(kind, budget: float, macs_ratio: float) -> float | None:
    if kind == "ratio":
        return 0.85 / macs_ratio
    if kind == "resnet56" and budget == 0.5:
        return 1.6
    return None


def row(name: str, shape, batch: int, kind, budget: float, round_to, repeats: int) -> str:
    torch.manual_seed(0)
    model = models.build(name, num_classes=1000 if name.startswith("torchvision:") else 10,
                         in_channels=shape[0]).eval()
    space = WidthSpace.from_model(model, shape, round_to=round_to)
    limit = budget * space.full_macs
    widths = space.uniform(space.max_uniform_ratio(limit))
    pruned = prune(model, space, widths).eval()
    ratio = space.macs(widths) / space.full_macs
    speed = speedup(model, pruned, shape, batch_size=batch, repeats=repeats, max_seconds=20)
    at = {r["runtime"]: r["speedup"] for r in speed["runs"] if r["batch_size"] == batch}
    goal = target(kind, budget, ratio)

    def cell(runtime):
        value = at.get(runtime)
        if value is None:
            return "n/a"
        mark = "" if goal is None else (" (met)" if value >= goal else " (**missed**)")
        return f"{value:.2f}x{mark}"
    goal_text = "" if goal is None else f"{goal:.2f}x"
    return (f"| {name} | {batch} | {int(budget * 100)}% | {round_to} | {100 * ratio:.1f}% | "
            f"{1 / ratio:.2f}x | {cell('torch')} | {cell('onnxruntime')} | {goal_text} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the demo CNN only, few runs (tests)")
    ap.add_argument("--models", nargs="*", help="subset of the models")
    ap.add_argument("--round-to", nargs="*", default=["1", "8", "auto"])
    ap.add_argument("--budgets", nargs="*", type=float, default=[0.5, 0.25])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = QUICK if args.quick else {k: v for k, v in MODELS.items()
                                      if not args.models or k in args.models}
    repeats = 5 if args.quick else args.repeats
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread "
          f"per runtime, {time.strftime('%Y-%m-%d')}")
    print("| model | batch | budget | round_to | MACs kept | MACs ratio | torch speed-up | "
          "onnxruntime speed-up | target |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (shape, batch, kind) in table.items():
        for budget in args.budgets:
            for r in args.round_to:
                round_to = r if r == "auto" else int(r)
                print(row(name, shape, batch, kind, budget, round_to, repeats), flush=True)


if __name__ == "__main__":
    main()
