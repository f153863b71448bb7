"""The GPU benchmark script must run anywhere: its tiny CPU mode prints real figures."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_candidates_tiny_on_cpu(tmp_path):
    out = tmp_path / "fig.json"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_candidates.py"), "--tiny",
                          "--device", "cpu", "--json", str(out)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fast path" in res.stdout and "packed" in res.stdout
    figures = json.loads(out.read_text())
    entry = figures["models"]["cifar_resnet20"]
    assert entry["fast_s"] > 0 and entry["plain_s"] > 0
    assert set(entry["packed"]) == {"1", "2"} and all(v > 0 for v in entry["packed"].values())
