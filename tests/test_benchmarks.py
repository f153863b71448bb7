"""The GPU benchmark script must run anywhere: its tiny CPU mode prints real figures."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_tiny_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh, the one prepared GPU script, in its tiny mode on CPU: the
    candidate timings (gpu_candidates.py) and a mini search end to end, figures as JSON."""
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--tiny",
                          str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert "fast path" in res.stdout and "packed" in res.stdout
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert figures["device"] == "cpu" and figures["gpu_per_trial"] == 0
    entry = figures["gpu_candidates"]["models"]["cifar_resnet20"]
    assert entry["fast_s"] > 0 and entry["plain_s"] > 0
    assert set(entry["packed"]) == {"1", "2"} and all(v > 0 for v in entry["packed"].values())
    search = figures["search"]
    assert search["candidates"] == 2 and 0.1 < search["finetune_test_acc"] <= 1.0
    assert search["speed"]["speedup"] > 0

def test_search_quality_quick_prints_the_paired_table(tmp_path):
    """benchmarks/search_quality.py --quick: the default searcher and both one-shot baselines
    trained by one protocol, with the candidate-epochs each spent and the paired difference."""
    out = tmp_path / "runs"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_quality.py"), "--quick",
                          "--out", str(out), "--json", str(tmp_path / "q.json")],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert "minus best one-shot, paired" in res.stdout
    figures = json.loads((tmp_path / "q.json").read_text())["small_cnn@25% (digits)"]
    assert set(figures) == {"default", "one-shot uniform", "one-shot global:l1"}
    # 4 candidate-epochs: 2 candidates plus 2 re-evaluation repeats of one epoch each.
    assert figures["default"][0]["candidate_epochs"] == 4
    for entries in figures.values():
        assert 0.1 < entries[0]["test_acc"] <= 1.0 and 0 < entries[0]["macs_ratio"] <= 0.25 + 1e-9
    assert figures["one-shot uniform"][0]["candidate_epochs"] == 0


def test_every_benchmark_prints_its_help():
    """`--help` of each benchmark script parses and prints its options (a '%' in a help text
    once made search_quality.py's --help crash with a ValueError)."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) >= 10
    for script in scripts:
        res = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert res.returncode == 0, (script.name, res.stderr[-1500:])
        assert res.stdout.startswith("usage:"), (script.name, res.stdout[:300])
