"""No winner's curse: before the final stage the top candidates are trained again under other
seeds, and the winner is the best by the mean over all of its runs.

With many candidates the one with the highest validation accuracy after a short training is
partly the luckiest (its seed, its batch order): picking on one noisy number overrates the
winner and often picks the wrong one. Each of the ``search.reevaluate`` best candidates is
trained ``search.reevaluate_seeds`` more times, exactly as in the search but seeded anew; the
winner keeps its search checkpoint (the fine-tune starts from it) and the report lists every
run.
"""
from __future__ import annotations

import json

from . import report
from .candidate import Candidate
from .preflight import Prepared, say


def top_candidates(rows: list[dict], limit: float, k: int) -> list[dict]:
    """The ``k`` best ``ok`` rows within the budget, best first (ties: fewer MACs)."""
    ok = [r for r in rows if r["status"] == "ok" and r["val_acc"] is not None
          and r["cost"] <= limit * (1 + 1e-9)]
    return sorted(ok, key=lambda r: (-r["val_acc"], r["macs"]))[:k]


def repeat_configs(top: list[dict], seeds: int) -> list[dict]:
    configs = []
    for row in top:
        for repeat in range(1, seeds + 1):
            c = Candidate(row["token"], row["widths"], row["origin"], row["searcher"],
                          {"repeat": repeat})
            configs.append({"candidate": c.to_config(), "trial_id": row["trial_id"]})
    return configs


def choose(top: list[dict], repeats: dict[str, list[float]]) -> tuple[dict, list[dict]]:
    """The winner by mean validation accuracy over its search run and its repeats, and the
    table of every top candidate's runs (best mean first)."""
    table = []
    for row in top:
        runs = [row["val_acc"]] + repeats.get(row["trial_id"], [])
        table.append({"trial_id": row["trial_id"], "origin": row["origin"],
                      "widths": list(row["widths"]), "macs_ratio": row["macs_ratio"],
                      "val_acc_search": row["val_acc"], "val_acc_repeats": runs[1:],
                      "val_acc_mean": sum(runs) / len(runs)})
    table.sort(key=lambda e: (-e["val_acc_mean"], next(r["macs"] for r in top
                                                      if r["trial_id"] == e["trial_id"])))
    winner = next(r for r in top if r["trial_id"] == table[0]["trial_id"])
    return winner, table


def train_candidates(p: Prepared, scores, baseline: dict, name: str, runs: list[dict], *,
                     label: str, fitness: str | None = None, concurrent: int | None = None):
    """Train candidates again as one Tune experiment ``name`` of this run (each of ``runs``
    is ``{"candidate": a trial config, "trial_id": ...}``, plus anything the caller reads back
    from ``result.config["run"]``), exactly as the search trains a candidate but with
    ``fitness`` (see :func:`~structsearch.pipeline.trial_setup`); returns Tune's results."""
    from ray import tune

    from trainables.candidate import reevaluation_trainable

    from .pipeline import experiment, trial_setup
    from .tuning import Progress
    describe = lambda trial: (trial.config["run"]["candidate"]["origin"],  # noqa: E731
                              (trial.last_result or {}).get("val_acc"), "")
    return experiment(p, name, reevaluation_trainable, param_space={"run": tune.grid_search(runs)},
                      concurrent=concurrent or p.cfg.search.concurrent,
                      callbacks=[Progress(len(runs), label, describe)],
                      params={"setup": trial_setup(p, scores, baseline, fitness),
                              "baseline_state": {k: v.cpu() for k, v in
                                                 p.model.state_dict().items()}})


def stage_reevaluate(p: Prepared, scores, baseline: dict, rows: list[dict]):
    """``(winner row, re-evaluation table)``; the table is kept in RUN_DIR/reevaluation.json
    (reused on --resume). None as the table when re-evaluation is off or pointless."""
    from .twostage import fitness_after_search
    s = p.cfg.search
    top = top_candidates(rows, p.budget.limit, max(s.reevaluate, 1))
    if s.reevaluate < 2 or s.reevaluate_seeds < 1 or len(top) < 2:
        return (top[0] if top else None), None
    file = p.run_dir / "reevaluation.json"
    if file.is_file():
        repeats = json.loads(file.read_text())["repeats"]
    else:
        configs = repeat_configs(top, s.reevaluate_seeds)
        say(f"re-evaluation: the top {len(top)} candidates, {s.reevaluate_seeds} more seed(s) "
            f"each ({len(configs)} trials)")
        results = train_candidates(p, scores, baseline, "reevaluation", configs,
                                   label="re-evaluation", fitness=fitness_after_search(p.cfg))
        repeats: dict[str, list[float]] = {}
        for result in results:
            ok = result.error is None and (result.metrics or {}).get("status") == "ok"
            key = result.config["run"]["trial_id"]
            repeats.setdefault(key, []).append(result.metrics["val_acc"] if ok else 0.0)
        report.write_json({"repeats": repeats}, file)
    return choose(top, repeats)
