"""What the final stage trains: the winner by each of Liu et al.'s protocols, and the one-shot
baselines at the same budget by the winner's protocol (see ``final.baselines``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from . import models, report
from .config import Config, fine_tune_epochs, scratch_b_cap
from .preflight import Prepared, say
from .needs import seed_proposals
from .surgery import prune, save_pruned

# What a final-stage run's metrics.json keeps.
FINAL_METRICS = ("val_acc", "test_acc", "test_loss", "epochs", "lr", "seconds")


def final_runs(cfg: Config, baseline: dict, winner: dict) -> list[dict]:
    """The final stage's runs (Liu et al.): fine-tune, Scratch-E, Scratch-B (epochs scaled by
    baseline MACs / pruned MACs, as ``int()`` like the official code; capped by
    :func:`~structsearch.config.scratch_b_cap`: Liu et al. cap at 2x on ImageNet only); the
    fine-tune's epochs from :func:`~structsearch.config.fine_tune_epochs`."""
    f, b = cfg.final, cfg.baseline
    scratch_lr = f.scratch_lr or b.lr
    runs = [{"protocol": "finetune", "epochs": fine_tune_epochs(cfg), "lr": f.finetune_lr,
             "schedule": "constant"}]
    if "E" in f.scratch:
        runs.append({"protocol": "scratch_e", "epochs": b.epochs, "lr": scratch_lr, "schedule": b.schedule})
    if "B" in f.scratch:
        factor = baseline["macs"] / max(winner["macs"], 1)
        if scratch_b_cap(cfg) is not None:
            factor = min(factor, scratch_b_cap(cfg))
        runs.append({"protocol": "scratch_b", "epochs": int(b.epochs * factor),
                     "lr": scratch_lr, "schedule": b.schedule})
    for r in runs:
        r["widths"] = list(winner["widths"])
        r["compile"] = bool(f.compile)
        r["key"] = r["protocol"]
    return runs


def oneshot_runs(p: Prepared) -> list[dict]:
    """The one-shot baselines at the run's budget (``final.baselines``), each trained like the
    winner: a candidate's training from the baseline's weights (the run's criterion picks the
    channels), then the winner's fine-tune."""
    f = p.cfg.final
    if not f.baselines:
        return []
    runs = []
    for proposal in seed_proposals(p, list(f.baselines)):
        name = proposal["origin"] if proposal["origin"] != "global" else \
            f"global:{p.cfg.search.criterion}"
        runs.append({"key": f"oneshot:{name}", "protocol": "finetune", "source": "oneshot",
                     "name": name, "widths": proposal["widths"], "epochs": fine_tune_epochs(p.cfg),
                     "lr": f.finetune_lr, "schedule": "constant", "compile": bool(f.compile)})
    return runs


def run_dir_of(p: Prepared, run: dict) -> Path:
    """Where a final-stage run's model and metrics go: winner/<protocol> or oneshot/<name>."""
    if run.get("source") == "oneshot":
        return p.run_dir / "oneshot" / run["name"].replace(":", "_").replace("@", "_")
    return p.run_dir / "winner" / run["protocol"]


def finished_runs(p: Prepared, runs: list[dict]) -> dict:
    """The entries of the runs whose metrics.json an earlier attempt at this run wrote."""
    files = {r["key"]: run_dir_of(p, r) / "metrics.json" for r in runs}
    return {k: json.loads(f.read_text()) for k, f in files.items() if f.is_file()}


def measure_untrained(p: Prepared, runs: dict, setup, baseline_state: dict,
                      winner_state: dict) -> dict:
    """Take the runs with nothing to train (the winner's 0-epoch fine-tune) out of ``runs`` and
    measure each here, as the search left it, without a Ray trial; returns their entries."""
    from trainables.final import final_run, trains_nothing

    done = {}
    for key in [k for k, r in runs.items() if trains_nothing(r)]:
        run = runs.pop(key)
        with torch.random.fork_rng():
            entry, model = final_run(run, setup, baseline_state, winner_state, p.splits, p.device)
        say(f"final: {key} {run['epochs']} ep: val {100 * entry['val_acc']:.2f}%")
        out = run_dir_of(p, run)
        save_pruned(model.cpu(), p.space, run["widths"], out)
        done[key] = {k: entry.get(k) for k in FINAL_METRICS}
        report.write_json(done[key], out / "metrics.json")
    return done


