"""End-to-end mini search on scikit-learn's digits with real Ray Tune trials (CPU)."""
import json
import subprocess
import sys

import pytest
import torch

from minis import digits_run
from structsearch import config as C
from structsearch import data as D
from structsearch import load_pruned
from structsearch.report import CANDIDATE_COLUMNS, read_candidates
from structsearch.train import evaluate

MINI = digits_run(baseline={"epochs": 3},
                  search={"searcher": "random+uniform", "resources": {"cpu": 1, "gpu": 0},
                          "reevaluate": 2},
                  final={"finetune_epochs": 1, "finetune_lr": 0.01, "scratch": ["E", "B"],
                         "baselines": ["uniform", "global"]})


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory, ray_local):
    from structsearch.pipeline import run_search

    out = tmp_path_factory.mktemp("run") / "mini"
    cfg = C.from_dict(MINI)
    return cfg, run_search(cfg, out=str(out))


def test_run_directory_contract(mini_run):
    _, run = mini_run
    for name in ["config.yaml", "baseline/metrics.json", "baseline/weights.pt", "candidates.csv",
                 "winner/arch.json", "winner/weights.pt", "summary.json", "report.md", "pareto.png",
                 "widths.png", "winner/finetune/arch.json", "winner/scratch_e/weights.pt",
                 "winner/scratch_b/metrics.json"]:
        assert (run / name).is_file(), name
    assert (run / "tune" / "search").is_dir()
    assert any((run / "tune" / "search").rglob("events.out.tfevents*")), "TensorBoard events per trial"
    header = (run / "candidates.csv").read_text().splitlines()[0].split(",")
    assert header[:11] == CANDIDATE_COLUMNS[:11]


def test_candidates_within_budget_and_counted(mini_run):
    cfg, run = mini_run
    rows = read_candidates(run / "candidates.csv")
    summary = json.loads((run / "summary.json").read_text())
    trials = [d for d in (run / "tune" / "search").iterdir() if d.is_dir()]
    assert len(rows) == len(trials) >= 4
    budget = summary["budget"]["max_macs"]
    assert budget == pytest.approx(0.5 * summary["baseline"]["macs"])
    for r in rows:
        assert r["status"] == "ok"
        assert r["macs"] <= budget
        assert 0.0 <= r["val_acc"] <= 1.0
    assert {r["origin"] for r in rows} == {"random", "uniform"}
    best = max(r["val_acc"] for r in rows)
    assert summary["winner"]["val_acc"] == pytest.approx(best)


