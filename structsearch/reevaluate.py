"""No winner's curse: before the final stage the top candidates are trained again, and the
winner is picked from that.

With many candidates the one with the highest validation accuracy after a short training is
partly the luckiest (its seed, its batch order): picking on one noisy number overrates the
winner and often picks the wrong one. ``search.reevaluate_by`` says how the
``search.reevaluate`` best candidates are trained again:

* ``seeds``: ``search.reevaluate_seeds`` more times, exactly as in the search but seeded anew;
  the winner is the best mean over all of its runs.
* ``finetune``: once more as in the search, then by the final stage's fine-tune (the very run
  the final stage would give it as the winner), together with the one-shot baselines' width
  vectors (``final.baselines``; trained as candidates here when the search did not propose
  them); the winner is the best by validation accuracy after the fine-tune. The short fitness
  only shortlists; the protocol whose result the user gets decides, and a one-shot structure
  wins whenever the search found nothing better on validation.

The winner keeps its search checkpoint (the fine-tune starts from it) and the report lists every
run.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import report
from .candidate import Candidate
from .preflight import Prepared, say


def top_candidates(rows: list[dict], limit: float, k: int) -> list[dict]:
    """The ``k`` best ``ok`` rows within the budget, best first (ties: fewer MACs)."""
    ok = [r for r in rows if r["status"] == "ok" and r["val_acc"] is not None
          and r["cost"] <= limit * (1 + 1e-9)]
    return sorted(ok, key=lambda r: (-r["val_acc"], r["macs"]))[:k]


def source_reevaluations(rows: list[dict]) -> dict[str, dict]:
    """Per source run of a warm start's known rows (``from_run``): its reevaluation.json, read
    once ({} when missing or unreadable)."""
    out = {}
    for source in {r.get("from_run") for r in rows if r.get("from_run")}:
        try:
            data = json.loads((Path(source) / "reevaluation.json").read_text())
        except (OSError, ValueError):
            data = {}
        out[source] = data if isinstance(data, dict) else {}
    return out


def known_repeats(rows: list[dict]) -> dict[str, list[float]]:
    """Per row (trial id): the repeats its source run's re-evaluation already trained, for a
    warm start's known candidates (repeat k of a candidate is the same training in any
    compatible run)."""
    files = source_reevaluations(rows)
    out = {}
    for row in rows:
        data = files.get(row.get("from_run") or "", {}).get("repeats")
        values = data.get(row["trial_id"], []) if isinstance(data, dict) else []
        out[row["trial_id"]] = [float(v) for v in values if isinstance(v, (int, float))
                                and math.isfinite(v)] if isinstance(values, list) else []
    return out


def repeat_configs(top: list[dict], seeds: int, have: dict | None = None) -> list[dict]:
    """Trial configs of repeats 1..``seeds`` of each row, less the ``have[trial_id]`` first
    ones (known already)."""
    configs = []
    for row in top:
        for repeat in range((have or {}).get(row["trial_id"], 0) + 1, seeds + 1):
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


def stage_reevaluate(p: Prepared, scores, baseline: dict, rows: list[dict], spare: int = 0):
    """``(winner row, re-evaluation table)``; the table is kept in RUN_DIR/reevaluation.json
    (reused on --resume). None as the table when re-evaluation is off or pointless.

    ``spare``: candidates the searcher did not train (it ran out of new width vectors within
    the budget, see ``SearchCore.shortfall``; the pipeline passes none for a warm start, which
    trains only what is new). That compute goes here, as more seeds for the top candidates:
    with every vector of a small space already tried, picking the best of them on less noise
    is what is left to gain. A warm start's known candidates bring the repeats their source
    runs trained (:func:`known_repeats`); only the missing ones are trained."""
    from .twostage import fitness_after_search
    s = p.cfg.search
    if s.reevaluate_by == "finetune":
        return stage_finetune(p, scores, baseline, rows, spare)
    top = top_candidates(rows, p.budget.limit, max(s.reevaluate, 1))
    if s.reevaluate < 2 or s.reevaluate_seeds < 1 or len(top) < 2:
        return (top[0] if top else None), None
    file = p.run_dir / "reevaluation.json"
    if file.is_file():
        repeats = json.loads(file.read_text())["repeats"]
    else:
        seeds = s.reevaluate_seeds + max(spare, 0) // len(top)
        reused = {k: v[:seeds] for k, v in known_repeats(top).items()}
        configs = repeat_configs(top, seeds, {k: len(v) for k, v in reused.items()})
        notes = [f"{seeds - s.reevaluate_seeds} of them from {spare} candidates the searcher "
                 f"left"] if seeds > s.reevaluate_seeds else []
        if any(reused.values()):
            notes.append(f"{sum(map(len, reused.values()))} known from finished runs")
        say(f"re-evaluation: the top {len(top)} candidates, {seeds} more seed(s) each "
            f"({'; '.join([f'{len(configs)} trials'] + notes)})")
        results = train_candidates(p, scores, baseline, "reevaluation", configs,
                                   label="re-evaluation", fitness=fitness_after_search(p.cfg)) \
            if configs else []
        trained: dict[str, list] = {}
        for result in results:
            ok = result.error is None and (result.metrics or {}).get("status") == "ok"
            run = result.config["run"]
            trained.setdefault(run["trial_id"], []).append(
                (run["candidate"]["options"]["repeat"], result.metrics["val_acc"] if ok else 0.0))
        repeats = {k: reused[k] + [v for _, v in sorted(trained.get(k, []))] for k in reused}
        report.write_json({"repeats": repeats}, file)
    return choose(top, repeats)


# ---------------------------------------------------------------------------- by the fine-tune
def finetune_protocol(cfg) -> dict:
    """The final stage's fine-tune (what a ``finetune`` re-evaluation trains after a candidate's
    own epochs); a source run's scores are reused only under the same protocol."""
    from .config import fine_tune_epochs
    return {"epochs": fine_tune_epochs(cfg), "lr": float(cfg.final.finetune_lr),
            "search_epochs": int(cfg.search.epochs)}


