"""How well does the latency predictor (``structsearch.latency.LatencyTable``) match measured
latency? For each model: the per-group table is measured once, then random width vectors
(uniform on the grid, so from tiny to nearly full networks) are pruned and timed, and the
relative error |predicted - measured| / measured is summarised. Target (issue 17): within 10%
for 90% of the vectors. One torch thread; latency = median of ``--repeats`` runs.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from structsearch import models
from structsearch.latency import LatencyTable
from structsearch.space import WidthSpace
from structsearch.surgery import prune
from structsearch.timing import measure_latency

MODELS = {"small_cnn": (1, 28, 28), "cifar_resnet56": (3, 32, 32), "cifar_vgg16": (3, 32, 32),
          "cifar_mobilenet_v2": (3, 32, 32)}


def one_model(name: str, shape, args) -> dict:
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, in_channels=shape[0]).eval()
    space = WidthSpace.from_model(model, shape)
    start = time.perf_counter()
    table = LatencyTable.measure(model, space, batch_size=args.batch, repeats=args.repeats,
                                 calibration=args.calibration)
    table_s = time.perf_counter() - start
    vectors = space.sample(np.random.default_rng(0), args.vectors)
    errors, ratios = [], []
    for w in vectors:
        measured = measure_latency(prune(model, space, w), shape, batch_size=args.batch,
                                   repeats=args.repeats)
        predicted = table.predict(w)
        errors.append(abs(predicted - measured) / measured)
        ratios.append(predicted / measured)
    errors = np.array(errors)
    return {"model": name, "groups": len(space), "table_s": table_s,
            "within10": float((errors <= 0.10).mean()), "median": float(np.median(errors)),
            "p90": float(np.percentile(errors, 90)), "max": float(errors.max()),
            "over": float((np.array(ratios) > 1).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--vectors", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--calibration", type=int, default=0,
                    help="random vectors the table's log-space exponent is fitted on (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"batch {args.batch}, 1 torch thread, {args.vectors} random width vectors per model, "
          f"median of {args.repeats} runs each")
    print("| model | groups | table (s) | within 10% | median error | 90th pct | max | "
          "over-predicted |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = one_model(name, MODELS[name], args)
        print(f"| {name} | {r['groups']} | {r['table_s']:.0f} | {100 * r['within10']:.0f}% "
              f"{'(met)' if r['within10'] >= 0.9 else '(**missed**)'} | "
              f"{100 * r['median']:.1f}% | {100 * r['p90']:.1f}% | {100 * r['max']:.1f}% | "
              f"{100 * r['over']:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
