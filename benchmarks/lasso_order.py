"""He et al.'s two selection orders side by side: ``joint`` (every group on the unpruned
baseline) and ``sequential`` (the paper's: each group on the network its predecessors left).

For each baseline seed a model is trained on a bundled task; at each uniform ratio both orders
choose the channels, the consumers are refit by least squares (``surgery.reconstruct``), and
the script prints the held-out relative output error ||f - f_pruned||^2 / ||f||^2 of the logits,
the validation accuracy without any fine-tuning, and the selection time. Mean and spread over
seeds; the paired difference is sequential minus joint.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from structsearch import criteria, data, models
from structsearch.criteria.sequential import sequential_keep
from structsearch.space import WidthSpace
from structsearch.surgery import output_error, prune, reconstruct
from structsearch.train import TrainSpec, evaluate, train


def trained(task: str, model_name: str, seed: int, epochs: int):
    torch.manual_seed(seed)
    splits = data.load(data.DataSpec(name=task, val_fraction=0.2, seed=seed))
    model = models.build(model_name, num_classes=splits.num_classes,
                         in_channels=splits.input_shape[0])
    train(model, splits.train, TrainSpec(epochs=epochs, lr=0.05, batch_size=64), seed=seed)
    space = WidthSpace.from_model(model, splits.input_shape)
    batches = list(splits.train.subset(640, seed=seed).batches(128, shuffle=False, augment=False))
    return model.eval(), space, splits, batches


def one_seed(args, seed: int) -> dict:
    model, space, splits, batches = trained(args.task, args.model, seed, args.epochs)
    lasso = criteria.get("lasso")
    scores = lasso.scores(model, space, batches)
    start = time.perf_counter()
    state = lasso.selection_state(model, space, batches)
    grams_s = time.perf_counter() - start
    rows = {}
    for ratio in args.ratios:
        widths = space.uniform(ratio)
        for order in ("joint", "sequential"):
            start = time.perf_counter()
            keep = lasso.select(state, scores, widths) if order == "joint" else \
                sequential_keep(model, space, widths, batches, scores=scores)
            seconds = time.perf_counter() - start
            pruned = prune(model, space, widths, keep=keep)
            reconstruct(pruned, model, space, keep, batches, seed=seed)
            held_out = splits.val.batches(256, shuffle=False, augment=False)
            rows[(ratio, order)] = {"error": output_error(model, pruned, held_out),
                                    "acc": 100 * evaluate(pruned, splits.val)["top1"],
                                    "seconds": seconds}
    rows["grams_s"] = grams_s
    return rows


def spread(values) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} +- {sd:.2g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist5k")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.6, 0.4, 0.25])
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = [one_seed(args, s) for s in range(args.seeds)]
    print(f"{args.model} on {args.task}, {args.epochs} baseline epochs, seeds 0-{args.seeds - 1}; "
          f"joint Grams once per run: {spread([r['grams_s'] for r in results])} s")
    print("| ratio | order | held-out output error | val acc % (no fine-tune) | selection s |")
    print("|---|---|---|---|---|")
    for ratio in args.ratios:
        for order in ("joint", "sequential"):
            rs = [r[(ratio, order)] for r in results]
            print(f"| {ratio} | {order} | {spread([x['error'] for x in rs])} | "
                  f"{spread([x['acc'] for x in rs])} | {spread([x['seconds'] for x in rs])} |")
        diff = [r[(ratio, "sequential")]["acc"] - r[(ratio, "joint")]["acc"] for r in results]
        err = [r[(ratio, "sequential")]["error"] - r[(ratio, "joint")]["error"] for r in results]
        print(f"| {ratio} | sequential - joint | {spread(err)} | {spread(diff)} | |")


if __name__ == "__main__":
    main()
