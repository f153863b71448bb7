"""Search quality: fine-tuned test accuracy of each searcher's winner at an equal candidate budget.

Claim checked (issue 6): at 50% MACs on mnist5k with the demo CNN, ABC's winner is at least as
good as the best baseline searcher's. Every searcher starts from the same trained baseline
(trained once, passed as model.checkpoint), gets the same number of candidates and candidate
epochs, and its winner is fine-tuned the same way; the test split is used only for the final
numbers. Prints mean +- std over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

SEARCHERS = {
    "abc": {"searcher": "abc", "abc": {"food_number": 4, "food_limit": 3, "max_cycle": 100}},
    "random": {"searcher": "random"},
    "uniform": {"searcher": "uniform"},
    "seeded (l1)": {"searcher": "seeded", "seeds": ["global:l1"]},
    "seeded (hrank)": {"searcher": "seeded", "seeds": ["global:hrank"]},
    "tpe": {"searcher": "tpe", "params": {"tpe": {"n_startup_trials": 4}}},
    "dmcp": {"searcher": "dmcp"},
}


def config(base_ckpt: str, seed: int, search: dict, args) -> dict:
    s = {"criterion": "l1", "candidates": args.candidates, "epochs": args.search_epochs, "lr": 0.01,
         "concurrent": 2}
    s.update(search)
    return {
        "seed": seed,
        "model": {"name": "small_cnn", "checkpoint": base_ckpt},
        "data": {"name": "mnist5k", "batch_size": 64},
        "baseline": {"epochs": args.baseline_epochs, "lr": 0.2, "schedule": "cosine"},
        "budget": {"macs_ratio": 0.5},
        "search": s,
        "final": {"finetune_epochs": args.finetune_epochs, "finetune_lr": 0.01, "scratch": []},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--search-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--baseline-epochs", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="searcher rows to run")
    parser.add_argument("--out", default=None, help="keep run directories here")
    args = parser.parse_args()

    import ray
    import torch

    import searchers
    from structsearch import config as C
    from structsearch.commands import run_baseline
    from structsearch.pipeline import run_search
    from structsearch.tuning import init_ray

    rows = {k: v for k, v in SEARCHERS.items() if not args.only or k in args.only}
    rows = {k: v for k, v in rows.items() if searchers.available(v["searcher"])}
    root = Path(args.out or tempfile.mkdtemp(prefix="structsearch-quality-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}, ray {ray.__version__}")
    print(f"setup: small_cnn on mnist5k, budget 50% MACs, {args.candidates} candidates x "
          f"{args.search_epochs} epoch(s), winner fine-tuned {args.finetune_epochs} epochs at lr 0.01, "
          f"seeds 0..{args.seeds - 1}")
    base_dir = root / "baseline"
    if not (base_dir / "baseline" / "weights.pt").is_file():
        cfg = C.from_dict(config(None, 0, {"searcher": "random"}, args) | {"model": {"name": "small_cnn"}})
        run_baseline(cfg, out=str(base_dir))
    ckpt = str(base_dir / "baseline" / "weights.pt")
    base = json.loads((base_dir / "baseline" / "metrics.json").read_text())
    print(f"baseline: test {100 * base['test_acc']:.2f}%, {base['macs'] / 1e6:.2f} M MACs")
    init_ray(None)
    results: dict[str, list[dict]] = {}
    for name, search in rows.items():
        for seed in range(args.seeds):
            out = root / f"{name.replace(' ', '_').replace('(', '').replace(')', '')}-{seed}"
            if not (out / "summary.json").is_file():
                start = time.perf_counter()
                run_search(C.from_dict(config(ckpt, seed, search, args)), out=str(out), resume=out.exists())
                print(f"  {name} seed {seed}: {time.perf_counter() - start:.0f} s")
            summary = json.loads((out / "summary.json").read_text())
            results.setdefault(name, []).append(summary)
    print()
    print("| searcher | candidates | winner val acc % | fine-tuned test acc % (mean +- std) | MACs % |")
    print("|---|---|---|---|---|")
    for name, sums in results.items():
        tests = [100 * s["finetune"]["test_acc"] for s in sums]
        vals = [100 * s["winner"]["val_acc"] for s in sums]
        ratio = [100 * s["winner"]["macs_ratio"] for s in sums]
        n = statistics.mean(s["search"]["evaluated"] for s in sums)
        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        print(f"| {name} | {n:.0f} | {statistics.mean(vals):.2f} | {statistics.mean(tests):.2f} +- {sd:.2f} "
              f"| {statistics.mean(ratio):.1f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
