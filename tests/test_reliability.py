"""Failing candidates, a killed driver, a killed write: the search goes on and loses nothing."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from minis import digits_run
from structsearch import config as C
from structsearch.journal import journal_path, load_journal
from structsearch.report import CANDIDATE_COLUMNS, read_candidates
from trainables.common import injected_fault

BASE = digits_run(seed=1, search={"candidates": 10},
                  final={"finetune_epochs": 1, "finetune_lr": 0.01, "scratch": ["E"]})


def test_faulty_candidates_are_recorded_and_skipped(tmp_path, ray_local):
    from structsearch.pipeline import run_search

    data = json.loads(json.dumps(BASE))
    data["search"]["fault_injection"] = {"raise": 0.2, "nan": 0.1}
    # The winner as the search left it (no final trial: the final stage's trials are tested
    # after a resume in the sigkill test below).
    data["final"].update(finetune_epochs=0, scratch=[])
    run = run_search(C.from_dict(data), out=str(tmp_path / "run"))
    rows = read_candidates(run / "candidates.csv")
    assert len(rows) == 10
    faults = {tuple(r["widths"]): injected_fault(data["search"]["fault_injection"], r["widths"], 1) for r in rows}
    assert sum(f is not None for f in faults.values()) >= 2, "the seed must inject some faults"
    for r in rows:
        fault = faults[tuple(r["widths"])]
        if fault is None:
            assert r["status"] == "ok" and r["val_acc"] > 0.1
        else:
            assert r["status"] == "error"
            assert ("injected fault" if fault == "raise" else "non-finite") in r["error"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["search"]["errors"] == sum(f is not None for f in faults.values())
    assert faults[tuple(summary["winner"]["widths"])] is None
    assert summary["finetune"]["test_acc"] > 0.1


def test_journal_write_failure_stops_cleanly(tmp_path, ray_local, monkeypatch):
    """A journal that cannot be written (disk full) fails no candidate and ends the search with
    one message naming the file; the results written before it are kept."""
    import structsearch.journal as journal_mod
    import structsearch.pipeline as pipeline
    from structsearch.journal import JournalError

    data = json.loads(json.dumps(BASE))
    data["search"].update(candidates=4, concurrent=1)
    real, writes = journal_mod.save_journal, []

    def failing(path, journal):
        writes.append(len(journal.trials))
        if len(journal.trials) >= 3:
            raise OSError(28, "No space left on device")
        real(path, journal)

    monkeypatch.setattr(journal_mod, "save_journal", failing)
    with pytest.raises(JournalError, match=r"search_journal\.json .*No space left.*--resume"):
        pipeline.run_search(C.from_dict(data), out=str(tmp_path / "run"))
    kept = load_journal(journal_path(tmp_path / "run"))
    assert writes[:4] == [0, 1, 2, 3], "written at the start and after each candidate"
    assert len(kept.trials) == 2 and all(t["row"]["error"] == "" for t in kept.trials)
    assert not (tmp_path / "run" / "summary.json").exists()


def test_ctrl_c_stops_every_stage_not_only_the_search(tmp_path, ray_local):
    """Tune returns normally after Ctrl-C: run_experiment raises KeyboardInterrupt instead, so
    no stage (re-evaluation, final) goes on with trials cut short; after an experiment that
    ended normally Ctrl-C is the caller's again (Tune leaves its own handler behind)."""
    from ray import tune

    from structsearch.tuning import Interrupted, run_experiment
    driver = os.getpid()

    def interrupting(config):
        if config["stop"]:
            os.kill(driver, signal.SIGINT)  # Ctrl-C at the driver while this trial trains
            time.sleep(60)
        tune.report({"done": 1})

    before = signal.getsignal(signal.SIGINT)
    common = dict(storage=str(tmp_path), resources={"cpu": 1}, params={})
    results = run_experiment("normal", interrupting, param_space={"stop": False}, **common)
    assert results[0].metrics["done"] == 1
    assert signal.getsignal(signal.SIGINT) is before
    start = time.time()
    with pytest.raises(Interrupted) as stop:  # raised by run_experiment, after Tune stopped
        run_experiment("stopped", interrupting, param_space={"stop": True}, **common)
    assert "done" not in (stop.value.results[0].metrics or {})  # the trial was cut short
    assert time.time() - start < 50, "the interrupted trial was stopped, not waited for"
    assert signal.getsignal(signal.SIGINT) is before


