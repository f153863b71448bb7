"""The one-stage commands: ``structsearch train`` (the baseline only) and ``structsearch
sensitivity`` (the baseline and Li et al.'s per-group sensitivity curves)."""
from __future__ import annotations

from pathlib import Path

from . import config as config_mod
from . import report, rundir
from .config import Config
from .needs import sensitivity_curves
from .pipeline import stage_baseline
from .preflight import prepare, say
from .sensitivity import group_drops, li_widths


def run_sensitivity(cfg: Config, *, out: str | None = None, config_path: str | None = None) -> Path:
    """``structsearch sensitivity``: the baseline, Li et al.'s per-group curves
    (sensitivity.csv, sensitivity.png) and their width vector under the budget
    (sensitivity.json; the same vector the ``sensitivity`` seed proposes)."""
    p = _baseline(cfg, out, config_path)
    run_dir = p.run_dir
    rows = sensitivity_curves(p)
    widths = li_widths(p.space, rows, p.budget.limit, cost=p.view)
    drops = group_drops(rows)
    result = {"widths": [int(w) for w in widths], "macs": int(p.space.macs(widths)),
              "macs_ratio": p.space.macs(widths) / p.space.full_macs,
              "groups": p.space.names, "drop_at_half": [float(d) for d in drops]}
    report.write_json(result, run_dir / "sensitivity.json")
    say(f"sensitivity: {run_dir / 'sensitivity.csv'}, {run_dir / 'sensitivity.png'}; Li et al.'s "
        f"widths {result['widths']} at {100 * result['macs_ratio']:.1f}% MACs")
    return run_dir


def run_baseline(cfg: Config, *, out: str | None = None, config_path: str | None = None) -> Path:
    """``structsearch train``: only the baseline stage."""
    return _baseline(cfg, out, config_path).run_dir


def _baseline(cfg: Config, out: str | None, config_path: str | None):
    """A new run directory with its checked inputs, config.yaml and baseline."""
    run_dir = rundir.open_run_dir(out, config_path, resume=False)
    p = prepare(cfg, run_dir)
    config_mod.dump(cfg, run_dir / "config.yaml", extra={"split": p.splits.summary()})
    stage_baseline(p)
    return p