def finetune_shortlist(rows: list[dict], limit: float, k: int,
                       oneshot: dict[str, list[int]]) -> tuple[list[dict], dict[str, list[int]]]:
    """The ``k`` best rows (:func:`top_candidates`), then the best ``ok`` row within the budget
    with each one-shot baseline's widths (``oneshot``: name -> widths) not among them, each
    tagged with ``oneshot`` (the baseline's name, or None); and the one-shot baselines no row
    has (name -> widths)."""
    names = {tuple(int(w) for w in widths): name for name, widths in oneshot.items()}
    top = top_candidates(rows, limit, k)
    shortlist = [dict(r, oneshot=names.get(tuple(r["widths"]))) for r in top]
    seen = {tuple(r["widths"]) for r in top}
    for row in top_candidates(rows, limit, len(rows)):
        key = tuple(row["widths"])
        if key in names and key not in seen:
            shortlist.append(dict(row, oneshot=names[key]))
            seen.add(key)
    missing = {name: list(w) for w, name in names.items() if w not in seen}
    return shortlist, missing


def oneshot_row(p: Prepared, baseline: dict, name: str, widths: list[int]) -> dict:
    """A shortlist row (as :func:`~structsearch.candidate.result_row` builds one) for one-shot
    baseline ``name`` the search never trained (no search checkpoint:
    :func:`~structsearch.warmstart.retrain_winner` trains it should it win)."""
    from .candidate import result_row
    w = [int(v) for v in widths]
    row = result_row(Candidate(-1, w, f"oneshot:{name}", "oneshot"), trial_id=f"oneshot:{name}",
                     metrics={"epoch": p.cfg.search.epochs}, error=None, macs=p.space.macs(w),
                     params=p.space.params(w), cost=float(p.view.cost(w)),
                     baseline_macs=baseline["macs"], full_epochs=None)
    return dict(row, checkpoint=None, oneshot=name)


def known_finetuned(rows: list[dict], protocol: dict) -> dict[str, float]:
    """Per row (trial id) of a warm start's known candidates: the fine-tuned validation accuracy
    its source run's re-evaluation measured under the same ``protocol``."""
    files, out = source_reevaluations(rows), {}
    for row in rows:
        data = files.get(row.get("from_run") or "", {})
        scores = data.get("finetuned") if data.get("finetune") == protocol else None
        value = scores.get(row["trial_id"]) if isinstance(scores, dict) else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[row["trial_id"]] = float(value)
    return out


def choose_finetuned(shortlist: list[dict], finetuned: dict[str, float | None],
                     epochs: dict[str, int]) -> tuple[dict, list[dict]]:
    """The winner by fine-tuned validation accuracy (ties: fewer MACs; a failed fine-tune,
    None, never wins: with every one failed, the best search row) and the table of the
    shortlist (best first); ``epochs``: what this run trained for each trial id."""
    score = lambda r: finetuned.get(r["trial_id"])  # noqa: E731
    table = [{"trial_id": r["trial_id"], "origin": r["origin"], "oneshot": r.get("oneshot"),
              "widths": list(r["widths"]), "macs_ratio": r["macs_ratio"],
              "val_acc_search": r["val_acc"], "val_acc_repeats": [],
              "val_acc_finetuned": score(r), "val_acc_mean": score(r),
              "epochs": epochs.get(r["trial_id"], 0), "macs": r["macs"]}
             for r in shortlist]
    table.sort(key=lambda e: (e["val_acc_finetuned"] is None, -(e["val_acc_finetuned"] or 0),
                              e["macs"]))
    best = table[0]["trial_id"] if table[0]["val_acc_finetuned"] is not None else \
        next(r["trial_id"] for r in shortlist if r.get("val_acc") is not None)
    winner = next(r for r in shortlist if r["trial_id"] == best)
    return {k: v for k, v in winner.items() if k != "oneshot"}, \
        [{k: v for k, v in e.items() if k != "macs"} for e in table]


