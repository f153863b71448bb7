"""README's "Adding a searcher" example, run as written through a mini search (Ray trials)."""
import json
import re
from pathlib import Path

import numpy as np

import searchers
from minis import digits_run
from structsearch import config as C
from structsearch.report import read_candidates

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Adding a searcher", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_searcher_runs_a_mini_search(tmp_path, ray_local):
    from structsearch.pipeline import run_search

    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)  # noqa: S102 - our README
    cls = namespace["HillClimb"]
    try:
        assert searchers.get("hillclimb") is cls and "hillclimb" in searchers.names()
        assert list(searchers.parameters("hillclimb")) == ["step"]
        cfg = C.from_dict(digits_run(search={"searcher": "hillclimb", "candidates": 5,
                                             "params": {"hillclimb": {"step": 1}}}))
        run = run_search(cfg, out=str(tmp_path / "run"))
        rows = read_candidates(run / "candidates.csv")
        assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
        assert [r["origin"] for r in rows][0] == "hillclimb:start"
        assert {r["origin"] for r in rows[1:]} == {"hillclimb:move"}
        budget = json.loads((run / "summary.json").read_text())["budget"]["max_macs"]
        assert all(r["macs"] <= budget for r in rows)
        # The moves explore: at least one differs from the start point.
        start = np.array(rows[0]["widths"])
        assert any(not np.array_equal(np.array(r["widths"]), start) for r in rows[1:])
    finally:
        searchers.REGISTRY.remove("hillclimb")
