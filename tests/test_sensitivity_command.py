"""Li et al.'s sensitivity analysis as a command and as a seed: per-group curves, their width
vector (sensitive groups whole, one ratio for the rest), and a mini search seeded with it."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from minis import digits_run
from structsearch import config as C
from structsearch import models
from structsearch.report import read_candidates
from structsearch.sensitivity import group_drops, li_widths, read_csv
from structsearch.space import WidthSpace

ROOT = Path(__file__).resolve().parent.parent


def _rows(space, drops):
    """Synthetic curves: group g loses drops[g] * (ratio / 0.5) accuracy."""
    rows = []
    for g, group in enumerate(space.groups):
        for ratio in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9):
            rows.append({"group": g, "name": group.name, "ratio": ratio, "width": group.width,
                         "macs": 0, "val_acc": 0.9 - drops[g] * ratio / 0.5})
    return rows


def test_li_readout_keeps_sensitive_groups_whole_and_one_ratio_for_the_rest():
    space = WidthSpace.from_model(models.build("cifar_resnet20"), (3, 32, 32))
    drops = np.full(len(space), 0.005)
    drops[[0, 3]] = [0.3, 0.1]  # two sensitive groups
    rows = _rows(space, drops)
    np.testing.assert_allclose(group_drops(rows), drops)
    limit = 0.7 * space.full_macs
    w = li_widths(space, rows, limit)
    full = np.asarray(space.full_widths)
    assert w[0] == full[0] and w[3] == full[3], "sensitive groups are kept whole"
    rest = [g for g in range(len(space)) if g not in (0, 3)]
    ratios = w[rest] / full[rest]
    assert ratios.max() - ratios.min() <= 0.1, "one common ratio (up to rounding) for the rest"
    assert space.macs(w) <= limit and space.macs(w) >= 0.9 * limit
    # A budget the whole sensitive groups cannot meet: the less sensitive one gives way first.
    tight = li_widths(space, rows, 1.02 * space.min_macs)
    assert space.macs(tight) <= 1.02 * space.min_macs and tight[3] < full[3]


def test_sensitivity_command_writes_curves_plot_and_widths(tmp_path):
    out = tmp_path / "sens"
    res = subprocess.run([sys.executable, "-m", "structsearch.cli", "sensitivity",
                          str(ROOT / "configs" / "demo.yaml"), "--out", str(out),
                          "--set", "baseline.epochs=1", "--set", "data.name=digits"],
                         capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = read_csv(out / "sensitivity.csv")
    groups = {r["group"] for r in rows}
    assert len(rows) == len(groups) * 10, "the baseline and 9 ratios per group"
    assert all(0 <= r["val_acc"] <= 1 for r in rows)
    # Removing 90% of a group costs accuracy against the unpruned baseline in some group.
    assert max(group_drops(rows, at=0.9)) > 0.05
    assert (out / "sensitivity.png").stat().st_size > 10_000
    result = json.loads((out / "sensitivity.json").read_text())
    budget = json.loads((out / "baseline" / "metrics.json").read_text())["macs"] * 0.5
    assert result["macs"] <= budget and len(result["widths"]) == len(groups)


def test_sensitivity_seed_in_a_mini_search_with_lasso_reconstruction(tmp_path, ray_local):
    """One mini search for two checks (the suite's time): the sensitivity seed runs, and
    criterion lasso in He et al.'s sequential order selects and reconstructs every candidate
    (candidates.csv's reconstructed; the joint order's builder is tested in test_reconstruction)."""
    from structsearch.pipeline import run_search

    cfg = C.from_dict(digits_run(search={"searcher": "seeded", "criterion": "lasso",
                                         "criteria": {"lasso": {"order": "sequential"}},
                                         "seeds": ["sensitivity", "uniform"]}))
    run = run_search(cfg, out=str(tmp_path / "run"))
    rows = read_candidates(run / "candidates.csv")
    assert {r["origin"] for r in rows} == {"seed:sensitivity", "seed:uniform"}
    assert all(r["status"] == "ok" and r["reconstructed"] for r in rows)
    assert (run / "sensitivity.csv").is_file()
    assert "![sensitivity](sensitivity.png)" in (run / "report.md").read_text()
