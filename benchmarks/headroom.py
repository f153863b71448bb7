"""Headroom: could any structure on the width grid beat the one-shot baselines?

search_quality.py measures what a searcher finds. This measures what there is to find: every
width vector of the space's grid whose cost lies within [--low, 1.0] of the budget (a seeded
sample of --max-vectors when there are more; the one-shot structures always included) is
trained by the exact protocol the final stage gives a winner and the one-shot baselines
(the run's criterion cuts it from the baseline, one candidate training, then the fine-tune;
``trainables.final.final_run``), under each seed's own baseline, split and training seeds.
A searched winner with the same widths gets the same test accuracy, to the image, so the table
is the ceiling of every searcher on that grid and protocol.

Prints, per setting: each structure's fine-tuned validation and test accuracy (mean and
standard error over seeds) and its paired difference to the strongest one-shot method (the
one-shot structure with the best mean test accuracy); then three ceilings:

* ``picked by mean validation``: the structure with the best mean fine-tuned validation
  accuracy over the seeds (test untouched by the choice);
* ``picked per seed by validation``: in each seed the structure with the best fine-tuned
  validation accuracy, what a searcher that fine-tuned every vector and chose on validation
  would ship;
* ``picked by mean test``: an optimistic bound (chosen on the numbers it is judged by).

The baselines are search_quality.py's (same settings, seeds, directory names), so the two
scripts share ``--out``; results are cached per seed (``--out``), so an interrupted run
continues. ``--quick`` is a tiny run (digits, one seed, a few vectors) that a test exercises.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality as sq  # noqa: E402  (settings, configs and baselines are shared)

ENUMERATE_LIMIT = 2_000_000  # grids with more vectors are sampled, not enumerated


def near_budget(space, cost, limit: float, low: float, cap: int, rng,
                always: list[list[int]]) -> list[list[int]]:
    """Every grid vector costing within [low * limit, limit] (a seeded sample of ``cap`` when
    there are more), plus ``always``, in a fixed order without repeats."""
    grids = [space.grid(i) for i in range(len(space))]
    total = int(np.prod([len(g) for g in grids], dtype=np.float64))
    if total <= ENUMERATE_LIMIT:
        pool = [list(map(int, w)) for w in itertools.product(*grids)
                if low * limit <= cost(list(w)) <= limit]
    else:
        pool = [list(map(int, w)) for w in space.sample(rng, 4 * cap, (low * limit, limit))]
    if len(pool) > cap:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), cap, replace=False))]
    out: list[list[int]] = []
    for w in [list(map(int, a)) for a in always] + pool:
        if w not in out:
            out.append(w)
    return out


def key_of(widths) -> str:
    """A width vector as the key of the results ("8x8x16x32")."""
    return "x".join(map(str, widths))


def prepare_seed(name: str, setting: dict, seed: int, row: dict, args, root: Path):
    """Everything a final run needs under the seed's baseline (search_quality's, trained if
    missing): (prepared run, trial setup, baseline state, the final stage's one-shot runs by
    name, the run directory)."""
    from structsearch import config as C
    from structsearch.finalruns import oneshot_runs
    from structsearch.needs import criterion_scores
    from structsearch.pipeline import stage_baseline, trial_setup
    from structsearch.preflight import prepare
    ckpt = sq.baseline_checkpoint(name, setting, seed, args, root)
    cfg = C.from_dict(sq.config(setting, seed, row, args, checkpoint=ckpt, baselines=True))
    run_dir = root / f"{sq.setting_tag(name)}-headroom{args.grid_tag}-{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    p = prepare(cfg, run_dir)
    baseline = stage_baseline(p)
    setup = trial_setup(p, criterion_scores(p, cfg.search.criterion), baseline)
    state = {k: v.detach().cpu() for k, v in p.model.state_dict().items()}
    return p, setup, state, {r["name"]: r for r in oneshot_runs(p)}, run_dir


_WORKER: dict = {}


def _worker_init(setup, state, threads: int) -> None:
    """A worker process set up as a Tune trial is: its thread count, the data loaded from the
    setup's spec (``trainables.common.load_splits``)."""
    import torch

    from trainables.common import load_splits
    torch.set_num_threads(threads)
    _WORKER.update(setup=setup, state=state, splits=load_splits(setup.data_spec, "cpu"))


