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