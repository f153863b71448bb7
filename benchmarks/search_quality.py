"""Search quality where structure matters: does a search beat the one-shot baselines?

Settings (issue 16): small_cnn on mnist5k at 10% and 25% MACs, and cifar_resnet20 with one
input channel on mnist5k at 20%. Per setting and seed one baseline is trained (seeded; its
validation split is that seed's) and shared by every searcher of that seed. Every searcher gets
the same training compute, counted in candidate-epochs (candidates x search.epochs, the
re-evaluation of the top candidates included), and its winner is fine-tuned by the same
protocol; the one-shot baselines (one uniform ratio, the criterion's global threshold) are
trained by that protocol too (a candidate's epochs from the baseline's weights, then the same
fine-tune) in the first searcher's run of each seed. The test split is touched only for the
final numbers.

Prints, per setting: each searcher's fine-tuned test accuracy (mean, standard error over
seeds), each baseline's, and the paired difference (searcher minus the best baseline of the
same seed: mean and standard error). Run directories are kept under ``--out`` and reused, so an
interrupted run continues and ``--only`` adds searchers to a finished one.

``--quick`` is a tiny version (digits, one seed, 4 candidate-epochs) that a test runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

SETTINGS = {
    "small_cnn@10%": {"model": "small_cnn", "data": "mnist5k", "macs_ratio": 0.10, "seeds": 5},
    "small_cnn@25%": {"model": "small_cnn", "data": "mnist5k", "macs_ratio": 0.25, "seeds": 5},
    "resnet20@20%": {"model": "cifar_resnet20", "data": "mnist5k", "macs_ratio": 0.20, "seeds": 3},
}
QUICK = {"small_cnn@25% (digits)": {"model": "small_cnn", "data": "digits", "macs_ratio": 0.25,
                                    "seeds": 1}}

# search sections per searcher row (candidates are set from the candidate-epoch budget)
SEARCHERS = {
    "default": {},  # whatever search.searcher defaults to
    "abc": {"searcher": "abc"},
    "random": {"searcher": "random"},
    "tpe": {"searcher": "tpe", "params": {"tpe": {"n_startup_trials": 6}}},
    "nsga2": {"searcher": "nsga2"},
    # EagleEye's protocol: many candidates scored by adaptive BN, the best few trained.
    "two-stage": {"searcher": "abc", "fitness": "adaptive_bn"},
    # The default searcher on finer width grids than `auto` (its own one-shot baselines are
    # trained on that grid too, named with the row).
    "default-round4": {"space": {"round_to": 4}},
    "default-round1": {"space": {"round_to": 1}},
    # The default searcher with its top candidates (and the one-shot structures among its
    # candidates) re-evaluated by the final fine-tune instead of more seeds.
    "default-ftreeval": {"reevaluate_by": "finetune"},
}


def config(setting: dict, seed: int, row: dict, args, *, checkpoint: str | None,
           baselines: bool) -> dict:
    search = {"criterion": "l1", "epochs": args.search_epochs, "lr": 0.02, "concurrent": 2,
              "reevaluate": args.reevaluate, "reevaluate_seeds": 1}
    search.update({k: v for k, v in row.items() if k != "space"})
    # Equal training compute: candidate-epochs = (candidates + re-evaluation trials) x epochs.
    trained = max(args.candidate_epochs // args.search_epochs - args.reevaluate, 2)
    if row.get("fitness") == "adaptive_bn":
        search.update(candidates=args.explore, train_top=trained)
    else:
        search["candidates"] = trained
    return {
        "seed": seed,
        "model": {"name": setting["model"], "checkpoint": checkpoint},
        "data": {"name": setting["data"], "batch_size": 64, "val_fraction": 0.1},
        "baseline": {"epochs": args.baseline_epochs, "lr": 0.1, "schedule": "cosine"},
        "budget": {"macs_ratio": setting["macs_ratio"]},
        "space": {"round_to": "auto", **row.get("space", {})},
        "search": search,
        "final": {"finetune_epochs": args.finetune_epochs, "finetune_lr": 0.01, "scratch": [],
                  "baselines": ["uniform", "global"] if baselines else []},
    }


def mean_se(values: list[float]) -> tuple[float, float]:
    m = statistics.mean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


def candidate_epochs(summary: dict) -> int:
    s = summary["search"]
    trained = s["evaluated"] - s.get("known", 0)
    if s.get("fitness") == "adaptive_bn":  # explored without training; the trained ones count
        trained = s.get("trained", 0)
    table = summary.get("reevaluation") or []
    repeats = sum(len(e["val_acc_repeats"]) for e in table)
    # A fine-tune re-evaluation counts its own epochs (the candidate's and the fine-tune's).
    return (trained + repeats) * s["epochs"] + sum(e.get("epochs", 0) for e in table)


def setting_tag(name: str) -> str:
    """The setting's prefix of its run directories' names ("small_cnn@10%" -> "small_cnn-10")."""
    return name.split(" ")[0].replace("@", "-").replace("%", "")


def baseline_checkpoint(name: str, setting: dict, seed: int, args, root: Path) -> str:
    """The seed's baseline weights under ``root``, trained first when missing (every searcher
    row of the seed, and headroom.py, start from it)."""
    from structsearch import config as C
    from structsearch.commands import run_baseline
    base_dir = root / f"{setting_tag(name)}-baseline-{seed}"
    if not (base_dir / "baseline" / "weights.pt").is_file():
        run_baseline(C.from_dict(config(setting, seed, {"searcher": "random"}, args,
                                        checkpoint=None, baselines=False)), out=str(base_dir))
    return str(base_dir / "baseline" / "weights.pt")


def run_setting(name: str, setting: dict, rows: dict, args, root: Path) -> dict:
    from structsearch import config as C
    from structsearch.pipeline import run_search
    results: dict[str, list[dict]] = {}
    seeds = min(setting["seeds"], args.seeds) if args.seeds else setting["seeds"]
    tag = setting_tag(name)
    for seed in range(seeds):
        ckpt = baseline_checkpoint(name, setting, seed, args, root)
        first_auto = next((n for n in rows if not _grid_of(n)), None)
        for row_name, row in rows.items():
            out = root / f"{tag}-{row_name}-{seed}"
            if not (out / "summary.json").is_file():
                start = time.perf_counter()
                # The one-shot baselines train in the first row of each grid (a row with its
                # own space is a grid of its own) and in --baselines-in's row.
                # A fine-tune re-evaluation shortlists the one-shot structures: it needs them.
                cfg = C.from_dict(config(setting, seed, row, args, checkpoint=ckpt,
                                         baselines=row_name in (first_auto, args.baselines_in)
                                         or bool(_grid_of(row_name))
                                         or row.get("reevaluate_by") == "finetune"))
                run_search(cfg, out=str(out), resume=out.exists())
                print(f"  {name} {row_name} seed {seed}: {time.perf_counter() - start:.0f} s",
                      flush=True)
            summary = json.loads((out / "summary.json").read_text())
            results.setdefault(row_name, []).append(summary)
            grid = f" ({row_name})" if _grid_of(row_name) else ""
            for key, entry in (summary.get("oneshot") or {}).items():
                shots = results.setdefault(f"one-shot {key}{grid}", [])
                if not any(e["seed"] == seed for e in shots):  # --baselines-in trains them twice
                    shots.append({"finetune": entry, "winner": entry, "seed": seed})
    return results


def _grid_of(row: str) -> str:
    """The width grid a result row ran on: "" for `auto`, else the row that overrides it."""
    if row.startswith("one-shot"):
        return row.split(" (", 1)[1].rstrip(")") if " (" in row else ""
    return row if "space" in SEARCHERS.get(row, {}) else ""


def table(name: str, results: dict) -> list[str]:
    shots = {k: v for k, v in results.items() if k.startswith("one-shot")}
    seeds = len(next(iter(shots.values()))) if shots else 0

    def best(grid=None) -> list[float]:
        pool = [v for k, v in shots.items() if grid is None or _grid_of(k) == grid]
        return [max(100 * v[i]["finetune"]["test_acc"] for v in pool) for i in range(seeds)] \
            if pool else []

    def paired(tests, base) -> str:
        if len(tests) != len(base) or not base:
            return ""
        dm, dse = mean_se([t - b for t, b in zip(tests, base)])
        return f"{dm:+.2f} +- {dse:.2f}"

    def strongest(grid: str) -> tuple[str, list[float]]:
        """The one-shot method of ``grid`` with the highest mean (chosen once, not per seed)."""
        pool = [k for k in shots if _grid_of(k) == grid]
        key = max(pool, key=lambda k: statistics.mean(v["finetune"]["test_acc"]
                                                     for v in shots[k]), default="")
        return key, [100 * v["finetune"]["test_acc"] for v in shots.get(key, [])]

    several = len({_grid_of(k) for k in shots}) > 1
    tops = {g: strongest(g) for g in {_grid_of(k) for k in shots}}
    lines = [f"### {name}", "",
             "Best one-shot: the better baseline of each seed by its test accuracy (an upper "
             "bound no user gets). Strongest: the one-shot method with the best mean on the "
             "row's own grid (" + "; ".join(f"{g or 'auto'}: {k}" for g, (k, _) in tops.items())
             + ").", "",
             "| structure | runs | candidate-epochs | winner MACs % | fine-tuned test % per seed "
             "| mean +- SE | minus best one-shot, paired (mean +- SE) | minus the strongest "
             "one-shot method, paired |" + (" minus best one-shot of its grid, paired |"
                                             if several else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if several else "")]
    for row, sums in results.items():
        tests = [100 * s["finetune"]["test_acc"] for s in sums]
        m, se = mean_se(tests)
        ratio = statistics.mean(100 * s["winner"]["macs_ratio"] for s in sums)
        cost = "0" if row.startswith("one-shot") else \
            f"{statistics.mean(candidate_epochs(s) for s in sums):.0f}"
        own = f" {paired(tests, best(_grid_of(row)))} |" if several else ""
        lines.append(f"| {row} | {len(tests)} | {cost} | {ratio:.1f} | "
                     f"{' '.join(f'{t:.1f}' for t in tests)} | {m:.2f} +- {se:.2f} | "
                     f"{paired(tests, best())} | "
                     f"{paired(tests, tops.get(_grid_of(row), ('', []))[1])} |{own}")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="*", help=f"subset of {list(SETTINGS)}".replace("%", "%%"))
    parser.add_argument("--only", nargs="*", help=f"searcher rows (default: default abc random); "
                                                  f"any of {list(SEARCHERS)}")
    parser.add_argument("--seeds", type=int, default=0, help="cap the seeds of every setting")
    parser.add_argument("--candidate-epochs", type=int, default=24)
    parser.add_argument("--search-epochs", type=int, default=1)
    parser.add_argument("--reevaluate", type=int, default=3)
    parser.add_argument("--explore", type=int, default=200, help="two-stage: candidates scored "
                                                                 "by adaptive BN")
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--baseline-epochs", type=int, default=8)
    parser.add_argument("--baselines-in", default="", help="train the one-shot baselines in this "
                                                           "searcher row's runs too")
    parser.add_argument("--quick", action="store_true", help="tiny run for the tests")
    parser.add_argument("--out", default=None, help="keep run directories here (reused)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    settings = SETTINGS
    if args.quick:
        settings = QUICK
        args.candidate_epochs, args.reevaluate, args.explore = 4, 2, 6
        args.finetune_epochs, args.baseline_epochs = 1, 2
    elif args.settings:
        settings = {k: v for k, v in SETTINGS.items() if k in args.settings}
    names = args.only or (["default"] if args.quick else ["default", "abc", "random"])
    import searchers
    import torch
    from structsearch import config as C
    rows = {}
    for n in names:
        if n not in SEARCHERS:
            parser.error(f"unknown searcher row {n!r}; choose from {list(SEARCHERS)}")
        row = SEARCHERS[n]
        if "searcher" not in row or searchers.available(row["searcher"]):
            rows[n] = row
    default = C.SearchConfig().searcher
    if "default" in rows and default in rows:  # the same runs twice: keep one, named both
        rows.pop(default)
    root = Path(args.out or tempfile.mkdtemp(prefix="structsearch-quality-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}; commit {commit}; default searcher: {default}")
    print(f"protocol: {args.candidate_epochs} candidate-epochs per searcher ({args.search_epochs} "
          f"epoch(s) per candidate, top {args.reevaluate} re-evaluated once), winner and one-shot "
          f"baselines fine-tuned {args.finetune_epochs} epochs at lr 0.01; baseline "
          f"{args.baseline_epochs} epochs per seed; run directories in {root}", flush=True)
    from structsearch.tuning import init_ray
    init_ray(None)
    everything, lines = {}, []
    for name, setting in settings.items():
        results = run_setting(name, setting, rows, args, root)
        everything[name] = {row: [{"test_acc": s["finetune"]["test_acc"],
                                   "macs_ratio": s["winner"]["macs_ratio"],
                                   "candidate_epochs": 0 if row.startswith("one-shot")
                                   else candidate_epochs(s)} for s in sums]
                            for row, sums in results.items()}
        section = table(name, results)
        lines += section
        print("\n".join(section), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
