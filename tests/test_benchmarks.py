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

def test_search_quality_quick_prints_the_paired_table(tmp_path, ray_local, capsys):
    """benchmarks/search_quality.py --quick: the default searcher and both one-shot baselines
    trained by one protocol, with the candidate-epochs each spent and the paired difference.
    In this process, on the session's Ray (the script's --help runs from the command line in
    the test below)."""
    from scripts import load_benchmark
    load_benchmark("search_quality").main(["--quick", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "q.json")])
    assert "minus best one-shot, paired" in capsys.readouterr().out
    figures = json.loads((tmp_path / "q.json").read_text())["small_cnn@25% (digits)"]
    assert set(figures) == {"default", "one-shot uniform", "one-shot global:l1"}
    # 4 candidate-epochs: 2 candidates plus 2 re-evaluation repeats of one epoch each.
    assert figures["default"][0]["candidate_epochs"] == 4
    for entries in figures.values():
        assert 0.1 < entries[0]["test_acc"] <= 1.0 and 0 < entries[0]["macs_ratio"] <= 0.25 + 1e-9
    assert figures["one-shot uniform"][0]["candidate_epochs"] == 0


def test_search_quality_table_pairs_each_row_with_its_own_grid():
    """search_quality's table: per seed, the winner minus the better one-shot baseline of that
    seed; minus the strongest one-shot method by its mean on the row's own grid; and a row on
    a finer grid against that grid's baselines. Figures worked out by hand."""
    from scripts import load_benchmark
    sq = load_benchmark("search_quality")

    def runs(*accs):
        return [{"finetune": {"test_acc": a}, "winner": {"macs_ratio": 0.09},
                 "search": {"evaluated": 10, "epochs": 1}, "seed": i} for i, a in enumerate(accs)]
    lines = sq.table("x", {"default": runs(.95, .96), "default-round4": runs(.97, .96),
                           "one-shot uniform": runs(.94, .95),
                           "one-shot global:l1": runs(.93, .97),
                           "one-shot uniform (default-round4)": runs(.96, .97)})
    cells = {line.split(" | ")[0].lstrip("| "): [c.strip() for c in line.strip("|").split("|")]
             for line in lines if line.startswith("| ") and "structure" not in line}
    # default (95, 96): the best of every baseline per seed is 96, 97 -> -1, -1; the strongest
    # auto method is global:l1 (mean 95.0; 93, 97) -> +2, -1; its grid's best 94, 97 -> +1, -1.
    assert cells["default"][4:] == ["95.0 96.0", "95.50 +- 0.50", "-1.00 +- 0.00",
                                    "+0.50 +- 1.50", "+0.00 +- 1.00"]
    # default-round4 (97, 96) against 96, 97 in all three columns: +1, -1.
    assert cells["default-round4"][6:] == ["+0.00 +- 1.00"] * 3
    assert cells["one-shot uniform"][6:] == ["-2.00 +- 0.00", "-0.50 +- 1.50", "-1.00 +- 1.00"]
    assert any("auto: one-shot global:l1" in line and "default-round4: one-shot uniform "
               "(default-round4)" in line for line in lines)


def test_every_benchmark_prints_its_help():
    """`--help` of each benchmark script parses and prints its options (a '%' in a help text
    once made search_quality.py's --help crash with a ValueError). One interpreter runs them
    all, so torch is imported once."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) >= 10
    runner = (
        "import contextlib, io, runpy, sys\n"
        "for path in sys.argv[1:]:\n"
        "    sys.argv = [path, '--help']\n"
        "    out = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(out):\n"
        "            runpy.run_path(path, run_name='__main__')\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        "    else:\n"
        "        code = 'no exit'\n"
        "    print(path, code, out.getvalue().startswith('usage:'), flush=True)\n")
    res = subprocess.run([sys.executable, "-c", runner, *map(str, scripts)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT / "benchmarks")
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.split("\n")
    results = [line.rsplit(" ", 2) for line in lines if line.startswith(str(ROOT))]
    assert len(results) == len(scripts), res.stdout[-2000:]
    for path, code, usage in results:
        assert code in ("0", "None") and usage == "True", (path, code, res.stderr[-1500:])