def stage_finetune(p: Prepared, scores, baseline: dict, rows: list[dict], spare: int):
    """``search.reevaluate_by: finetune`` (see the module's doc): ``(winner row, table)``, the
    scores kept in RUN_DIR/reevaluation.json. ``spare`` candidate trainings the searcher left
    become more shortlisted candidates (a fine-tune costs its epochs in candidate trainings)."""
    from .finalruns import oneshot_runs
    from .twostage import fitness_after_search
    s, protocol = p.cfg.search, finetune_protocol(p.cfg)
    trains = fitness_after_search(p.cfg) == "train"
    # Spare trained candidates pay for more fine-tunes (adaptive-BN ones cost no epochs).
    extra = max(spare, 0) * s.epochs // (protocol["epochs"] + s.epochs) if trains else 0
    oneshot = {r["name"]: r["widths"] for r in oneshot_runs(p)}
    shortlist, missing = finetune_shortlist(rows, p.budget.limit, s.reevaluate + extra, oneshot)
    shortlist += [oneshot_row(p, baseline, n, w) for n, w in missing.items()]
    if s.reevaluate < 1 or protocol["epochs"] < 1 or len(shortlist) < 2:
        best = top_candidates(rows, p.budget.limit, 1)
        return (best[0] if best else None), None
    file = p.run_dir / "reevaluation.json"
    if file.is_file():
        saved = json.loads(file.read_text())
        finetuned, epochs, searched = (saved["finetuned"], saved.get("epochs", {}),
                                       saved.get("searched", {}))
    else:
        known = known_finetuned(shortlist, protocol)
        todo = [r for r in shortlist if r["trial_id"] not in known]
        notes = [f"{len(todo)} trials"] + ([f"{len(known)} known from finished runs"] if known else [])
        if extra:
            notes.append(f"{extra} more shortlisted for {spare} candidates the searcher left")
        tops = len(top_candidates(rows, p.budget.limit, s.reevaluate + extra))
        say(f"re-evaluation: the top {tops} candidates and {len(shortlist) - tops} more one-shot "
            f"structure(s) ({len(missing)} not proposed by the search), each fine-tuned "
            f"{protocol['epochs']} epochs ({'; '.join(notes)})")
        # From its search checkpoint where the candidate has one (the final stage's start);
        # a one-shot structure the search never trained is trained as a candidate first.
        weights = {r["trial_id"]: r.get("checkpoint") or r.get("known_weights") for r in todo}
        epochs = {k: protocol["epochs"] + (0 if w or not trains else s.epochs)
                  for k, w in weights.items()}
        configs = [{"candidate": Candidate(r["token"], r["widths"], r["origin"], r["searcher"], {
            "repeat": 0, "finetune": protocol,
            **({"weights": str(weights[r["trial_id"]])} if weights[r["trial_id"]] else {})
        }).to_config(), "trial_id": r["trial_id"]} for r in todo]
        results = train_candidates(p, scores, baseline, "reevaluation", configs,
                                   label="re-evaluation (fine-tune)",
                                   fitness=fitness_after_search(p.cfg)) if configs else []
        from .tuning import checkpoint_uri
        finetuned, searched, kept = dict(known), {}, {}
        for result in results:
            ok = result.error is None and (result.metrics or {}).get("status") == "ok"
            key = result.config["run"]["trial_id"]
            finetuned[key] = result.metrics["val_acc"] if ok else None  # None: it failed
            if ok and key.startswith("oneshot:"):  # its candidate training's own val acc
                searched[key] = result.metrics.get("val_acc_before_finetune")
            if ok and result.checkpoint is not None:  # the final stage adopts these runs
                kept[key] = {"checkpoint": checkpoint_uri(result.checkpoint),
                             "seconds": result.metrics.get("seconds")}
        report.write_json({"finetune": protocol, "finetuned": finetuned, "searched": searched,
                           "epochs": epochs, "finetuned_runs": kept,
                           "oneshot": {r["oneshot"]: r["trial_id"] for r in shortlist
                                       if r.get("oneshot")}}, file)
    shortlist = [dict(r, val_acc=searched.get(r["trial_id"], r["val_acc"])) for r in shortlist]
    return choose_finetuned(shortlist, finetuned, epochs)
