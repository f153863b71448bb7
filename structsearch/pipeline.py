"""The search flow, stage by stage (the README's diagram):

    preflight (config, data, model, space, budget, searcher: checked before Ray starts)
    -> baseline (load or train) -> channel scores of the criterion
    -> searcher with what it needs (seeds, scores; DMCP: the supernet trial)
    -> search: candidates as Ray Tune trials, journalled -> winner
    -> final stage in parallel: fine-tune | Scratch-E | Scratch-B -> speed -> report

Every stage checks the run directory first and skips work whose outputs exist, so ``--resume``
continues where an interrupted run stopped. Tune experiments start in ``tuning.run_experiment``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

from . import journal as search_journal
from . import entrypoints, report, rundir, twostage, warmstart
from . import summary as summaries
from .candidate import Candidate, pick_winner, result_row
from .config import Config
from .journal import Journal, JournalError, journal_path, load_journal
from .finalruns import (adopt_reevaluated, final_runs, finished_runs, keep_final_results,
                        measure_untrained, oneshot_runs, save_trained)
from .reevaluate import stage_reevaluate
from .needs import build_searcher, criterion_scores, criterion_selection, needs_trial, supernet_config
from .preflight import Prepared, check_resources, prepare, run_criterion, say
from .rundir import RunDirError
from .summary import SearchFailed
from .sparsity import regularizer
from .surgery import WEIGHTS_FILE, load_pruned, load_state_dict_file
from .timing import speedup
from .train import TrainSpec, evaluate, train

PROTOCOLS = ("finetune", "scratch_e", "scratch_b")


# ---------------------------------------------------------------------------- baseline
def baseline_spec(cfg: Config) -> TrainSpec:
    b = cfg.baseline
    return TrainSpec(epochs=b.epochs, lr=b.lr, momentum=b.momentum, nesterov=b.nesterov,
                     weight_decay=b.weight_decay, schedule=b.schedule,
                     label_smoothing=b.label_smoothing, batch_size=cfg.data.batch_size)


def baseline_epochs(cfg: Config) -> int | None:
    """Epochs the baseline stage trains: the baseline's own, or, for a loaded checkpoint,
    ``baseline.sparsity.epochs`` of sparsity training (None: the checkpoint is used as is)."""
    sparsity = cfg.baseline.sparsity or {}
    if not cfg.model.checkpoint:
        return cfg.baseline.epochs
    if sparsity.get("kind"):
        return int(sparsity.get("epochs", cfg.baseline.epochs))
    return None


def train_baseline(p: Prepared) -> None:
    """Train the baseline from scratch, or sparsity-train a loaded checkpoint (Network
    Slimming / SSL on a user's trained model), with the configured regulariser."""
    epochs = baseline_epochs(p.cfg)
    if not epochs:
        return
    spec = dataclasses.replace(baseline_spec(p.cfg), epochs=epochs)
    what = "sparsity training the loaded checkpoint" if p.cfg.model.checkpoint else "training"
    say(f"baseline: {what} {p.cfg.model.name} for {spec.epochs} epochs on {p.cfg.data.name}")
    train(p.model, p.splits.train, spec, val_split=p.splits.val, device=p.device, seed=p.cfg.seed,
          regularizer=regularizer(p.cfg.baseline.sparsity, p.cfg.model.name),
          on_epoch=lambda e, m: say(f"  baseline epoch {e}/{spec.epochs}: val_acc "
                                    f"{100 * m['val_acc']:.2f}%"))


def stage_baseline(p: Prepared) -> dict:
    """RUN_DIR/baseline: the loaded or trained baseline, with its accuracy and cost."""
    out = p.run_dir / "baseline"
    metrics_file, weights_file = out / "metrics.json", out / WEIGHTS_FILE
    if metrics_file.is_file() and weights_file.is_file():
        p.model.load_state_dict(load_state_dict_file(weights_file))
        say(f"baseline: reusing {out}")
        return json.loads(metrics_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_baseline(p)
    val = evaluate(p.model, p.splits.val, device=p.device)
    test = evaluate(p.model, p.splits.test, device=p.device)
    metrics = {"val_acc": val["top1"], "test_acc": test["top1"],
               "macs": int(p.space.macs(p.space.full_widths)),
               "params": int(sum(t.numel() for t in p.model.parameters())),
               "epochs": baseline_epochs(p.cfg),
               "source": p.cfg.model.checkpoint or "trained", "seconds": time.perf_counter() - start,
               "test_images": len(p.splits.test)}
    p.model.cpu()
    tmp = out / (WEIGHTS_FILE + ".tmp")
    torch.save({k: v.detach().cpu() for k, v in p.model.state_dict().items()}, tmp)
    os.replace(tmp, weights_file)
    report.write_json(metrics, metrics_file)
    say(f"baseline: val {100 * val['top1']:.2f}%, test {100 * test['top1']:.2f}%, "
        f"{metrics['macs'] / 1e6:.3f} M MACs")
    return metrics


# ---------------------------------------------------------------------------- Tune stages
def trial_setup(p: Prepared, scores, baseline: dict, fitness: str | None = None):
    """What every trial rebuilds its model and data from (shipped once per experiment);
    ``fitness`` replaces ``search.fitness`` (a two-stage search's later stages train)."""
    from trainables.common import TrialSetup

    from .tuning import user_paths
    s = p.cfg.search
    spec = dataclasses.replace(baseline_spec(p.cfg), epochs=s.epochs, lr=s.lr, schedule=s.schedule)
    criterion = run_criterion(p.cfg)
    return TrialSetup(model_name=p.cfg.model.name, model_kwargs=p.model_kwargs, data_spec=p.data_spec,
                      space=p.space, scores=scores, train=spec, seed=p.cfg.seed,
                      baseline_macs=int(baseline["macs"]), fault_injection=dict(s.fault_injection),
                      fitness=fitness or s.fitness, criterion=s.criterion,
                      criterion_params=dict((s.criteria or {}).get(s.criterion, {})),
                      selection=criterion_selection(p),
                      objects=entrypoints.shipped(p.cfg.model.name, p.cfg.data.name),
                      paths=tuple(user_paths()),
                      reconstruct=criterion.reconstructs if s.reconstruct is None else s.reconstruct)


def experiment(p: Prepared, name: str, trainable, *, fresh: bool = True, min_cpu: float = 0,
               **kwargs):
    """Run Tune experiment ``name`` of this run (``kwargs`` as ``tuning.run_experiment``)."""
    from .tuning import run_experiment
    if fresh:
        rundir.fresh_experiment(p.cfg, p.run_dir, name)
    r = p.cfg.search.resources
    return run_experiment(name, trainable, storage=rundir.tune_storage(p.cfg, p.run_dir),
                          resources={"cpu": max(r.cpu, min_cpu), "gpu": r.gpu}, **kwargs)


def stage_supernet(p: Prepared, scores, baseline: dict, need) -> dict:
    """DMCP: train the supernet's Markov chains under the budget as one Ray trial; the chains go
    to RUN_DIR/supernet/chains.json (reused on --resume)."""
    from trainables.dmcp_supernet import dmcp_trainable
    out = p.run_dir / "supernet" / "chains.json"
    if out.is_file():
        say(f"supernet: reusing {out}")
        return json.loads(out.read_text())
    conf = supernet_config(p, need)
    say(f"supernet: training {conf['epochs']} epochs towards "
        f"{p.budget.limit / 1e6:.3f} M MACs")
    state = {k: v.cpu() for k, v in p.model.state_dict().items()}
    result = experiment(p, "supernet", dmcp_trainable, min_cpu=1, param_space=conf,
                        params={"setup": trial_setup(p, scores, baseline), "baseline_state": state})[0]
    if result.error is not None:
        raise SearchFailed(f"the supernet trial failed: {str(result.error).splitlines()[-1][:300]}")
    chains = result.metrics["chains"]
    out.parent.mkdir(parents=True, exist_ok=True)
    report.write_json(chains, out)
    say(f"supernet: expected MACs {100 * result.metrics.get('expected_macs_ratio', 0):.1f}% of the baseline")
    return chains


def row_maker(p: Prepared, baseline: dict):
    """``make_row(trial, error)``: a finished trial's candidates.csv row, built once."""
    full_epochs = None if p.cfg.search.fitness != "train" else p.cfg.search.epochs

    def make_row(trial, error):
        candidate = Candidate.from_config(trial.config)
        w = list(candidate.widths)
        return result_row(candidate, trial_id=trial.trial_id, metrics=trial.last_result or {},
                          error=error, macs=p.space.macs(w), params=p.space.params(w),
                          cost=p.view.cost(w), baseline_macs=baseline["macs"],
                          full_epochs=full_epochs)
    return make_row


def progress_line(p: Prepared, baseline: dict):
    def describe(trial):
        c = Candidate.from_config(trial.config)
        ratio = p.space.macs(list(c.widths)) / baseline["macs"]
        return c.origin, (trial.last_result or {}).get("val_acc"), f" at {100 * ratio:.1f}% MACs"
    return describe


def stage_search(p: Prepared, scores, baseline: dict, core, *, journal: Journal | None) -> list[dict]:
    """Train the searcher's candidates as Tune trials; returns one row per candidate. Given an
    interrupted run's journal the search continues: finished candidates are kept, candidates
    that were training when the run stopped train again."""
    from searchers.adapter import TuneSearcher
    from trainables.candidate import candidate_trainable

    from .schedulers import make_scheduler, scheduler_state
    from .tuning import JournalRecorder, Progress
    path, start = journal_path(p.run_dir), time.perf_counter()
    if journal is None or not journal.trials:  # nothing had finished: start afresh
        rundir.fresh_experiment(p.cfg, p.run_dir, "search")
        journal = Journal(core=core.state())
        search_journal.save_journal(path, journal)  # marks the experiment as this journal's
    else:
        core.load_state(journal.core)
    remaining = core.num_candidates - len(journal.trials)
    if remaining > 0 and (journal.unfinished or not journal.finished):
        searcher = TuneSearcher(core, metric="val_acc", requeue=journal.unfinished)
        announce_search(p, core, journal)
        kept = [t["row"] for t in journal.trials]
        best = max((r["val_acc"] for r in kept if r["status"] == "ok" and r["val_acc"] is not None),
                   default=None)
        progress = Progress(core.num_candidates, "candidate", progress_line(p, baseline),
                            done=len(kept), best=best)
        # A resumed ASHA goes on with its rungs (which trials reached which epoch, how well).
        scheduler = make_scheduler(p.cfg.search, state=journal.scheduler)
        recorder = JournalRecorder(journal, path, searcher, row_maker(p, baseline),
                                   lambda: scheduler_state(scheduler))
        state = {k: v.cpu() for k, v in p.model.state_dict().items()}
        try:
            experiment(p, "search", candidate_trainable, fresh=False, search_alg=searcher,
                       num_samples=remaining, concurrent=p.cfg.search.concurrent,
                       scheduler=scheduler, callbacks=[progress, recorder], keep_checkpoints=1,
                       max_failures=p.cfg.search.max_failures,
                       params={"setup": trial_setup(p, scores, baseline), "baseline_state": state})
        except KeyboardInterrupt:  # Ctrl-C: the finished candidates still go to the journal
            finish_journal(recorder, path, searcher, core)
            raise
        journal = finish_journal(recorder, path, searcher, core)
    rows = sorted((dict(t["row"], checkpoint=t["checkpoint"]) for t in journal.trials),
                  key=lambda r: r["token"])
    say(f"search: {len(rows)} candidates in {time.perf_counter() - start:.0f} s "
        f"({sum(r['status'] != 'ok' for r in rows)} failed"
        + (f"; {core.reused} more answered by known results" if core.reused else "")
        + (f"; {core.repeats} repeated proposals answered by their first result"
           if core.repeats else "") + ")"
        + (f"; stopped early: {core.shortfall}" if len(rows) < core.num_candidates else ""))
    return rows


def announce_search(p: Prepared, core, journal: Journal) -> None:
    s = p.cfg.search
    if journal.trials:
        say(f"search: resuming after {len(journal.trials)} of {core.num_candidates} candidates "
            f"({len(journal.unfinished)} to train again)")
    else:
        say(f"search: {s.searcher} over {len(p.space)} groups, {core.num_candidates} candidates "
            f"x {s.epochs} epochs, {s.concurrent} at a time, budget {p.budget.text()}"
            + getattr(core, "plan", ""))
        if core.num_candidates < s.candidates:
            say(f"search: {core.num_candidates} of the {s.candidates} candidates asked for "
                f"({getattr(core, 'shortfall', '') or 'the searcher has no more to propose'})")
    say(f"watch: tensorboard --logdir {rundir.local_tune_dir(p.cfg, p.run_dir)}")


def finish_journal(recorder, path: Path, searcher, core) -> Journal:
    """The journal after Tune returned; a search that is not over raises."""
    recorder.write(recorder.journal.trials)  # the searcher may have said FINISHED since
    if recorder.save_error is not None:
        raise JournalError(f"cannot write the search journal {path} ({recorder.save_error}); "
                           f"free space or fix permissions, then run again with --resume")
    journal = recorder.journal
    if searcher.unfinished() or (len(journal.trials) < core.num_candidates and not searcher.finished):
        # Tune returns normally after Ctrl-C: the search is not over, so no winner yet.
        raise KeyboardInterrupt
    return journal


def stage_final(p: Prepared, scores, baseline: dict, winner: dict, winner_state: dict) -> dict:
    """The winner trained by every protocol, in parallel; RUN_DIR/winner/<protocol>/."""
    from ray import tune

    from trainables.final import final_trainable

    from .tuning import Interrupted, Progress
    every = final_runs(p.cfg, baseline, winner) + oneshot_runs(p)
    done = finished_runs(p, every)  # on --resume
    runs = {r["key"]: r for r in every if r["key"] not in done}
    if not runs:
        return done
    state = {k: v.cpu() for k, v in p.model.state_dict().items()}
    setup = trial_setup(p, scores, baseline, twostage.fitness_after_search(p.cfg))
    done.update(adopt_reevaluated(p, runs, winner, baseline))  # trained there already
    done.update(measure_untrained(p, runs, setup, state, winner_state))
    if not runs:
        return done
    say("final: " + ", ".join(f"{k} {r['epochs']} ep" for k, r in runs.items()) + " in parallel")
    describe = lambda trial: (trial.config["protocol"], (trial.last_result or {}).get("val_acc"), "")  # noqa: E731
    try:
        results = experiment(
            p, "final", final_trainable, param_space={"protocol": tune.grid_search(list(runs))},
            concurrent=len(runs), callbacks=[Progress(len(runs), "final", describe)],
            params={"setup": setup, "baseline_state": state, "winner_state": winner_state,
                    "runs": runs})
    except Interrupted as stop:  # Ctrl-C: the runs that finished are kept for --resume
        keep_final_results(p, runs, stop.results, baseline)
        raise
    return {**done, **keep_final_results(p, runs, results, baseline)}


# ---------------------------------------------------------------------------- winner
def keep_winner(p: Prepared, rows: list[dict], winner: dict, summary: dict) -> dict:
    """winner/ (arch.json + weights.pt) and the summary's winner entry; the other candidates'
    checkpoints are deleted. Returns the winner's trained state_dict."""
    summary["winner"] = summaries.winner_entry(winner, p.budget)
    say(f"winner: {winner['origin']} val {100 * winner['val_acc']:.2f}% at "
        f"{100 * winner['macs_ratio']:.1f}% MACs")
    state = save_trained(p, winner["widths"], winner["checkpoint"], p.run_dir / "winner",
                         extra={"val_acc": winner["val_acc"], "trial_id": winner["trial_id"],
                                "origin": winner["origin"]})
    rundir.clean_checkpoints([r["checkpoint"] for r in rows], winner["checkpoint"])
    return state


# ---------------------------------------------------------------------------- the flow
def open_run(cfg: Config, out, config_path, resume: bool, address, warm_from=()):
    """The checked run, with ``resume`` its journal, and the ``--from`` runs' candidates: all
    read before Ray starts."""
    run_dir = rundir.open_run_dir(out, config_path, resume)
    check_resources(cfg, address)  # with --address: joins the cluster to see its nodes
    warmstart.check_searcher(cfg.search.searcher, bool(warm_from))
    warm = warmstart.open_sources(cfg, run_dir, list(warm_from), resume)
    p = prepare(cfg, run_dir)
    say(f"run directory: {run_dir}")
    rundir.save_or_check_config(cfg, run_dir, {
        "versions": summaries.versions(), "split": p.splits.summary(), "device": p.device,
        "budget": {"kind": p.budget.kind, "limit": p.budget.limit}})
    journal = load_journal(journal_path(run_dir)) if resume else None
    if resume:
        rundir.check_resumable(cfg, run_dir, journal is not None)
    return p, journal, warm


def run_search(cfg: Config, *, out: str | None = None, config_path: str | None = None,
               resume: bool = False, address: str | None = None, warm_from=()) -> Path:
    """Run the whole flow; returns the run directory. ``warm_from``: finished runs whose
    candidates answer this run's searcher without training (see :mod:`.warmstart`)."""
    p, journal, warm = open_run(cfg, out, config_path, resume, address, warm_from)
    baseline = stage_baseline(p)
    scores = criterion_scores(p, cfg.search.criterion)
    core = build_searcher(p)  # what the searcher needs from the baseline, before Ray starts
    started = time.perf_counter()
    from .tuning import init_ray  # local Ray starts once every input is checked
    init_ray(address)
    if needs_trial(cfg.search.searcher):  # e.g. DMCP's chains come from a supernet trial
        core = build_searcher(p, supernet=lambda need: stage_supernet(p, scores, baseline, need))
    known = warm.rows_for(p, baseline) if warm else []
    if warm and not (journal and journal.trials):
        core.warm(warm.known(p.space))
    rows = known + stage_search(p, scores, baseline, core, journal=journal)
    summary = summaries.search_summary(p, baseline, rows, time.perf_counter() - started)
    if warm:
        summary["search"].update(known=len(known), sources=warm.sources)
        summary["front"] = warmstart.front(warm, rows, p.budget)
    report.write_width_histograms(rows, p.space.full_widths,
                                  rundir.local_tune_dir(cfg, p.run_dir) / "widths")
    rows, pool = twostage.winner_pool(p, scores, baseline, rows, summary)  # EagleEye: train the best
    report.write_candidates(rows, p.run_dir / "candidates.csv")
    winner = pick_winner(pool, p.budget.limit)
    if winner is not None:
        spare = 0 if cfg.search.train_top or known else cfg.search.candidates - len(rows)
        winner, table = stage_reevaluate(p, scores, baseline, pool, spare=spare)
        if table:
            summary["reevaluation"] = table
    if winner is None:
        report.write_json(summary, p.run_dir / "summary.json")
        report.render(p.run_dir)
        raise summaries.no_winner(rows, p.run_dir)
    winner_state = keep_winner(p, rows, warmstart.retrain_winner(p, scores, baseline, winner), summary)
    report.write_json(summary, p.run_dir / "summary.json")
    summary.update(summaries.final_entries(stage_final(p, scores, baseline, winner, winner_state)))
    summary["speed"] = speedup(p.model, load_pruned(p.run_dir / "winner"), p.splits.input_shape,
                               batch_size=cfg.data.batch_size, device=p.device)
    report.write_json(summary, p.run_dir / "summary.json")
    report.render(p.run_dir)
    say(f"done: {p.run_dir / 'report.md'}")
    for key, entry in [(k, summary.get(k)) for k in PROTOCOLS] + [
            (f"one-shot {k}", v) for k, v in summary.get("oneshot", {}).items()]:
        if entry:
            say(f"  {key}: test {100 * entry['test_acc']:.2f}% "
                f"(baseline {100 * baseline['test_acc']:.2f}%)")
    return p.run_dir


__all__ = ["run_search", "RunDirError", "SearchFailed", "prepare", "pick_winner",
           "final_runs"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `structsearch` command")
