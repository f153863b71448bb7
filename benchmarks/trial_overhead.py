"""Ray Tune's per-trial overhead for structsearch candidates, and 2-trial vs 1-trial throughput.

Claim checked: a candidate trial costs little beyond its training (target <= 0.5 s per trial)
and two concurrent 1-CPU trials give >= 1.8x the candidates per second of one.

Method: the real candidate trainable (prune small_cnn + train on digits or mnist5k) runs N trials
through Tune with the real searcher adapter; each trial reports its own time from entry to its
last report. Overhead per trial = (wall time x concurrency - sum of in-trial time) / N. A thin
wrapper also logs when each trial starts and ends on which worker, which splits the overhead into
start-up (Tuner.fit() to the first trial's start: worker processes, imports), the gap between
consecutive trials on one reused worker, and the tail (the last round, when one worker has no
trial left while the other finishes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def logged_trainable(config: dict, *, log: str, setup, baseline_state) -> None:
    from trainables.candidate import candidate_trainable
    t0 = time.time()
    candidate_trainable(config, setup=setup, baseline_state=baseline_state)
    with open(log, "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "t0": t0, "t1": time.time()}) + "\n")


def timeline(log: str, fit_start: float) -> dict:
    """Start-up, median gap between trials on one worker, and tail, from the trials' log."""
    events = sorted((json.loads(line) for line in open(log)), key=lambda e: e["t0"])
    workers: dict[int, list] = {}
    for e in events:
        workers.setdefault(e["pid"], []).append(e)
    gaps = [b["t0"] - a["t1"] for w in workers.values() for a, b in zip(w, w[1:])]
    ends = [w[-1]["t1"] for w in workers.values()]
    return {"startup": events[0]["t0"] - fit_start, "gap": statistics.median(gaps) if gaps else 0.0,
            "tail": max(ends) - min(ends), "workers": len(workers)}


def make_setup(dataset: str, epochs: int):
    from structsearch import data as D, models
    from structsearch.criteria import get
    from structsearch.space import WidthSpace
    from structsearch.train import TrainSpec
    from trainables.common import TrialSetup

    spec = D.DataSpec(name=dataset, val_fraction=0.2)
    splits = D.load(spec)
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    space = WidthSpace.from_model(model, splits.input_shape, model_name="small_cnn",
                                  model_kwargs={"num_classes": 10, "in_channels": 1})
    setup = TrialSetup("small_cnn", {"num_classes": 10, "in_channels": 1}, spec, space,
                       get("l1").scores(model, space), TrainSpec(epochs=epochs, lr=0.02, batch_size=64),
                       baseline_macs=space.full_macs)
    return setup, model.state_dict()


def random_core(setup, n: int):
    import searchers
    space = setup.space
    return searchers.build("random", space, limit=0.5 * space.full_macs, num_candidates=n, seed=0)


def run(n: int, concurrent: int, epochs: int, dataset: str = "digits"):
    import tempfile

    from ray import tune

    from searchers.adapter import TuneSearcher

    setup, state = make_setup(dataset, epochs)
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "trials.jsonl")
        trainable = tune.with_resources(tune.with_parameters(
            logged_trainable, log=log, setup=setup, baseline_state=state), {"cpu": 1})
        tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
            search_alg=TuneSearcher(random_core(setup, n)), num_samples=n,
            max_concurrent_trials=concurrent, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=tmp, name="bench", verbose=0))
        start = time.time()
        results = tuner.fit()
        end = time.time()
        parts = timeline(log, start)
    inside = sum(r.metrics["seconds"] for r in results)
    return end - start, inside, len(results), parts


_PLAIN: dict = {}


def _plain_init(setup, state) -> None:
    import torch
    torch.set_num_threads(1)
    _PLAIN.update(setup=setup, state=state)


def _plain_candidate(widths) -> float:
    """The candidate trial's work (data, prune with inherited channels, train, validate) without Ray."""
    from structsearch.train import train
    from trainables.common import build_pruned_model, load_splits, widths_seed
    start = time.perf_counter()
    setup = _PLAIN["setup"]
    splits = load_splits(setup.data_spec, "cpu")
    model = build_pruned_model(setup, _PLAIN["state"], widths, inherit=True)
    train(model, splits.train, setup.train, val_split=splits.val, seed=widths_seed(widths, setup.seed))
    return time.perf_counter() - start


def run_plain(n: int, processes: int, epochs: int, dataset: str):
    """The same candidates in a pool of fresh 1-thread processes: the machine's own ceiling."""
    import multiprocessing as mp

    setup, state = make_setup(dataset, epochs)
    core = random_core(setup, n)
    proposals = [list(core.ask().widths) for _ in range(n)]
    start = time.time()
    with mp.get_context("spawn").Pool(processes, initializer=_plain_init, initargs=(setup, state)) as pool:
        inside = sum(pool.imap_unordered(_plain_candidate, proposals, chunksize=1))
    return time.time() - start, inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", nargs="*", default=["digits", "mnist5k"],
                        help="digits: tiny trials (overhead-bound); mnist5k: ~4,000 images per epoch")
    parser.add_argument("--no-plain", action="store_true",
                        help="skip the same candidates in plain processes without Ray (the ceiling)")
    args = parser.parse_args()

    import ray
    import torch

    from structsearch.tuning import init_ray
    init_ray(None)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"torch {torch.__version__}, ray {ray.__version__}, python {platform.python_version()}")
    for dataset in args.data:
        print(f"workload: small_cnn on {dataset}, {args.epochs} epoch(s) per candidate, "
              f"{args.trials} candidates per setting, reuse_actors=True, 1 CPU per trial")
        rows = {}
        for concurrent in (1, 2):
            run(2, concurrent, args.epochs, dataset)  # warm-up: worker start and data cache
            wall, inside, n, parts = run(args.trials, concurrent, args.epochs, dataset)
            overhead = (wall * concurrent - inside) / n
            rows[concurrent] = n / wall
            print(f"  concurrent={concurrent}: {n} trials in {wall:.1f} s wall, {inside / n:.2f} s inside "
                  f"each, overhead {overhead:.2f} s/trial, {n / wall:.3f} candidates/s")
            print(f"    start-up {parts['startup']:.2f} s, gap between trials on a worker "
                  f"{parts['gap']:.3f} s, tail {parts['tail']:.2f} s, {parts['workers']} worker(s)")
        print(f"  2-trial vs 1-trial throughput: {rows[2] / rows[1]:.2f}x over {args.trials} candidates "
              f"(target >= 1.8x)")
        if not args.no_plain:
            plain = {}
            for processes in (1, 2):
                wall, inside = run_plain(args.trials, processes, args.epochs, dataset)
                plain[processes] = args.trials / wall
                print(f"  without Ray, {processes} process(es): {args.trials} candidates in {wall:.1f} s wall, "
                      f"{inside / args.trials:.2f} s each, {plain[processes]:.3f} candidates/s")
            print(f"  2 vs 1 process without Ray (this machine's ceiling): {plain[2] / plain[1]:.2f}x; "
                  f"Tune reaches {rows[1] / plain[1]:.0%} (1 trial) and {rows[2] / plain[2]:.0%} (2 trials) "
                  f"of the plain throughput")
    ray.shutdown()


if __name__ == "__main__":
    main()