def _start(cfg_path, out, env_extra=None, resume=False):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    args = [sys.executable, "-m", "structsearch.cli", "search", str(cfg_path), "--out", str(out)]
    if resume:
        args.append("--resume")
    # A new session, so killing the group takes Ray's local processes down with the driver.
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, text=True)


def _kill_when(proc, condition, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("condition never met")


def _journal_trials(out: Path) -> int:
    journal = load_journal(journal_path(out))  # always whole: written by rename
    return len(journal.trials) if journal else 0


@pytest.mark.slow
def test_sigkill_mid_search_and_mid_write_then_resume(tmp_path):
    N = 10
    data = json.loads(json.dumps(BASE))
    data["search"].update(candidates=N, concurrent=2, searcher="abc", epochs=1,
                          abc={"food_number": 3, "max_cycle": 4})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "run"

    # 1. Kill the driver once a few candidates have finished, with others training (two at a
    #    time): the journal holds the finished ones and the configs still in flight.
    proc = _start(cfg, out)
    assert _kill_when(proc, lambda: _journal_trials(out) >= 3), proc.stdout.read()
    logs = [proc.stdout.read()]
    assert not (out / "summary.json").exists()
    journal = load_journal(journal_path(out))
    kept = {t["row"]["trial_id"]: t["row"]["val_acc"] for t in journal.trials}
    assert len(kept) >= 3

    # 2. Resume, and press Ctrl-C (SIGINT to the whole process group, as a terminal does) once
    #    one more candidate has finished: the run stops without a winner and says how to go on.
    proc = _start(cfg, out, resume=True)
    start = time.time()
    while _journal_trials(out) < len(kept) + 1 and proc.poll() is None and time.time() - start < 240:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    log, _ = proc.communicate(timeout=120)
    logs.append(log)
    assert proc.returncode == 130 and "continue with --resume" in log, log[-3000:]
    assert "Tuner.restore" not in log, "no advice to resume with Tune's own API"
    assert not (out / "summary.json").exists() and not (out / "winner").exists()
    interrupted = load_journal(journal_path(out))
    assert all(t["row"]["status"] == "ok" for t in interrupted.trials), "Ctrl-C fails no candidate"
    assert len(interrupted.trials) < N

    # 2b. Resume, and stop it with SIGTERM to the driver alone (`kill PID`, a batch scheduler):
    #     the same graceful stop, not Ray's stack dump and sudden death.
    proc = _start(cfg, out, resume=True)
    start = time.time()
    while (_journal_trials(out) < len(interrupted.trials) + 1 and proc.poll() is None
           and time.time() - start < 240):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    logs.append(log)
    assert proc.returncode == 130 and "continue with --resume" in log, log[-3000:]
    assert "SIGTERM received" not in log, log[-3000:]
    terminated = load_journal(journal_path(out))
    assert all(t["row"]["status"] == "ok" for t in terminated.trials), "SIGTERM fails no candidate"
    assert len(interrupted.trials) < len(terminated.trials) < N

    # 3. Resume with a slowed writer and kill it in the middle of writing candidates.csv.
    proc = _start(cfg, out, {"STRUCTSEARCH_TEST_SLOW_WRITE": "30"}, resume=True)
    assert _kill_when(proc, lambda: (out / "candidates.csv.tmp").exists()), proc.stdout.read()
    logs.append(proc.stdout.read())
    if (out / "candidates.csv").exists():  # never a torn file: absent or complete
        read_candidates(out / "candidates.csv")

    # 4. Resume again: completes with every candidate exactly once.
    proc = _start(cfg, out, resume=True)
    log, _ = proc.communicate(timeout=600)
    logs.append(log)
    assert proc.returncode == 0, log[-3000:]
    rows = read_candidates(out / "candidates.csv")
    ids = [r["trial_id"] for r in rows]
    tune_dir = sorted(str(f.relative_to(out)) for f in (out / "tune" / "search").iterdir())
    why = "\n".join([f"step {i + 1}:\n{text[-2500:]}" for i, text in enumerate(logs)]
                    + ["tune/search: " + " ".join(tune_dir)])
    assert len(ids) == len(set(ids)) == N, why
    assert f"resuming after {len(kept)} of {N} candidates" in logs[1], why
    assert set(kept) <= set(ids), "candidates finished before the kill are kept"
    # Each resume trains only what is missing: its progress lines start after what was kept.
    new_lines = [line for line in logs[1].splitlines() if "] candidate " in line]
    assert new_lines and new_lines[0].split("] candidate ")[1].startswith(f"{len(kept) + 1}/{N}"), why
    assert len({tuple(r["widths"]) for r in rows}) == N, "no candidate trained twice"
    assert all(r["status"] == "ok" for r in rows)
    # ABC's colony starts from the one-shot seeds (uniform, global threshold), then moves.
    assert {r["origin"].split(":")[0] for r in rows} == {"abc", "seed"}
    # A quiet console: structsearch's lines, the right TensorBoard command, none of Tune's
    # config boxes or its TensorBoard hint into Ray's temp dir, no token-auth notice.
    console = "\n".join(logs)
    assert f"watch: tensorboard --logdir {out / 'tune'}" in console, why
    for noise in ("Configuration for experiment", "Token authentication is enabled",
                  "tensorboard --logdir /tmp/ray", "To visualize your results with TensorBoard"):
        assert noise not in console, (noise, why)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"]["evaluated"] == N
    assert (out / "winner" / "scratch_e" / "weights.pt").is_file()
    assert list(CANDIDATE_COLUMNS[:3]) == ["trial_id", "searcher", "origin"]


def test_same_config_same_candidates(tmp_path, ray_local):
    """Determinism on CPU: the same config and seed give the same proposals and accuracies."""
    from structsearch.pipeline import run_search

    data = json.loads(json.dumps(BASE))
    data["search"].update(candidates=3, concurrent=1)
    data["final"].update(finetune_epochs=0, scratch=[])
    runs = [run_search(C.from_dict(data), out=str(tmp_path / f"run{i}")) for i in range(2)]
    a, b = (read_candidates(r / "candidates.csv") for r in runs)
    assert [r["widths"] for r in a] == [r["widths"] for r in b]
    assert [r["val_acc"] for r in a] == [r["val_acc"] for r in b]
    # A 0-epoch fine-tune is the winner as the search left it, measured without a Ray trial.
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["finetune"]["val_acc"] == pytest.approx(summary["winner"]["val_acc"])
    assert 0.1 < summary["finetune"]["test_acc"] <= 1.0
    assert not (runs[0] / "tune" / "final").exists()
    assert (runs[0] / "winner" / "finetune" / "weights.pt").is_file()


def test_every_candidate_failing_stops_without_winner(tmp_path):
    """From the command line: exit code 1, every failure recorded, no winner, one last line."""
    data = json.loads(json.dumps(BASE))
    data["search"].update(candidates=2, fault_injection={"raise": 1.0})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(data))
    res = subprocess.run([sys.executable, "-m", "structsearch.cli", "search", str(cfg), "--out",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1
    rows = read_candidates(tmp_path / "run" / "candidates.csv")
    assert [r["status"] for r in rows] == ["error"] * 2
    assert all("injected fault" in r["error"] for r in rows)
    assert not (tmp_path / "run" / "winner").exists()
    # Ray logs each failed trial's own traceback; our verdict is the last line, and no
    # traceback of the driver follows it. The CLI prints "search failed:" only for the
    # SearchFailed that run_search raises.
    last = [ln for ln in res.stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("structsearch: search failed: every candidate failed (2 of 2)")
    assert "pipeline.py" not in res.stderr and "cli.py" not in res.stderr
