"""How well does each candidate fitness predict the structure's true quality?

Width vectors are sampled within [0.8, 1.0] of a MACs budget on a bundled task. For each one
the fitness options a search could use are computed (validation accuracy after k = 1, 2, 4
epochs of candidate training from the baseline's weights; adaptive-BN accuracy with no
training; the same on a validation split three times larger; the mean over two training
seeds), and its true quality: test accuracy after the final stage's fine-tune (from its
1-epoch candidate weights). Prints Kendall tau and Spearman rho between each fitness and the
true quality, with bootstrap 90% intervals over the vectors, and each option's cost in
candidate-epochs. ``--quick`` is a few vectors for the tests.
"""
from __future__ import annotations

import argparse
import warnings
import copy
import time

import numpy as np
import torch

from structsearch import criteria, data, models
from structsearch.criteria import criterion_keep
from structsearch.space import WidthSpace
from structsearch.surgery import prune
from structsearch.train import TrainSpec, evaluate, recalibrate_bn, train


def setup(args):
    torch.manual_seed(0)
    splits = data.load(data.DataSpec(name=args.task, val_fraction=0.3, seed=0))
    model = models.build(args.model, num_classes=splits.num_classes,
                         in_channels=splits.input_shape[0])
    train(model, splits.train, TrainSpec(epochs=args.baseline_epochs, lr=0.1, batch_size=64,
                                         schedule="cosine"), seed=0)
    space = WidthSpace.from_model(model, splits.input_shape)
    scores = criteria.get("l1").scores(model, space)
    # The small validation split is a third of the large one (the default 10% of the pool).
    small = splits.val.subset(len(splits.val) // 3, seed=1)
    return model.eval(), space, scores, splits, small


def one_vector(args, model, space, scores, splits, small, widths, index: int) -> dict:
    keep = criterion_keep(scores, widths)
    base = prune(model, space, widths, keep=keep)
    out = {"widths": [int(w) for w in widths]}
    bn = copy.deepcopy(base)
    recalibrate_bn(bn, splits.train, batches=50, batch_size=64, seed=index)
    out["adaptive_bn"] = evaluate(bn, small)["top1"]
    out["adaptive_bn_large_val"] = evaluate(bn, splits.val)["top1"]
    spec = TrainSpec(epochs=max(args.ks), lr=0.05, batch_size=64, schedule="constant")
    trained = copy.deepcopy(base)
    after_one = {}

    def on_epoch(epoch, metrics):
        if epoch in args.ks:
            out[f"val_k{epoch}"] = evaluate(trained, small)["top1"]
            out[f"val_k{epoch}_large_val"] = evaluate(trained, splits.val)["top1"]
        if epoch == 1:
            after_one["state"] = copy.deepcopy(trained.state_dict())
    train(trained, splits.train, spec, seed=1000 + index, on_epoch=on_epoch)
    second = copy.deepcopy(base)
    train(second, splits.train, TrainSpec(epochs=1, lr=0.05, batch_size=64, schedule="constant"),
          seed=2000 + index)
    out["val_k1_two_seeds"] = 0.5 * (out["val_k1"] + evaluate(second, small)["top1"])
    final = copy.deepcopy(base)
    final.load_state_dict(after_one["state"])
    train(final, splits.train, TrainSpec(epochs=args.finetune_epochs, lr=0.01, batch_size=64,
                                         schedule="constant"), seed=3000 + index)
    out["true"] = evaluate(final, splits.test)["top1"]
    return out


def costs(ks) -> dict[str, float]:
    """Candidate-epochs per evaluation (adaptive BN: about 50 forward batches, ~0.1 epoch)."""
    table = {"adaptive_bn": 0.1, "adaptive_bn_large_val": 0.1, "val_k1_two_seeds": 2.0}
    for k in ks:
        table[f"val_k{k}"] = float(k)
        table[f"val_k{k}_large_val"] = float(k)
    return table


def correlations(rows: list[dict], key: str, rng, n_boot: int = 1000) -> dict:
    from scipy.stats import kendalltau, spearmanr
    x = np.array([r[key] for r in rows])
    y = np.array([r["true"] for r in rows])

    def both(i):
        return (kendalltau(x[i], y[i]).statistic, spearmanr(x[i], y[i]).statistic)
    tau, rho = both(np.arange(len(rows)))
    boots = np.array([both(rng.integers(0, len(rows), len(rows))) for _ in range(n_boot)])
    lo, hi = np.nanpercentile(boots, [5, 95], axis=0)
    return {"tau": tau, "tau_ci": (lo[0], hi[0]), "rho": rho, "rho_ci": (lo[1], hi[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist5k")
    ap.add_argument("--model", default="small_cnn")
    ap.add_argument("--budget", type=float, default=0.25)
    ap.add_argument("--vectors", type=int, default=40)
    ap.add_argument("--baseline-epochs", type=int, default=4)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--ks", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--quick", action="store_true", help="6 vectors on digits, k = 1, 2")
    args = ap.parse_args()
    if args.quick:
        args.task, args.vectors, args.baseline_epochs, args.finetune_epochs = "digits", 6, 2, 1
        args.ks = [1, 2]
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message="An input array is constant")
    start = time.perf_counter()
    model, space, scores, splits, small = setup(args)
    limit = args.budget * space.full_macs
    vectors = space.sample(np.random.default_rng(0), args.vectors, (0.8 * limit, limit))
    rows = [one_vector(args, model, space, scores, splits, small, w, i)
            for i, w in enumerate(vectors)]
    rng = np.random.default_rng(0)
    print(f"{args.model} on {args.task}, {len(rows)} width vectors in [0.8, 1.0] of "
          f"{100 * args.budget:.0f}% MACs; true quality = test accuracy after a "
          f"{args.finetune_epochs}-epoch fine-tune; validation {len(small)} images (large: "
          f"{len(splits.val)}); {time.perf_counter() - start:.0f} s")
    true = [r["true"] for r in rows]
    print(f"true quality: {100 * min(true):.2f}..{100 * max(true):.2f}% "
          f"(spread {100 * np.std(true):.2f} points)")
    print("| fitness | cost (candidate-epochs) | Kendall tau [90% CI] | Spearman rho [90% CI] |")
    print("|---|---|---|---|")
    for key, cost in costs(args.ks).items():
        c = correlations(rows, key, rng)
        print(f"| {key} | {cost:g} | {c['tau']:.2f} [{c['tau_ci'][0]:.2f}, {c['tau_ci'][1]:.2f}] "
              f"| {c['rho']:.2f} [{c['rho_ci'][0]:.2f}, {c['rho_ci'][1]:.2f}] |")


if __name__ == "__main__":
    main()
