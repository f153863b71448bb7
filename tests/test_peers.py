"""benchmarks/peers.py: structsearch beside Torch-Pruning (and ModelOpt when installed) from one
trained baseline, every architecture trained by the same protocol; --quick prints real figures."""
import importlib.util
import json

import pytest

from counters import count_macs
from scripts import load_benchmark


def load_peers():
    return load_benchmark("peers")


def test_peers_quick_prints_real_figures(tmp_path, ray_local, capsys):
    """In this process, on the session's Ray (the script leaves a Ray it did not start
    running, and gives back the torch thread count it changed)."""
    import torch
    figures_file, runs = tmp_path / "peers.json", tmp_path / "runs"
    threads = torch.get_num_threads()
    load_peers().main(["--quick", "--json", str(figures_file), "--out", str(runs)])
    stdout = capsys.readouterr().out
    assert ray_local.is_initialized() and torch.get_num_threads() == threads
    figures = json.loads(figures_file.read_text())
    assert figures["tools"] == ["structsearch", "torch_pruning"]
    assert "| structsearch (default search) |" in stdout
    assert "| Torch-Pruning global L1 |" in stdout
    (record,) = figures["records"]  # --quick: one seed
    # The script's counter agrees with the tests' own (fvcore conv + linear) on the baseline.
    from structsearch import models
    assert record["baseline"]["macs"] == count_macs(models.build("small_cnn", in_channels=1),
                                                    (1, 8, 8))
    target = record["target_macs"]
    assert target == pytest.approx(0.25 * record["baseline"]["macs"])
    for tool, row in record["tools"].items():
        assert 0 < row["macs"] <= target, tool  # within the budget by the independent counter
        # chance is 0.1 (10 classes)
        assert row["finetune_test_acc"] > 0.3 and row["scratch_b_test_acc"] > 0.3, tool
        assert row["speedup"]["torch"] > 0, tool
        assert row["search_seconds"] > 0 and row["subnets"] >= 1, tool
    # structsearch's winner, reloaded from its run directory, counted independently.
    from structsearch.surgery import load_pruned
    winner = load_pruned(runs / "structsearch-0" / "winner")
    assert count_macs(winner, (1, 8, 8)) == record["tools"]["structsearch"]["macs"] <= target
    rows = {r["tool"]: r for r in figures["table"]}
    assert set(rows) == {"structsearch", "torch_pruning"}
    assert all(r["max_macs_ratio"] <= 0.25 for r in rows.values())


def test_a_missing_modelopt_is_said_in_one_line(monkeypatch, capsys):
    peers = load_peers()
    real = importlib.util.find_spec
    monkeypatch.setattr(peers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "modelopt" else real(name, *a))
    assert peers.available_tools(["structsearch", "torch_pruning", "modelopt"]) == \
        ["structsearch", "torch_pruning"]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "modelopt" in lines[0] and 'pip install -e ".[peers]"' in lines[0]


@pytest.mark.skipif(importlib.util.find_spec("modelopt") is None
                    or importlib.util.find_spec("torchprofile") is None,
                    reason="the peers extra (nvidia-modelopt, torchprofile) is not installed; "
                           "CI installs only the test extra, and the missing-ModelOpt path is "
                           "tested above")
def test_an_installed_modelopt_is_kept(capsys):
    assert load_peers().available_tools(["modelopt"]) == ["modelopt"]
    assert capsys.readouterr().out == ""
