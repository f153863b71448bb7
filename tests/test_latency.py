"""Budgets other than MACs: latency (a per-layer model measured once, searchers under it) and
parameter counts."""
import json

import numpy as np
import pytest
from torch import nn

import searchers
from minis import digits_run
from structsearch import config as C
from structsearch import models
from structsearch.budget import LatencyCost
from structsearch.latency import LatencyTable
from structsearch.report import read_candidates
from structsearch.space import WidthSpace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def measured():
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    space = WidthSpace.from_model(model, (1, 28, 28))
    table = LatencyTable.measure(model, space, batch_size=8, points=4, repeats=7, calibration=4)
    return model, space, table


def test_one_timed_grid_per_layer_that_ran(measured):
    model, space, table = measured
    channels = space.layer_channels()
    assert [layer["name"] for layer in table.layers] == list(channels)
    assert table.groups == len(space) and table.full_ms > 0
    for layer in table.layers:
        out, inp = channels[layer["name"]]
        # The timed output widths span what the space allows this layer, ends included.
        assert layer["co"][0] == out.const + out.coef @ space.lower
        assert layer["co"][-1] == out.const + out.coef @ space.upper
        ms = np.asarray(layer["ms"])
        assert ms.shape == (len(layer["ci"]), len(layer["co"])) and (ms > 0).all()
        assert (np.diff(ms, axis=0) >= 0).all() and (np.diff(ms, axis=1) >= 0).all(), \
            "a wider layer is never faster"
    # Output positions per channel agree with the tracer's MACs: k * positions * c_out * c_in.
    modules = dict(model.named_modules())
    macs = space.layer_macs(space.full_widths)
    for layer in table.layers:
        m = modules[layer["name"]]
        if isinstance(m, nn.Conv2d):
            k, fan = m.kernel_size[0] * m.kernel_size[1], m.in_channels * m.out_channels // m.groups
        else:
            k, fan = 1, m.in_features * m.out_features
        assert k * layer["positions"] * fan == macs[layer["name"]]
    assert min(table.coef.values()) >= 0
    # small_cnn's kinds: 3x3 convs and linear layers, each with its fitted scale.
    assert {layer["kind"] for layer in table.layers} == {"conv", "pointwise"}
    assert set(table.coef) == {"s:conv", "s:pointwise", "r", "c"}


def test_prediction_vectorised_monotone_and_near_full(measured):
    _, space, table = measured
    rng = np.random.default_rng(0)
    batch = space.sample(rng, 16)
    assert np.allclose(table.predict(batch), [table.predict(w) for w in batch])
    assert table.predict(space.lower) < table.predict(space.uniform(0.5)) <= \
        table.predict(space.full_widths) + 1e-12
    for w in batch[:4]:  # widening any one group never lowers the prediction
        for g in range(len(space)):
            wider = w.copy()
            wider[g] = space.upper[g]
            assert table.predict(wider) >= table.predict(w) - 1e-12
    # A least-squares fit through the full network's own timing: close to it, not exact.
    assert table.predict(space.full_widths) == pytest.approx(table.full_ms, rel=0.3)


def test_interpolation_and_nonnegative_fit_are_exact_on_known_data():
    from structsearch.latency import _interp2, _nnls
    xs, ys = [2, 4], [10, 20, 30]
    grid = np.array([[1.0, 2.0, 3.0], [5.0, 6.0, 9.0]])
    got = _interp2(xs, ys, grid, np.array([2, 4, 3, 3, 9]), np.array([20, 30, 15, 25, 0]))
    # grid points; halfway in both axes (mean of 4 corners); clamped outside the grid.
    assert np.allclose(got, [2.0, 9.0, (1 + 2 + 5 + 6) / 4, (2 + 3 + 6 + 9) / 4, 5.0])
    X = np.array([[1.0, 0.0, 1.0], [2.0, 1.0, 1.0], [3.0, 0.0, 1.0], [4.0, 2.0, 1.0]])
    assert np.allclose(_nnls(X, X @ [0.5, 2.0, 0.25]), [0.5, 2.0, 0.25])
    # The unconstrained solution has a negative coefficient: it is held at 0 instead.
    coef = _nnls(X, X @ [1.0, -1.0, 0.0])
    assert coef.min() >= 0 and coef[1] == 0


def test_depthwise_and_grouped_layers_are_timed_by_their_channels():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10))
    space = WidthSpace.from_model(model, (3, 8, 8))
    table = LatencyTable.measure(model, space, points=3, repeats=5, calibration=3)
    depthwise = next(layer for layer in table.layers if layer["name"] == "3")
    assert len(depthwise["ms"]) == 1 and len(depthwise["ms"][0]) == len(depthwise["co"]), \
        "a depthwise conv's input width is its output width: one row of timings"
    assert [layer["kind"] for layer in table.layers] == ["conv", "grouped", "pointwise", "pointwise"]
    w = space.uniform(0.5)
    assert 0 < table.predict(w) < table.predict(space.full_widths) + 1e-12


