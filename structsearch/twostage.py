"""Two stages, EagleEye's protocol (Li et al., "EagleEye: Fast Sub-net Evaluation for Efficient
Neural Network Pruning", ECCV 2020): the searcher explores many candidates with the cheap
adaptive-BN fitness (BN statistics recalibrated on training batches, no gradient step), then
the best ``search.train_top`` of them are trained ``search.epochs`` epochs exactly as a
``fitness: train`` search trains a candidate, and the winner is picked among the trained ones.

After the first stage everything uses the trained fitness: the re-evaluation of the top
candidates and the one-shot baselines (trained by the winner's protocol). candidates.csv holds
both stages: first-stage rows have ``epochs`` 0, trained rows the search's epochs.
RUN_DIR/trained_top.json keeps the second stage's rows (reused on ``--resume``).
"""
from __future__ import annotations

import json

from . import report
from .candidate import Candidate, result_row
from .preflight import Prepared, say
from .reevaluate import top_candidates, train_candidates

FILE = "trained_top.json"


def fitness_after_search(cfg) -> str:
    """The fitness the winner is chosen, re-evaluated and compared by after the search."""
    return "train" if cfg.search.train_top else cfg.search.fitness


def stage_train_top(p: Prepared, scores, baseline: dict, rows: list[dict]) -> list[dict]:
    """The rows the winner is picked from: ``rows`` in one stage; with ``search.train_top``,
    the best first-stage candidates trained (their new rows, each with its checkpoint)."""
    from .tuning import checkpoint_uri
    s = p.cfg.search
    if not s.train_top:
        return rows
    file = p.run_dir / FILE
    if file.is_file():
        return json.loads(file.read_text())["rows"]
    top = top_candidates(rows, p.budget.limit, s.train_top)
    configs = [{"candidate": Candidate(r["token"], r["widths"], r["origin"], r["searcher"]).to_config(),
                "trial_id": r["trial_id"], "explored": r["val_acc"]} for r in top]
    say(f"second stage: training the best {len(configs)} of {len(rows)} candidates "
        f"{s.epochs} epoch(s) each (first stage: adaptive-BN accuracy)")
    results = train_candidates(p, scores, baseline, "trained", configs, label="trained",
                               fitness="train")
    trained = []
    for result in results:
        run = result.config["run"]
        candidate = Candidate.from_config(run["candidate"])
        error = None if result.error is None else str(result.error).splitlines()[-1][:300]
        w = list(candidate.widths)
        row = result_row(candidate, trial_id=f"{run['trial_id']}-trained",
                         metrics=dict(result.metrics or {}, trial_id=None), error=error,
                         macs=p.space.macs(w), params=p.space.params(w), cost=p.view.cost(w),
                         baseline_macs=baseline["macs"], full_epochs=s.epochs)
        row["checkpoint"] = checkpoint_uri(result.checkpoint)  # a URI on remote storage
        row["explored_acc"] = run["explored"]
        trained.append(row)
    trained.sort(key=lambda r: r["token"])
    report.write_json({"rows": trained}, file)
    return trained


def winner_pool(p: Prepared, scores, baseline: dict, rows: list[dict], summary: dict):
    """``(every row, the rows the winner is picked from)``; the summary says how many
    candidates the second stage trained."""
    pool = stage_train_top(p, scores, baseline, rows)
    summary["search"]["fitness"] = p.cfg.search.fitness
    if pool is rows:
        return rows, rows
    summary["search"]["trained"] = len(pool)
    return rows + pool, pool