def _train_one(run: dict) -> tuple[dict, float]:
    """One final-stage run (a one-shot run of ``oneshot_runs`` with other widths)."""
    from trainables.final import final_run
    start = time.perf_counter()
    metrics, _ = final_run(run, _WORKER["setup"], _WORKER["state"], None, _WORKER["splits"], "cpu")
    return metrics, time.perf_counter() - start


def train_vectors(p, setup, state, vectors, template: dict, cache: Path, args) -> dict:
    """Fine-tuned val/test accuracy per vector (by :func:`key_of`), each trained as the
    one-shot run ``template`` with its widths, cached in ``cache``. ``args.workers`` processes
    of ``args.threads`` threads each (a search's trials get one CPU, so one thread: the same
    arithmetic, the same accuracies)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    done = json.loads(cache.read_text()) if cache.is_file() else {}
    todo = [w for w in vectors if key_of(w) not in done]
    if not todo:
        return done
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_init,
                             initargs=(setup, state, args.threads)) as pool:
        jobs = {pool.submit(_train_one, dict(template, widths=w)): w for w in todo}
        for n, job in enumerate(as_completed(jobs), 1):
            w, (metrics, seconds) = jobs[job], job.result()
            done[key_of(w)] = {"val_acc": metrics["val_acc"], "test_acc": metrics["test_acc"],
                               "macs_ratio": float(p.space.macs(w)) / p.space.full_macs}
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1))
            os.replace(tmp, cache)
            print(f"    {n}/{len(todo)} {w}: val {100 * metrics['val_acc']:.2f}% test "
                  f"{100 * metrics['test_acc']:.2f}% ({seconds:.0f} s)", flush=True)
    return done


def ceilings(per_seed: list[dict], shots: list[dict]) -> tuple[list[str], str]:
    """The table rows and the ceiling lines. ``per_seed[i]`` maps widths key -> metrics for
    seed i (the keys every seed trained); ``shots[i]`` maps one-shot name -> widths key."""
    keys = [k for k in per_seed[0] if all(k in s for s in per_seed)]

    def vals(key: str, metric: str) -> list[float]:
        return [100 * s[key][metric] for s in per_seed]

    def paired(xs: list[float], ys: list[float]) -> str:
        m, se = sq.mean_se([x - y for x, y in zip(xs, ys)])
        return f"{m:+.2f} +- {se:.2f}"

    names = list(shots[0])
    shot_tests = {n: [100 * per_seed[i][shots[i][n]]["test_acc"] for i in range(len(per_seed))]
                  for n in names}
    strongest = max(names, key=lambda n: statistics.mean(shot_tests[n]))
    ref = shot_tests[strongest]
    per_seed_best_shot = [max(shot_tests[n][i] for n in names) for i in range(len(per_seed))]
    label = {k: ", ".join(f"one-shot {n}" for n in names
                          if all(shots[i][n] == k for i in range(len(per_seed)))) for k in keys}
    order = sorted(keys, key=lambda k: -statistics.mean(vals(k, "val_acc")))
    lines = ["| widths | MACs % | fine-tuned val % (mean) | fine-tuned test % (mean +- SE) | "
             f"minus {strongest}, paired |", "|---|---|---|---|---|"]
    for k in order:
        m, se = sq.mean_se(vals(k, "test_acc"))
        lines.append(f"| {k.replace('x', ' ')}{' (' + label[k] + ')' if label[k] else ''} | "
                     f"{100 * per_seed[0][k]['macs_ratio']:.1f} | "
                     f"{statistics.mean(vals(k, 'val_acc')):.2f} | {m:.2f} +- {se:.2f} | "
                     f"{paired(vals(k, 'test_acc'), ref)} |")
    by_val = order[0]
    by_test = max(keys, key=lambda k: statistics.mean(vals(k, "test_acc")))
    # each seed chooses among everything it trained (the common vectors and its own one-shots)
    seed_pick = [max(s, key=lambda k: s[k]["val_acc"]) for s in per_seed]
    seed_tests = [100 * per_seed[i][k]["test_acc"] for i, k in enumerate(seed_pick)]
    beat = sum(statistics.mean(vals(k, "test_acc")) >= statistics.mean(ref) + 0.5 for k in keys)
    text = "\n".join([
        f"strongest one-shot method: {strongest} ({statistics.mean(ref):.2f}% mean test)",
        f"picked by mean validation: {by_val.replace('x', ' ')}, minus strongest "
        f"{paired(vals(by_val, 'test_acc'), ref)}, minus per-seed best one-shot "
        f"{paired(vals(by_val, 'test_acc'), per_seed_best_shot)}",
        f"picked per seed by validation: {' | '.join(k.replace('x', ' ') for k in seed_pick)}, "
        f"minus strongest {paired(seed_tests, ref)}, minus per-seed best one-shot "
        f"{paired(seed_tests, per_seed_best_shot)}",
        f"picked by mean test (optimistic): {by_test.replace('x', ' ')}, minus strongest "
        f"{paired(vals(by_test, 'test_acc'), ref)}",
        f"structures whose mean test is >= the strongest one-shot's + 0.5: {beat} of {len(keys)}"])
    return lines, text


def run_setting(name: str, setting: dict, args, root: Path) -> tuple[list[str], str]:
    seeds = min(setting["seeds"], args.seeds) if args.seeds else setting["seeds"]
    row = {"space": {"round_to": args.round_to}} if args.round_to != "auto" else {}
    per_seed, shots, vectors = [], [], None
    for seed in range(seeds):
        p, setup, state, runs, run_dir = prepare_seed(name, setting, seed, row, args, root)
        shot = {n: [int(w) for w in r["widths"]] for n, r in runs.items()}
        if vectors is None:  # one set of vectors for every seed (the grid does not change)
            rng = np.random.default_rng(args.vector_seed)
            vectors = near_budget(p.space, p.view.cost, p.budget.limit, args.low,
                                  args.max_vectors, rng, list(shot.values()))
            print(f"  {name}: {len(vectors)} vectors within [{args.low}, 1.0] of the budget "
                  f"(grid {args.round_to}), {seeds} seed(s)", flush=True)
        todo = vectors + [w for w in shot.values() if w not in vectors]  # a seed's own shots
        print(f"  seed {seed}: one-shot {shot}", flush=True)
        per_seed.append(train_vectors(p, setup, state, todo, next(iter(runs.values())),
                                      run_dir / "headroom.json", args))
        shots.append({n: key_of(w) for n, w in shot.items()})
    return ceilings(per_seed, shots)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="*", help=f"subset of {list(sq.SETTINGS)}".replace("%", "%%"))
    ap.add_argument("--seeds", type=int, default=0, help="cap the seeds of every setting")
    ap.add_argument("--low", type=float, default=0.9, help="lowest cost, as a share of the budget")
    ap.add_argument("--max-vectors", type=int, default=30)
    ap.add_argument("--vector-seed", type=int, default=0)
    ap.add_argument("--round-to", default="auto", help="the width grid (space.round_to)")
    ap.add_argument("--search-epochs", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=12)
    ap.add_argument("--baseline-epochs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="vectors trained at once")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (a "
                                                            "search's trial: 1 per CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny run for the tests")
    ap.add_argument("--out", default=None, help="keep run directories here (search_quality's "
                                                "--out shares its baselines)")
    args = ap.parse_args(argv)
    # search_quality.config() reads these; headroom trains no search
    args.candidate_epochs, args.reevaluate, args.explore = 24, 3, 200
    if args.round_to != "auto":
        args.round_to = int(args.round_to)
    args.grid_tag = "" if args.round_to == "auto" else f"-round{args.round_to}"
    settings = {k: v for k, v in sq.SETTINGS.items() if not args.settings or k in args.settings}
    if args.quick:
        settings = sq.QUICK
        args.max_vectors, args.finetune_epochs, args.baseline_epochs, args.low = 3, 1, 2, 0.8
    import torch
    root = Path(args.out or tempfile.mkdtemp(prefix="structsearch-headroom-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}; commit {commit}; protocol: {args.search_epochs} candidate "
          f"epoch(s), fine-tune {args.finetune_epochs} epochs at lr 0.01; baseline "
          f"{args.baseline_epochs} epochs per seed; run directories in {root}", flush=True)
    out = []
    for name, setting in settings.items():
        start = time.perf_counter()
        lines, text = run_setting(name, setting, args, root)
        section = [f"### {name} (grid {args.round_to}, {time.perf_counter() - start:.0f} s)", "",
                   *lines, "", text, ""]
        print("\n".join(section), flush=True)
        out += section
    if len(settings) > 1:
        print("\n".join(out))


if __name__ == "__main__":
    main()
