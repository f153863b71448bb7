"""Re-evaluation by the final stage's fine-tune (search.reevaluate_by: finetune)."""
import json

import pytest

from minis import digits_run
from structsearch import config as C


def test_fine_tune_reevaluation_is_the_final_stages_run(tmp_path, ray_local, monkeypatch):
    """The top 2 and the one-shot structures are fine-tuned; the winner is the best by
    fine-tuned validation accuracy, and its final fine-tune is the same run (same number).
    The final stage trains its runs here (it would adopt the re-evaluation's, see below)."""
    from structsearch import pipeline
    from structsearch.pipeline import run_search
    monkeypatch.setattr(pipeline, "adopt_reevaluated", lambda *args: {})
    from structsearch.report import read_candidates
    cfg = digits_run(baseline={"epochs": 1},
                     search={"searcher": "random+uniform", "candidates": 4, "reevaluate": 2,
                             "reevaluate_by": "finetune"},
                     final={"finetune_epochs": 2, "finetune_lr": 0.01,
                            "baselines": ["uniform", "global"]})
    run = run_search(C.from_dict(cfg), out=str(tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    table = summary["reevaluation"]
    rows = [r for r in read_candidates(run / "candidates.csv") if r["status"] == "ok"]
    best = sorted(rows, key=lambda r: (-r["val_acc"], r["macs"]))[:2]
    assert {r["trial_id"] for r in best} <= {e["trial_id"] for e in table}
    # The uniform searcher's candidate is the one-shot uniform structure: shortlisted even when
    # not among the top 2; global:l1's structure, which no candidate has, is trained here.
    uniform = summary["oneshot"]["uniform"]
    tagged = [e for e in table if e["oneshot"] == "uniform"]
    assert len(tagged) == 1
    assert tagged[0]["widths"] == next(r["widths"] for r in rows if r["origin"] == "uniform")
    assert not any(r["widths"] == summary["oneshot"]["global:l1"]["widths"] for r in rows)
    extra = next(e for e in table if e["oneshot"] == "global:l1")
    assert extra["trial_id"] == "oneshot:global:l1" and 0.1 < extra["val_acc_search"] <= 1.0
    assert summary["oneshot"]["global:l1"]["val_acc"] == pytest.approx(extra["val_acc_finetuned"],
                                                                        abs=1e-9)
    assert [e["val_acc_finetuned"] for e in table] == sorted(
        (e["val_acc_finetuned"] for e in table), reverse=True)
    # Search candidates fine-tune from their search checkpoints (2 epochs); a one-shot structure
    # the search never trained is trained as a candidate first (1 + 2).
    assert all(e["epochs"] == (3 if e["trial_id"].startswith("oneshot:") else 2) for e in table)
    assert summary["winner"]["trial_id"] == table[0]["trial_id"]
    # The re-evaluation trained exactly the run the final stage gives the winner / a baseline.
    assert summary["finetune"]["val_acc"] == pytest.approx(table[0]["val_acc_finetuned"], abs=1e-9)
    assert uniform["val_acc"] == pytest.approx(tagged[0]["val_acc_finetuned"], abs=1e-9)
    assert "fine-tuned" in (run / "report.md").read_text()


def test_shortlist_adds_one_shot_structures_once():
    from structsearch.reevaluate import finetune_shortlist
    rows = [{"trial_id": t, "status": "ok", "val_acc": v, "cost": c, "macs": m, "widths": w}
            for t, v, c, m, w in (("a", 0.9, 1.0, 10, [4, 4]), ("b", 0.8, 1.0, 9, [2, 6]),
                                  ("c", 0.7, 1.0, 8, [3, 5]), ("d", 0.95, 2.0, 8, [6, 6]),
                                  ("e", 0.6, 1.0, 7, [3, 5]))]
    got, missing = finetune_shortlist(rows, 1.0, 1, {"uniform": [3, 5], "global:l1": [4, 4],
                                                     "over": [6, 6], "new": [1, 7]})
    # a is top and global:l1's; c (not e: the better row of the same widths) is uniform's;
    # d is over the budget (so "over" counts as missing, as "new" does).
    assert [(r["trial_id"], r["oneshot"]) for r in got] == [("a", "global:l1"), ("c", "uniform")]
    assert missing == {"over": [6, 6], "new": [1, 7]}


def test_warm_start_reuses_known_fine_tune_scores(tmp_path, ray_local):
    """A run --from a finished one at the same budget trains nothing: its candidates and their
    fine-tuned scores are known. Under another fine-tune protocol the scores are not reused."""
    from structsearch.pipeline import run_search
    from structsearch.reevaluate import finetune_protocol, known_finetuned
    cfg = digits_run(search={"searcher": "uniform", "candidates": 3, "reevaluate": 2,
                             "reevaluate_by": "finetune"},
                     final={"finetune_epochs": 1, "finetune_lr": 0.01, "baselines": ["uniform"]})
    a = run_search(C.from_dict(cfg), out=str(tmp_path / "a"))
    # A's final stage adopted the winner's and the baseline's fine-tunes: no final trial ran.
    summary_a = json.loads((a / "summary.json").read_text())
    assert not (a / "tune" / "final").exists()
    assert (a / "winner" / "finetune" / "weights.pt").is_file()
    assert summary_a["finetune"]["val_acc"] == pytest.approx(
        summary_a["reevaluation"][0]["val_acc_finetuned"], abs=1e-9)
    assert 0.1 < summary_a["oneshot"]["uniform"]["test_acc"] <= 1.0
    c = run_search(C.from_dict(cfg), out=str(tmp_path / "c"), warm_from=[str(a)])
    saved = json.loads((a / "reevaluation.json").read_text())
    table = json.loads((c / "summary.json").read_text())["reevaluation"]
    assert len(table) >= 2 and all(e["epochs"] == 0 for e in table)
    assert {e["trial_id"]: e["val_acc_finetuned"] for e in table} == saved["finetuned"]
    assert not (c / "tune" / "reevaluation").exists(), "no re-evaluation trial ran in C"
    rows = [{"trial_id": t, "from_run": str(a)} for t in saved["finetuned"]]
    other = C.from_dict(digits_run(final={"finetune_epochs": 2, "finetune_lr": 0.01}))
    assert known_finetuned(rows, finetune_protocol(C.from_dict(cfg))) == saved["finetuned"]
    assert known_finetuned(rows, finetune_protocol(other)) == {}


def test_a_failed_fine_tune_never_wins():
    from structsearch.reevaluate import choose_finetuned
    rows = [{"trial_id": t, "origin": "x", "widths": [1], "macs_ratio": 0.1, "val_acc": v,
             "macs": m} for t, v, m in (("a", 0.9, 5), ("b", 0.8, 4), ("oneshot:u", None, 3))]
    winner, table = choose_finetuned(rows, {"a": None, "b": 0.5, "oneshot:u": 0.5}, {})
    assert winner["trial_id"] == "oneshot:u"  # the tie goes to fewer MACs
    assert [e["trial_id"] for e in table] == ["oneshot:u", "b", "a"]
    winner, table = choose_finetuned(rows, {"a": None, "b": None, "oneshot:u": None}, {})
    assert winner["trial_id"] == "a"  # every fine-tune failed: the best search row


def test_adaptive_bn_and_a_one_shot_structure_the_search_did_not_train(tmp_path, ray_local,
                                                                       monkeypatch):
    """With the adaptive-BN fitness a candidate is its recalibrated cut, and a one-shot baseline
    is brought to the same point before its fine-tune: its re-evaluation is its final run. When
    global:l1's structure (no search candidate) wins, it is trained as a candidate for winner/
    and its fine-tune is the one-shot baseline's run. The final stage trains its runs here."""
    from structsearch import pipeline, reevaluate
    from structsearch.pipeline import run_search
    choose = reevaluate.choose_finetuned

    def prefer_global(shortlist, finetuned, epochs):
        finetuned = dict(finetuned, **{"oneshot:global:l1": 2.0})  # above any accuracy
        return choose(shortlist, finetuned, epochs)

    monkeypatch.setattr(reevaluate, "choose_finetuned", prefer_global)
    monkeypatch.setattr(pipeline, "adopt_reevaluated", lambda *args: {})
    cfg = digits_run(baseline={"epochs": 1},
                     search={"searcher": "seeded", "seeds": ["uniform"], "candidates": 1,
                             "fitness": "adaptive_bn", "reevaluate": 1,
                             "reevaluate_by": "finetune"},
                     final={"finetune_epochs": 1, "finetune_lr": 0.01,
                            "baselines": ["uniform", "global"]})
    run = run_search(C.from_dict(cfg), out=str(tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    table = {e["oneshot"]: e for e in summary["reevaluation"]}
    assert table["uniform"]["epochs"] == 1  # adaptive BN trains nothing before the fine-tune
    assert summary["oneshot"]["uniform"]["val_acc"] == pytest.approx(
        table["uniform"]["val_acc_finetuned"], abs=1e-9)
    shot = summary["oneshot"]["global:l1"]
    assert table["global:l1"]["trial_id"] == "oneshot:global:l1"
    measured = json.loads((run / "reevaluation.json").read_text())["finetuned"]  # not the 2.0
    assert shot["val_acc"] == pytest.approx(measured["oneshot:global:l1"], abs=1e-9)
    assert summary["winner"]["origin"] == "oneshot:global:l1"
    assert summary["winner"]["widths"] == shot["widths"]
    assert 0.05 < summary["winner"]["val_acc"] <= 1.0  # its candidate's (recalibrated) val acc
    assert (run / "tune" / "winner_weights").is_dir()
    assert summary["finetune"]["test_acc"] == shot["test_acc"]  # the same run: the same images
