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
    assert len(restored.study.trials) == len(core.study.trials)
    # 5 known + 3 evaluated (under-spent samples are withdrawn as failed and widened).
    complete = [t for t in core.study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 8
    assert [t.params for t in restored.study.trials] == [t.params for t in core.study.trials]


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


class Repeater(searchers.SearchCore):
    """Proposes a fixed list of width vectors, some of them twice."""

    name = "repeater"

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None, plan=()):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        self.plan = [tuple(w) for w in plan]

    def _next(self):
        return (self.plan.pop(0), "plan") if self.plan else searchers.FINISHED


def test_a_repeated_proposal_is_answered_by_its_first_result(space):
    limit = space.macs(space.full_widths)
    a, b, c = (tuple(int(v) for v in space.uniform(r)) for r in (0.3, 0.5, 0.7))
    core = Repeater(space, limit=limit, num_candidates=4, plan=[a, b, a, a, c, b, (1, 1, 1, 1)])
    proposed = drain(core)
    assert [p.widths for p in proposed][:3] == [a, b, c]
    assert core.repeats == 3 and core.asked == 4
    assert len({p.token for p in proposed}) == len(proposed) == 4
    # Every proposal, answered or trained, is in the history with the first result.
    assert [w for w, _, _ in core.history].count(a) == 3
    assert {f for w, f, _ in core.history if w == a} == {fitness(a)}
    restored = Repeater(space, limit=limit, num_candidates=4)
    restored.load_state(core.state())
    assert restored.finished == core.finished and restored.repeats == 3


def test_a_failed_candidate_proposed_again_is_trained_again(space):
    limit = space.macs(space.full_widths)
    a = tuple(int(v) for v in space.uniform(0.5))
    core = Repeater(space, limit=limit, num_candidates=3, plan=[a, a])
    first = core.ask()
    core.tell(first.token, None)  # crashed
    second = core.ask()
    assert second.widths == a and second.token != first.token and core.repeats == 0


@pytest.mark.parametrize("budget", [0.1, 0.3, 0.6])
def test_tpe_proposals_spend_the_budget(space, budget):
    """Issue 16: TPE (one objective under the budget) evaluates structures within [0.97, 1] of
    it; NSGA-II, whose second objective is the cost, may go lower."""
    limit = budget * space.macs(space.full_widths)
    core = searchers.build("tpe", space, limit=limit, num_candidates=14, seed=3)
    proposed = drain(core)
    ratios = [space.macs(p.widths) / limit for p in proposed]
    assert len(proposed) == 14 and min(ratios) >= 0.97 and max(ratios) <= 1.0 + 1e-9, ratios
    assert any(p.origin.endswith(":filled") for p in proposed)
    nsga = drain(searchers.build("nsga2", space, limit=limit, num_candidates=14, seed=3))
    assert min(space.macs(p.widths) / limit for p in nsga) < 0.97


def test_a_proposal_of_widths_in_flight_waits_for_that_result(space):
    """Two trials at a time: widths proposed again while their first trial still trains are
    not trained twice; both proposals get the one result when it comes."""
    limit = space.macs(space.full_widths)
    a, b = (tuple(int(v) for v in space.uniform(r)) for r in (0.3, 0.5))
    core = Repeater(space, limit=limit, num_candidates=3, plan=[a, a, b, a])
    first, second = core.ask(), core.ask()
    assert (first.widths, second.widths) == (a, b) and core.repeats == 1
    state = core.state()
    core.tell(first.token, 0.25)
    assert not core.pending.keys() - {second.token}
    assert [f for w, f, _ in core.history] == [0.25, 0.25]
    third = core.ask()  # the fourth proposal (a again) is answered from the finished result
    assert third is searchers.FINISHED and core.repeats == 2 and core.asked == 2
    restored = Repeater(space, limit=limit, num_candidates=3)
    restored.load_state(state)  # a resume while the first was in flight keeps the follower
    restored.tell(first.token, 0.5)
    assert [f for w, f, _ in restored.history] == [0.5, 0.5]
