"""summary.json: what a run found, assembled from its stages' results."""
from __future__ import annotations

import platform
from pathlib import Path

from . import __version__


class SearchFailed(RuntimeError):
    """The search ran but produced nothing to keep (e.g. every candidate failed)."""


def versions() -> dict:
    from importlib.metadata import version
    import torch
    # Read Ray's version from its metadata: importing Ray is left to the search stage.
    return {"structsearch": __version__, "torch": torch.__version__, "ray": version("ray"),
            "python": platform.python_version(), "platform": platform.platform()}


def budget_summary(p, baseline: dict) -> dict:
    b = p.budget
    if b.kind == "latency":
        return {"latency_ms": b.limit, "max_macs": None, "macs_ratio": None,
                "baseline_latency_ms": p.view.full}
    if b.kind == "params":
        return {"params": b.limit, "max_macs": None, "macs_ratio": None,
                "params_ratio": b.limit / baseline["params"]}
    return {"max_macs": b.limit, "macs_ratio": b.limit / baseline["macs"]}


def search_summary(p, baseline: dict, rows: list[dict], seconds: float) -> dict:
    s = p.cfg.search
    return {
        "baseline": baseline,
        "budget": budget_summary(p, baseline),
        "space": {"groups": p.space.names, "full_widths": p.space.full_widths,
                  "round_to": p.space.round_to, "min_ratio": p.space.min_ratio,
                  "frozen": [{"group": g, "reason": why} for g, why in p.space.frozen]},
        "search": {"searcher": s.searcher, "criterion": s.criterion, "evaluated": len(rows),
                   "errors": sum(r["status"] != "ok" for r in rows), "epochs": s.epochs,
                   "seconds": round(seconds, 1)},
        "winner": None, "finetune": None, "scratch_e": None, "scratch_b": None,
        "versions": versions(),
    }


def no_winner(rows: list[dict], run_dir: Path) -> SearchFailed:
    failed = sum(r["status"] == "error" for r in rows)
    if failed < len(rows):
        return SearchFailed(f"no candidate finished within the budget ({failed} of {len(rows)} "
                            f"failed); see {run_dir / 'candidates.csv'}")
    return SearchFailed(f"every candidate failed ({len(rows)} of {len(rows)}); see "
                        f"{run_dir / 'candidates.csv'} for the errors")


def winner_entry(winner: dict, budget) -> dict:
    """The summary's ``winner`` from its candidates.csv row."""
    entry = {k: winner[k] for k in ("trial_id", "origin", "widths", "macs", "params", "macs_ratio",
                                    "val_acc", "epochs")}
    entry["searcher"] = winner["searcher"]
    if budget.kind == "latency":
        entry["latency_ms"] = winner["cost"]
    return entry


def final_entries(done: dict) -> dict:
    """The final stage's results as summary.json keys: one per winner protocol, and
    ``oneshot`` mapping each one-shot baseline's name to its result."""
    out = {k: v for k, v in done.items() if not k.startswith("oneshot:")}
    out["oneshot"] = {k.split(":", 1)[1]: v for k, v in done.items() if k.startswith("oneshot:")}
    return out