def save_trained(p: Prepared, widths, checkpoint, out: Path, extra: dict | None = None) -> dict:
    """Save a trial's trained weights (its Tune checkpoint, or the checkpoint's path/URI) as
    ``out/arch.json`` + ``out/weights.pt``; returns the state_dict."""
    model = trained_model(p, widths, checkpoint)
    save_pruned(model, p.space, widths, out, extra=extra)
    return model.state_dict()


def trained_model(p: Prepared, widths, checkpoint) -> torch.nn.Module:
    """The pruned architecture of ``widths`` with a trial checkpoint's weights."""
    from trainables.checkpoint import checkpoint_weights
    model = prune(models.build(p.cfg.model.name, **p.model_kwargs), p.space, widths)
    model.load_state_dict(checkpoint_weights(checkpoint))
    return model


def keep_final_results(p: Prepared, runs: dict, results, baseline: dict) -> dict:
    """Save each final-stage trial that finished (``runs``: key -> run; ``results``: Tune's)
    as RUN_DIR/winner/<protocol>/ or oneshot/<name>/ with its metrics.json; returns their
    entries. A failed run is said; one cut short by Ctrl-C is left for --resume."""
    done = {}
    for result in results:
        key = result.config["protocol"]
        if result.error is not None:
            say(f"final: {key} failed: {str(result.error).splitlines()[-1][:200]}")
            continue
        if result.checkpoint is None or "test_acc" not in (result.metrics or {}):
            continue  # stopped before its last report
        run = runs[key]
        entry = {k: result.metrics.get(k) for k in FINAL_METRICS}
        out = run_dir_of(p, run)
        save_trained(p, run["widths"], result.checkpoint, out)
        done[key] = write_entry(p, run, entry, baseline, out)
    return done


def write_entry(p: Prepared, run: dict, entry: dict, baseline: dict, out: Path) -> dict:
    """``out/metrics.json`` of a final-stage run (a one-shot baseline's with its structure)."""
    if run.get("source") == "oneshot":
        w = run["widths"]
        entry.update(widths=w, macs=int(p.space.macs(w)), params=int(p.space.params(w)),
                     macs_ratio=float(p.space.macs(w)) / baseline["macs"],
                     cost=float(p.view.cost(w)), pre_epochs=p.cfg.search.epochs)
    report.write_json(entry, out / "metrics.json")
    return entry


def adopt_reevaluated(p: Prepared, runs: dict, winner: dict, baseline: dict) -> dict:
    """Take out of ``runs`` the fine-tunes a ``reevaluate_by: finetune`` re-evaluation already
    trained (the winner's and the one-shot baselines': the same runs, see
    :mod:`~structsearch.reevaluate`) under the same epochs and lr, measure each here from its
    checkpoint and save it as a finished run; returns their entries. A checkpoint that cannot
    be read leaves its run to train."""
    from .train import evaluate
    file = p.run_dir / "reevaluation.json"
    saved = json.loads(file.read_text()) if file.is_file() else {}
    kept, protocol = saved.get("finetuned_runs") or {}, saved.get("finetune") or {}
    trial_of = dict({f"oneshot:{n}": t for n, t in (saved.get("oneshot") or {}).items()},
                    finetune=winner["trial_id"])
    done = {}
    for key, trial in trial_of.items():
        run = runs.get(key)
        if run is None or trial not in kept or (int(run["epochs"]), float(run["lr"])) != (
                protocol.get("epochs"), protocol.get("lr")):
            continue
        out = run_dir_of(p, run)
        try:
            model = trained_model(p, run["widths"], kept[trial]["checkpoint"])
        except (OSError, RuntimeError, ValueError) as exc:
            say(f"final: {key} trains again (its re-evaluation checkpoint: {exc})")
            continue
        save_pruned(model, p.space, run["widths"], out)
        val, test = (evaluate(model, split, device=p.device) for split in (p.splits.val, p.splits.test))
        entry = {"val_acc": val["top1"], "test_acc": test["top1"], "test_loss": test["loss"],
                 "epochs": run["epochs"], "lr": run["lr"], "seconds": kept[trial]["seconds"]}
        done[key] = write_entry(p, runs.pop(key), entry, baseline, out)
        say(f"final: {key} {run['epochs']} ep is re-evaluation run {trial}: val "
            f"{100 * entry['val_acc']:.2f}%")
    return done
