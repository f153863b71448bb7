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
    # benchmarks/headroom.py on the same baselines trains the one-shot structures in its own
    # worker processes by the final stage's code: the same test accuracy, to the image.
    load_benchmark("headroom").main(["--quick", "--out", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert "picked per seed by validation" in out
    trained = json.loads((tmp_path / "runs" / "small_cnn-25-headroom-0" / "headroom.json").read_text())
    summary = json.loads((tmp_path / "runs" / "small_cnn-25-default-0" / "summary.json").read_text())
    assert set(summary["oneshot"]) == {"uniform", "global:l1"}
    for entry in summary["oneshot"].values():
        key = "x".join(map(str, entry["widths"]))
        assert trained[key]["test_acc"] == entry["test_acc"], key
        assert f"| {key.replace('x', ' ')} (one-shot " in out
    assert len(trained) >= 4  # 3 sampled vectors within [0.8, 1.0] of the budget, and the shots


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


def test_headroom_ceilings_worked_by_hand():
    """headroom.py's ceilings: the strongest one-shot method by its mean, the structure picked
    by mean validation, the per-seed pick by validation, the optimistic pick by test."""
    from scripts import load_benchmark
    hr = load_benchmark("headroom")

    def m(val, test):
        return {"val_acc": val, "test_acc": test, "macs_ratio": 0.1}
    seeds = [{"8x8": m(.90, .90), "8x16": m(.92, .91), "16x8": m(.95, .93), "4x4": m(.99, .80)},
             {"8x8": m(.90, .94), "8x16": m(.94, .92), "16x8": m(.93, .96), "4x4": m(.80, .80)}]
    shots = [{"uniform": "8x8", "global:l1": "8x16"}] * 2
    lines, text = hr.ceilings(seeds, shots)
    # uniform 90, 94 (mean 92) and global:l1 91, 92 (mean 91.5): uniform is strongest; the
    # better one-shot per seed is 91, 94.
    assert "strongest one-shot method: uniform (92.00% mean test)" in text
    # Mean validation: 16x8 (94.0) over 8x16 (93.0) and 4x4 (89.5); test 93, 96 minus 90, 94
    # (+3, +2) and minus 91, 94 (+2, +2).
    assert "picked by mean validation: 16 8, minus strongest +2.50 +- 0.50, minus per-seed " \
           "best one-shot +2.00 +- 0.00" in text
    # Per seed: 4x4 (val 99) in seed 0, 8x16 (94) in seed 1: tests 80, 92 minus 90, 94.
    assert "picked per seed by validation: 4 4 | 8 16, minus strongest -6.00 +- 4.00" in text
    assert "structures whose mean test is >= the strongest one-shot's + 0.5: 1 of 4" in text
    rows = [line for line in lines if line.startswith("| ") and "widths" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| 16 8", "| 8 16 (one-shot global:l1)",
                                                 "| 8 8 (one-shot uniform)", "| 4 4"]


def test_headroom_lists_every_grid_vector_in_the_band():
    """near_budget: with room under the cap, exactly the grid vectors whose MACs lie within
    [low, 1.0] of the limit (checked against fvcore on pruned models for a few); the
    one-shot structures first; a seeded sample of the cap when there are more."""
    import itertools

    import numpy as np
    from counters import count_macs
    from scripts import load_benchmark
    from structsearch import models
    from structsearch.space import WidthSpace
    from structsearch.surgery import prune
    hr = load_benchmark("headroom")
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    space = WidthSpace.from_model(model, (1, 8, 8), round_to=8)
    limit = 0.3 * space.full_macs
    shot = [int(w) for w in space.uniform(0.4)]
    found = hr.near_budget(space, space.macs, limit, 0.9, 10_000, np.random.default_rng(0), [shot])
    assert found[0] == shot and len({tuple(w) for w in found}) == len(found)
    grids = [space.grid(i) for i in range(len(space))]
    band = {tuple(int(x) for x in w) for w in itertools.product(*grids)
            if 0.9 * limit <= space.macs(list(w)) <= limit}
    assert 5 < len(band) < 500 and set(map(tuple, found[1:])) | {tuple(shot)} >= band
    assert {tuple(w) for w in found[1:]} - band <= {tuple(shot)}
    for w in found[1:4]:
        pruned_macs = count_macs(prune(model, space, w), (1, 8, 8))
        assert 0.9 * limit <= pruned_macs <= limit, (w, pruned_macs, limit)
    capped = hr.near_budget(space, space.macs, limit, 0.9, 5, np.random.default_rng(1), [shot])
    assert len(capped) == 6 and {tuple(w) for w in capped[1:]} <= band


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
