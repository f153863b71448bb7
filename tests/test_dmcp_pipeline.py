"""searcher: dmcp through the whole pipeline: supernet trial, sampled candidates, final stage."""
import json

from structsearch import config as C
from minis import digits_run
from structsearch.report import read_candidates


def test_dmcp_search_end_to_end(tmp_path, ray_local):
    from structsearch.pipeline import run_search

    cfg = C.from_dict(digits_run(
        search={"searcher": "dmcp", "params": {"dmcp": {"epochs": 4, "lr_weights": 0.05, "lr_arch": 0.2}}},
        # The winner as the search left it (no final trial: tests/test_pipeline.py trains the
        # final stage; nothing in it depends on the searcher).
        final={"finetune_epochs": 0, "scratch": []}))
    run = run_search(cfg, out=str(tmp_path / "run"))
    chains = json.loads((run / "supernet" / "chains.json").read_text())
    assert len(chains["groups"]) == 4
    rows = read_candidates(run / "candidates.csv")
    origins = [r["origin"] for r in rows]
    assert origins[0] == "dmcp:es" and all(o.startswith("dmcp:") for o in origins)
    budget = json.loads((run / "summary.json").read_text())["budget"]["max_macs"]
    assert all(r["macs"] <= budget and r["status"] == "ok" for r in rows)
    # DS samples sit within 1% of the target (or are marked projected).
    assert len(rows) >= 2, "the expected-width read-out and at least one sample"
    for r in rows[1:]:
        assert r["origin"] == "dmcp:ds-projected" or r["macs"] >= 0.99 * budget - 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["winner"]["origin"].startswith("dmcp:")
    assert summary["finetune"]["test_acc"] > 0.1