def test_winner_reloads_and_reproduces_accuracy(mini_run):
    cfg, run = mini_run
    summary = json.loads((run / "summary.json").read_text())
    model = load_pruned(run / "winner")
    splits = D.load(D.DataSpec(name="digits", val_fraction=0.2, seed=0))
    acc = evaluate(model, splits.val)["top1"]
    assert acc == pytest.approx(summary["winner"]["val_acc"], abs=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == summary["winner"]["params"] < summary["baseline"]["params"]


def test_final_stage_reports_all_protocols(mini_run):
    cfg, run = mini_run
    summary = json.loads((run / "summary.json").read_text())
    for key in ("finetune", "scratch_e", "scratch_b"):
        entry = summary[key]
        assert 0.1 < entry["test_acc"] <= 1.0, key  # above chance on 10 classes
    assert summary["scratch_e"]["epochs"] == 3
    ratio = summary["baseline"]["macs"] / summary["winner"]["macs"]
    assert summary["scratch_b"]["epochs"] == int(3 * ratio), "uncapped by default, int() as Liu et al."
    speed = summary["speed"]
    assert speed["baseline_ms"] > 0 and speed["winner_ms"] > 0
    # Interleaved timings under both runtimes (onnxruntime is in the test extra), at batch 1
    # and the training batch; the headline is torch's at the training batch.
    got = {(r["runtime"], r["batch_size"]) for r in speed["runs"]}
    assert got == {(rt, b) for rt in ("torch", "onnxruntime") for b in (1, cfg.data.batch_size)}
    assert speed["batch_size"] == cfg.data.batch_size and speed["method"].startswith("interleaved")
    assert all(r["speedup"] == pytest.approx(r["baseline_ms"] / r["winner_ms"]) for r in speed["runs"])
    report = (run / "report.md").read_text()
    assert "Measured forward latency" in report and "| onnxruntime | 1 |" in report
    # The one-shot baselines at the same budget, trained like the winner, beside it.
    oneshot = summary["oneshot"]
    assert set(oneshot) == {"uniform", "global:l1"}
    limit = summary["budget"]["max_macs"]
    for name, entry in oneshot.items():
        assert entry["macs"] <= limit and 0.1 < entry["test_acc"] <= 1.0, name
        assert entry["epochs"] == 1 and entry["pre_epochs"] == cfg.search.epochs
        assert (run / "oneshot" / name.replace(":", "_") / "weights.pt").is_file()
    assert "## Was the search worth it?" in report and "| one-shot global:l1 |" in report
    for word in ("baseline", "fine-tune", "Scratch-E", "Scratch-B", "pareto.png", "widths.png"):
        assert word in report


def test_report_and_export_commands(mini_run, tmp_path):
    _, run = mini_run
    (run / "report.md").unlink()
    res = subprocess.run([sys.executable, "-m", "structsearch.cli", "report", str(run)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (run / "report.md").is_file()
    out = tmp_path / "model.pt"
    res = subprocess.run([sys.executable, "-m", "structsearch.cli", "export", str(run), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    scripted = torch.jit.load(str(out))
    reference = load_pruned(run / "winner" / "finetune").eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(scripted(x), reference(x), atol=1e-5)


def test_refuses_non_empty_run_dir(mini_run):
    from structsearch.rundir import RunDirError, open_run_dir

    _, run = mini_run
    with pytest.raises(RunDirError, match="--resume"):
        open_run_dir(str(run), None, resume=False)


def test_top_candidates_are_reevaluated_and_the_winner_is_the_best_mean(mini_run):
    from structsearch.report import read_candidates
    _, run = mini_run
    summary = json.loads((run / "summary.json").read_text())
    table = summary["reevaluation"]
    rows = read_candidates(run / "candidates.csv")
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -r["val_acc"])
    assert [e["trial_id"] for e in table] != [] and len(table) == 2
    assert {e["trial_id"] for e in table} == {r["trial_id"] for r in ok[:2]}
    for e in table:
        assert len(e["val_acc_repeats"]) == 1 and 0.0 <= e["val_acc_repeats"][0] <= 1.0
        runs = [e["val_acc_search"]] + e["val_acc_repeats"]
        assert e["val_acc_mean"] == pytest.approx(sum(runs) / len(runs))
    assert summary["winner"]["trial_id"] == max(table, key=lambda e: e["val_acc_mean"])["trial_id"]
    assert "## Re-evaluation of the top candidates" in (run / "report.md").read_text()
    # A repeat is trained under another seed: not a copy of the search run.
    assert any(e["val_acc_repeats"][0] != e["val_acc_search"] for e in table)


def test_without_reevaluation_the_single_best_run_wins():
    from structsearch.reevaluate import top_candidates
    rows = [{"trial_id": t, "status": "ok", "val_acc": v, "cost": c, "macs": m}
            for t, v, c, m in (("a", 0.5, 1.0, 10), ("b", 0.7, 1.0, 9), ("c", 0.9, 2.0, 8),
                               ("d", 0.7, 0.5, 5))]
    assert [r["trial_id"] for r in top_candidates(rows, 1.0, 1)] == ["d"]  # tie: fewer MACs
    assert [r["trial_id"] for r in top_candidates(rows, 1.0, 3)] == ["d", "b", "a"]


def test_candidates_a_searcher_leaves_go_to_reevaluation(tmp_path, ray_local):
    """The seeded searcher proposes its 2 seeds of the 6 candidates asked for: the 4 it leaves
    become 2 more re-evaluation seeds for each of the top 2 (3 repeats each)."""
    from structsearch.pipeline import run_search
    cfg = digits_run(baseline={"epochs": 1},
                     search={"searcher": "seeded", "seeds": ["uniform", "global"], "candidates": 6,
                             "reevaluate": 2, "reevaluate_seeds": 1})
    run = run_search(C.from_dict(cfg), out=str(tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["search"]["evaluated"] == 2
    table = summary["reevaluation"]
    assert len(table) == 2 and [len(e["val_acc_repeats"]) for e in table] == [3, 3]
    assert len({tuple(e["val_acc_repeats"]) for e in table}) == 2  # real, separate trainings
