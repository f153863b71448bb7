"""A search reused at other budgets (``--from RUN_DIR``): known width vectors are never trained
again, by the searchers (no Ray) and end to end (real Tune trials, counted)."""
import json

import numpy as np
import pytest

import searchers
from minis import digits_run
from structsearch import config as C
from structsearch import models
from structsearch.report import read_candidates
from structsearch.space import WidthSpace


@pytest.fixture(scope="module")
def space():
    return WidthSpace.from_model(models.build("small_cnn", in_channels=1), (1, 28, 28), round_to=1)


def fitness(widths) -> float:
    return float(np.sum(widths)) / 1000.0


def drain(core) -> list:
    out = []
    while True:
        c = core.ask()
        if c is None or c == searchers.FINISHED:
            return out
        out.append(c)
        core.tell(c.token, fitness(c.widths))


@pytest.mark.parametrize("name", ["random", "abc", "tpe", "nsga2", "uniform", "random+uniform"])
def test_known_widths_are_answered_without_a_proposal(space, name):
    limit = 0.5 * space.macs(space.full_widths)
    first = drain(searchers.build(name, space, limit=limit, num_candidates=6, seed=0))
    known = {c.widths: fitness(c.widths) for c in first}
    again = searchers.build(name, space, limit=limit, num_candidates=6, seed=0)
    again.warm(known)
    proposed = drain(again)
    assert not {c.widths for c in proposed} & set(known)
    assert len({c.token for c in proposed}) == len(proposed)
    # The known results count for the searcher's best even when nothing new beats them.
    assert again.best[1] >= max(known.values())
    if name == "uniform":  # a deterministic sweep at the same budget: nothing new, said why
        assert proposed == [] and again.shortfall == "6 of its proposals were known from finished runs"


def test_abc_starts_from_the_best_known_sources(space):
    limit = 0.4 * space.macs(space.full_widths)
    rng = np.random.default_rng(1)
    known = {tuple(int(v) for v in w): float(i) for i, w in
             enumerate(space.sample(rng, 8, (0.8 * limit, limit)))}
    core = searchers.build("abc", space, limit=limit, num_candidates=12, seed=0,
                           params={"food_number": 4, "initial": []})
    core.warm(known)
    best = sorted(known, key=known.get)[-4:]
    assert sorted(core.widths_of(m["pos"]) for m in core.queue) == sorted(best)
    assert {m["origin"] for m in core.queue} == {"abc:known"}
    proposed = drain(core)
    assert proposed and not {c.widths for c in proposed} & set(known)
    assert core.phase_log[0] == (0, "init", 4)


def test_tpe_learns_from_known_trials(space):
    limit = 0.5 * space.macs(space.full_widths)
    rng = np.random.default_rng(2)
    known = {tuple(int(v) for v in w): 0.5 for w in space.sample(rng, 5, (0.5 * limit, limit))}
    core = searchers.build("tpe", space, limit=limit, num_candidates=3, seed=0)
    core.warm(known)
    assert len(core.study.trials) == 5
    drain(core)
    restored = searchers.build("tpe", space, limit=limit, num_candidates=3, seed=0)
    restored.load_state(core.state())  # the warm trials replay from the log like any other
    assert len(restored.study.trials) == len(core.study.trials) == 8


def test_dropnet_refuses_known_results(space):
    core = searchers.build("dropnet", space, limit=0.5 * space.macs(space.full_widths),
                           num_candidates=3, seed=0,
                           params={"scores": [np.ones(g.width) for g in space.groups]})
    with pytest.raises(ValueError, match="cannot start from known results"):
        core.warm({tuple(space.full_widths): 0.5})


# ------------------------------------------------------------------------ end to end
def trials_of(run) -> list[dict]:
    """Every trial the run's search experiment trained (its journal: one entry per trial)."""
    from structsearch.journal import journal_path, load_journal
    return load_journal(journal_path(run)).trials


