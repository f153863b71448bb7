"""The searcher families through the real pipeline on bundled data (Ray trials, CPU)."""
import json

from structsearch import config as C
from minis import digits_run
from structsearch.report import read_candidates


def test_abc_with_seeds_and_random_control(tmp_path, ray_local):
    from structsearch.pipeline import run_search

    cfg = C.from_dict(digits_run(
        search={"searcher": "abc+random", "candidates": 26, "seeds": ["uniform", "global:l1"],
                "abc": {"food_number": 3, "food_limit": 1, "max_cycle": 2}}))
    run = run_search(cfg, out=str(tmp_path / "run"))
    rows = read_candidates(run / "candidates.csv")
    origins = {r["origin"] for r in rows}
    assert {"seed:uniform", "seed:global:l1", "abc:init", "abc:employed", "abc:onlooker",
            "random"} <= origins, origins
    assert {r["searcher"] for r in rows} == {"abc", "random"}
    assert len({tuple(r["widths"]) for r in rows if r["searcher"] == "abc"}) == \
        sum(r["searcher"] == "abc" for r in rows), "ABC never trains a width vector twice"
    budget = json.loads((run / "summary.json").read_text())["budget"]["max_macs"]
    assert all(r["macs"] <= budget for r in rows)
    assert (run / "pareto.png").stat().st_size > 10_000


def test_dropnet_rescores_each_trained_step_and_keeps_subsets(tmp_path, ray_local):
    from structsearch import plain

    from structsearch.pipeline import run_search

    cfg = C.from_dict(digits_run(
        budget={"macs_ratio": 0.6},
        search={"searcher": "dropnet", "lr": 0.05, "params": {"dropnet": {"p": 0.3, "kappa": 0.1}}}))
    run = run_search(cfg, out=str(tmp_path / "run"))
    rows = sorted(read_candidates(run / "candidates.csv"), key=lambda r: r["origin"])
    assert [r["origin"] for r in rows] == [f"dropnet:step{i}" for i in range(4)]
    sizes = [sum(r["widths"]) for r in rows]
    assert all(b < a for a, b in zip(sizes, sizes[1:])), sizes
    assert all(b >= 0.6 * a for a, b in zip(sizes, sizes[1:])), "each step drops about p = 30%"
    # The searcher's saved state: every step was re-scored from its own trained activations.
    states = sorted(run.rglob("searcher-state-*.pkl"))
    assert states, "Tune saves the searcher's state in the run directory"
    core = plain.decode(json.loads(states[-1].read_text()))["core"]  # JSON, never a pickle
    assert core["unscored"] == 0
    assert [len(k) for k in core["kept"]] == rows[-1]["widths"], "the last step's own channels"