def test_json_round_trip_and_old_tables_refused(measured, tmp_path):
    _, space, table = measured
    table.save(tmp_path / "lat.json")
    again = LatencyTable.load(tmp_path / "lat.json")
    w = space.uniform(0.6)
    assert again.predict(w) == pytest.approx(table.predict(w))
    old = {"full_ms": 1.0, "widths": [[1, 2]], "ms": [[0.5, 1.0]], "device": "cpu", "batch_size": 1}
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="delete it to measure again"):
        LatencyTable.load(tmp_path / "old.json")


def test_searchers_respect_a_latency_budget(measured):
    _, space, table = measured
    view = LatencyCost(space, table)
    budget = 0.5 * (table.full_ms + view.floor)
    assert view.full == pytest.approx(table.predict(space.full_widths)) and view.kind == "latency"
    for name in ("random", "uniform", "abc"):
        core = searchers.build(name, space, limit=budget, view=view, num_candidates=8, seed=0)
        asked = 0
        while True:
            p = core.ask()
            if p is None or p == searchers.FINISHED:
                break
            asked += 1
            assert table.predict(p.widths) <= budget + 1e-9
            space.validate(p.widths)
            core.tell(p.token, 0.5)
        assert asked >= 1, name


def test_latency_budget_search_end_to_end(tmp_path, ray_local, monkeypatch):
    from structsearch.pipeline import run_search

    # The run measures its table once; here it gets one measured beforehand, so the budget can
    # sit between the smallest and the full network's prediction whatever the machine's load
    # (a budget from a separate measurement was sometimes infeasible, sometimes above the full).
    probe = WidthSpace.from_model(models.build("small_cnn", num_classes=10, in_channels=1), (1, 8, 8))
    fixed = LatencyTable.measure(models.build("small_cnn", num_classes=10, in_channels=1), probe,
                                 batch_size=8, points=3, repeats=7)
    calls = []

    def measure(model, space, *, device="cpu", batch_size=1, **kw):
        calls.append((len(space), device, batch_size))
        return fixed

    monkeypatch.setattr(LatencyTable, "measure", staticmethod(measure))
    budget_ms = 0.5 * (fixed.predict(probe.lower) + fixed.full_ms)
    data = digits_run(baseline={"epochs": 1}, budget={"latency_ms": budget_ms, "latency_batch_size": 8},
                      search={"candidates": 3})
    run = run_search(C.from_dict(data), out=str(tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    table_run = LatencyTable.load(run / "latency.json")
    budget = summary["budget"]["latency_ms"]
    rows = read_candidates(run / "candidates.csv")
    assert len(rows) == 3
    for r in rows:
        assert r["cost"] == pytest.approx(table_run.predict(r["widths"]))
        assert r["cost"] <= budget + 1e-9
    assert summary["winner"]["latency_ms"] <= budget + 1e-9
    assert "predicted latency" in (run / "report.md").read_text()
    assert calls == [(len(probe), "cpu", 8)], "the run measures its table once, on the trial device"


def test_params_budget_search_end_to_end(tmp_path, ray_local):
    from structsearch.pipeline import run_search

    model = models.build("small_cnn", num_classes=10, in_channels=1)
    space = WidthSpace.from_model(model, (1, 8, 8))
    full_params = sum(t.numel() for t in model.parameters())
    cfg = C.from_dict(digits_run(baseline={"epochs": 1}, budget={"params": 0.3 * full_params},
                                 search={"searcher": "random+uniform"}))
    run = run_search(cfg, out=str(tmp_path / "run"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["budget"]["params"] == pytest.approx(0.3 * full_params)
    assert summary["budget"]["params_ratio"] == pytest.approx(0.3)
    rows = read_candidates(run / "candidates.csv")
    assert len(rows) == 4
    for r in rows:
        # cost is the exact parameter count of the pruned network (independent count below).
        assert r["cost"] == r["params"] == space.params(r["widths"]) <= 0.3 * full_params
    winner = summary["winner"]
    from structsearch.surgery import load_pruned
    pruned = load_pruned(run / "winner")
    assert sum(t.numel() for t in pruned.parameters()) == winner["params"] <= 0.3 * full_params
    # macs still reports the real MACs of the winner, not its parameters.
    assert winner["macs"] == space.macs(winner["widths"])
    assert "M parameters" in (run / "report.md").read_text()
    assert (run / "pareto.png").stat().st_size > 10_000