@pytest.fixture(scope="module")
def chain(tmp_path_factory, ray_local):
    """A: uniform at 50% MACs; B: --from A, abc at 60%; C: --from B, uniform at 50% again."""
    from structsearch.pipeline import run_search
    root = tmp_path_factory.mktemp("warm")
    a_cfg = digits_run(search={"searcher": "uniform", "candidates": 3, "reevaluate": 2})
    a = run_search(C.from_dict(a_cfg), out=str(root / "a"))
    b_cfg = digits_run(budget={"macs_ratio": 0.6},
                       search={"searcher": "abc", "candidates": 4,
                               "params": {"abc": {"food_number": 3, "max_cycle": 5}}})
    b = run_search(C.from_dict(b_cfg), out=str(root / "b"), warm_from=[str(a)])
    c = run_search(C.from_dict(a_cfg), out=str(root / "c"), warm_from=[str(b)])
    return a, b, c


def test_warm_start_trains_no_known_width_vector(chain):
    a, b, c = chain
    rows_a = read_candidates(a / "candidates.csv")
    known = {tuple(r["widths"]) for r in rows_a}
    b_trials = trials_of(b)
    assert len(b_trials) == 4  # the candidates asked for: all new
    assert not {tuple(t["row"]["widths"]) for t in b_trials} & known
    rows_b = read_candidates(b / "candidates.csv")
    assert sorted(r["from_run"] for r in rows_b).count(str(a)) == len(rows_a)
    assert len(rows_b) == len(rows_a) + 4
    # C repeats A's sweep at A's budget: every proposal is known, so no trial runs at all.
    assert trials_of(c) == []
    summary = json.loads((c / "summary.json").read_text())
    assert summary["search"]["known"] == len(rows_b)
    winner_a = json.loads((a / "summary.json").read_text())["winner"]
    assert summary["winner"]["widths"] == winner_a["widths"]  # the best within 50% is A's
    assert not (c / "tune" / "winner_weights").exists()  # its weights come from A's winner/
    # C re-evaluates its top 2, which are A's top 2: A's re-evaluation repeats answer it.
    repeats_a = json.loads((a / "reevaluation.json").read_text())["repeats"]
    table_c = summary["reevaluation"]
    assert {e["trial_id"]: e["val_acc_repeats"] for e in table_c} == repeats_a
    assert not (c / "tune" / "reevaluation").exists(), "no re-evaluation trial ran in C"


def test_report_shows_the_best_candidate_per_budget_level(chain):
    a, b, c = chain
    summary = json.loads((c / "summary.json").read_text())
    levels = [round(e["limit"] / summary["baseline"]["macs"], 3) for e in summary["front"]]
    assert levels == [0.5, 0.6]
    rows = read_candidates(c / "candidates.csv")
    for entry in summary["front"]:
        within = [r["val_acc"] for r in rows if r["cost"] <= entry["limit"] * (1 + 1e-9)]
        assert entry["val_acc"] == max(within) and entry["candidates"] == len(within)
    report = (c / "report.md").read_text()
    assert "## Best candidate per budget level" in report and str(a) in report


def test_incomparable_or_unfinished_source_is_one_line_before_ray(chain, tmp_path, capsys):
    import yaml

    from structsearch.cli import main
    a, _, _ = chain
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(digits_run(search={"epochs": 2})))
    assert main(["search", str(cfg), "--out", str(tmp_path / "x"), "--from", str(a)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "search.epochs is 1 there and 2 here" in err[0]
    assert main(["search", str(cfg), "--out", str(tmp_path / "y"), "--from", str(tmp_path)]) == 2
    assert "not a finished structsearch run" in capsys.readouterr().err
    cfg.write_text(yaml.safe_dump(digits_run(search={"searcher": "dropnet"})))
    assert main(["search", str(cfg), "--out", str(tmp_path / "z"), "--from", str(a)]) == 2
    assert "dropnet cannot start from known results" in capsys.readouterr().err
    assert not (tmp_path / "x" / "candidates.csv").exists()


def test_python_api_warm_starts_from_a_finished_run(chain, tmp_path):
    """``structsearch.search(..., warm_from=RUN)`` is the CLI's ``--from``: A's sweep again at
    A's budget trains nothing."""
    import structsearch
    a, _, _ = chain
    cfg = digits_run(search={"searcher": "uniform", "candidates": 3})
    result = structsearch.search(cfg["model"]["name"], train=cfg["data"]["name"], budget=0.5,
                                 config=cfg, out=str(tmp_path / "api"), warm_from=a)
    assert trials_of(result.run_dir) == []
    assert result.summary["search"]["known"] == len(read_candidates(a / "candidates.csv"))
    assert result.summary["winner"]["widths"] == \
        json.loads((a / "summary.json").read_text())["winner"]["widths"]
