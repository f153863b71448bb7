"""Run-directory artifacts: candidates.csv, summary.json, report.md, pareto.png, widths.png.

Every file is written to a temporary name and renamed, so a killed run never leaves a
half-written artifact.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

from .candidate import COLUMNS

CANDIDATE_COLUMNS = list(COLUMNS)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, flush it to disk, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    # Test hook: slow the write down so a test can kill the process in the middle of it.
    slow = float(os.environ.get("STRUCTSEARCH_TEST_SLOW_WRITE", "0") or 0)
    with open(tmp, "w") as fh:
        if slow:
            fh.write(text[: len(text) // 2])
            fh.flush()
            time.sleep(slow)
            text = text[len(text) // 2:]
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_candidates(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CANDIDATE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        row = dict(row)
        row["widths"] = json.dumps([int(w) for w in row["widths"]])
        writer.writerow(row)
    atomic_write(path, buf.getvalue())


def read_candidates(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["widths"] = json.loads(row["widths"])
        for key in ("macs", "params", "epochs"):
            row[key] = int(float(row[key])) if row.get(key) not in (None, "") else None
        for key in ("macs_ratio", "val_acc", "seconds", "cost"):
            row[key] = float(row[key]) if row.get(key) not in (None, "") else None
        row["reconstructed"] = row.get("reconstructed") == "True"
    return rows


def write_json(obj, path: Path) -> None:
    atomic_write(path, json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(obj):
    try:
        import numpy as np
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(obj)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _plots(run_dir: Path, rows: list[dict], summary: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ok = [r for r in rows if r["status"] == "ok" and r["val_acc"] is not None]
    by_searcher: dict[str, list[dict]] = {}
    for r in ok:
        by_searcher.setdefault(r["searcher"], []).append(r)
    # The x axis is what the budget limits: MACs, parameters or predicted latency.
    budget = summary.get("budget", {})
    if budget.get("latency_ms") is not None:
        cost, limit, label = (lambda r: r["cost"]), budget["latency_ms"], "predicted latency (ms)"
    elif budget.get("params") is not None:
        cost, limit, label = (lambda r: r["cost"] / 1e6), budget["params"] / 1e6, "parameters (M)"
    else:
        cost, limit, label = (lambda r: r["macs"] / 1e6), (budget.get("max_macs") or 0) / 1e6, "MACs (M)"
    for name, rs in sorted(by_searcher.items()):
        ax.scatter([cost(r) for r in rs], [100 * r["val_acc"] for r in rs], label=name,
                   alpha=0.75, s=22)
    winner = summary.get("winner")
    chosen = [r for r in ok if winner and str(r["trial_id"]) == str(winner["trial_id"])]
    if chosen:
        ax.scatter([cost(chosen[0])], [100 * winner["val_acc"]], marker="*", s=220,
                   color="black", label="winner", zorder=5)
    if limit:
        ax.axvline(limit, color="red", linestyle="--", linewidth=1, label="budget")
    ax.set_xlabel(label)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Candidates: validation accuracy vs {label.split(' (')[0]}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "pareto.png", dpi=110)
    plt.close(fig)

    if winner:
        full = summary.get("space", {}).get("full_widths") or []
        widths = winner["widths"]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(widths) + 2), 4.0))
        xs = list(range(len(widths)))
        ax.bar(xs, full, color="#d0d0d0", label="full width")
        ax.bar(xs, widths, color="#3b75af", label="winner")
        ax.set_xlabel("prunable group")
        if len(xs) <= 40:
            ax.set_xticks(xs)
        ax.set_ylabel("channels")
        ax.set_title("Winner's width per group")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "widths.png", dpi=110)
        plt.close(fig)


def render(run_dir) -> Path:
    """(Re)write report.md, pareto.png and widths.png from candidates.csv and summary.json."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = read_candidates(run_dir / "candidates.csv")
    _plots(run_dir, rows, summary)
    search = summary.get("search", {})
    lines = ["# structsearch report", ""]
    lines += [f"Searcher **{search.get('searcher')}**, criterion **{search.get('criterion')}**, "
              f"{_budget_line(summary['budget'])}; "
              f"{search.get('evaluated', len(rows))} candidates "
              f"({search.get('errors', 0)} failed) in {search.get('seconds', 0):.0f} s.", ""]
    lines += _results_section(summary)
    lines += reevaluation_section(summary)
    lines += oneshot_section(summary)
    lines += front_section(summary)
    lines += ["![pareto](pareto.png)", "", "## Candidates (best 20 by validation accuracy)", "",
              "| trial | origin | MACs % | val acc % | status |", "|---|---|---|---|---|"]
    ranked = sorted(rows, key=lambda r: (r["status"] != "ok", -(r["val_acc"] or 0)))
    for r in ranked[:20]:
        lines.append(f"| {r['trial_id']} | {r['origin']} | {_pct(r['macs_ratio'])} | "
                     f"{_pct(r['val_acc'])} | {r['status']} |")
    if (run_dir / "sensitivity.png").is_file():  # the sensitivity seed ran (Li et al.'s curves)
        lines += ["", "## Pruning sensitivity per group (Li et al., Figure 2)", "",
                  "![sensitivity](sensitivity.png)"]
    path = run_dir / "report.md"
    atomic_write(path, "\n".join(lines) + "\n")
    return path


def _budget_line(budget: dict) -> str:
    if budget.get("latency_ms") is not None:
        return (f"budget {budget['latency_ms']:.3f} ms predicted latency (baseline "
                f"{budget['baseline_latency_ms']:.3f} ms)")
    if budget.get("params") is not None:
        return (f"budget {budget['params'] / 1e6:.4f} M parameters "
                f"({100 * budget['params_ratio']:.1f}% of the baseline)")
    return (f"budget {budget['max_macs'] / 1e6:.3f} M MACs "
            f"({100 * budget['macs_ratio']:.1f}% of the baseline)")


def _model_row(label: str, entry: dict, macs, params, base: dict) -> str:
    cut_m = 100 * (1 - macs / base["macs"]) if macs else 0.0
    cut_p = 100 * (1 - params / base["params"]) if params else 0.0
    return (f"| {label} | {_pct(entry.get('val_acc'))} | {_pct(entry.get('test_acc'))} | "
            f"{macs / 1e6:.3f} | {params / 1e6:.4f} | {cut_m:.1f} | {cut_p:.1f} | "
            f"{entry.get('epochs', '-')} |")


def _results_section(summary: dict) -> list[str]:
    """The model table (baseline, winner, retraining protocols) and the winner's notes."""
    base, search, winner = summary["baseline"], summary.get("search", {}), summary.get("winner")
    lines = ["| model | val acc % | test acc % | MACs (M) | params (M) | MACs cut % | params cut % | epochs |",
             "|---|---|---|---|---|---|---|---|",
             _model_row("baseline", base, base["macs"], base["params"], base)]
    if not winner:
        return lines + ["", "No winner: every candidate failed (see candidates.csv).", ""]
    lines.append(_model_row(f"winner (search, {search.get('epochs', '?')} ep)", winner,
                            winner["macs"], winner["params"], base))
    # The retraining protocols keep the winner's architecture, hence its MACs and params.
    for key, label in (("finetune", "fine-tune"), ("scratch_e", "Scratch-E"), ("scratch_b", "Scratch-B")):
        if summary.get(key):
            lines.append(_model_row(label, summary[key], winner["macs"], winner["params"], base))
    lines += ["", f"Winner: trial `{winner['trial_id']}`, origin `{winner['origin']}`, widths "
              f"`{winner['widths']}`.", ""]
    lines += speed_lines(summary.get("speed"))
    protocols = {k: summary[k]["test_acc"] for k in ("finetune", "scratch_e", "scratch_b")
                 if summary.get(k) and summary[k].get("test_acc") is not None}
    if protocols:
        best = max(protocols, key=protocols.get)
        lines += [f"Best protocol on the test split: **{best}** "
                  f"({100 * protocols[best]:.2f}%; baseline {_pct(base.get('test_acc'))}%).", ""]
    return lines + ["![widths](widths.png)", ""]


def reevaluation_section(summary: dict) -> list[str]:
    """The top candidates trained again (under other seeds: the best mean wins; or by the final
    stage's fine-tune: the best fine-tuned validation accuracy wins)."""
    table = summary.get("reevaluation")
    if not table:
        return []
    if "val_acc_finetuned" in table[0]:
        lines = ["## Re-evaluation of the top candidates", "",
                 "Each fine-tuned as the final stage fine-tunes the winner, beside the one-shot "
                 "structures among the candidates; the winner is the best by validation accuracy "
                 "after the fine-tune (the short search fitness only shortlists).", "",
                 "| trial | origin | one-shot | MACs % | val acc % (search) | val acc % (fine-tuned) |",
                 "|---|---|---|---|---|---|"]
        for e in table:
            lines.append(f"| {e['trial_id']} | {e['origin']} | {e.get('oneshot') or ''} | "
                         f"{_pct(e['macs_ratio'])} | {_pct(e['val_acc_search'])} | "
                         f"{_pct(e['val_acc_finetuned'])} |")
        return lines + [""]
    lines = ["## Re-evaluation of the top candidates", "",
             "Each trained again under other seeds; the winner is the best mean (a single lucky "
             "run does not win).", "",
             "| trial | origin | MACs % | val acc % (search) | repeats % | mean % |",
             "|---|---|---|---|---|---|"]
    for e in table:
        repeats = ", ".join(_pct(v) for v in e["val_acc_repeats"])
        lines.append(f"| {e['trial_id']} | {e['origin']} | {_pct(e['macs_ratio'])} | "
                     f"{_pct(e['val_acc_search'])} | {repeats} | {_pct(e['val_acc_mean'])} |")
    return lines + [""]


def oneshot_section(summary: dict) -> list[str]:
    """"Was the search worth it?": the fine-tuned winner beside the one-shot baselines at the
    same budget, trained by the same protocol (a candidate's epochs, then the fine-tune)."""
    oneshot, winner = summary.get("oneshot") or {}, summary.get("finetune")
    if not oneshot or not winner or winner.get("test_acc") is None:
        return []
    base = summary["baseline"]
    lines = ["## Was the search worth it?", "",
             "One-shot width vectors at the same budget, trained like the winner (the search's "
             "candidate epochs from the baseline's weights, then the same fine-tune), on the "
             "same test split:", "",
             "| structure | MACs % | test acc % | winner minus this (points) |", "|---|---|---|---|",
             f"| search winner ({summary.get('winner', {}).get('origin', '?')}) | "
             f"{_pct(summary['winner']['macs_ratio'])} | {_pct(winner['test_acc'])} | |"]
    for name, entry in oneshot.items():
        diff = 100 * (winner["test_acc"] - entry["test_acc"]) if entry.get("test_acc") is not None \
            else None
        lines.append(f"| one-shot {name} | {_pct(entry.get('macs_ratio'))} | "
                     f"{_pct(entry.get('test_acc'))} | "
                     f"{'-' if diff is None else f'{diff:+.2f}'} |")
    best = max((e.get("test_acc") or 0 for e in oneshot.values()), default=0)
    verdict = "ahead of" if winner["test_acc"] > best else "level with" \
        if winner["test_acc"] == best else "behind"
    n, acc = base.get("test_images"), winner["test_acc"]
    noise = f"; one test accuracy's standard error is about " \
        f"{100 * (acc * (1 - acc) / n) ** 0.5:.2f} points on {n} images" if n else ""
    lines += ["", f"The search's winner is **{verdict}** the best one-shot baseline on this run "
              f"(one seed{noise}).", ""]
    return lines


def front_section(summary: dict) -> list[str]:
    """A search reused at other budgets (``--from``): the best candidate per budget level."""
    front, search = summary.get("front"), summary.get("search", {})
    if not front:
        return []
    unit = {"macs": 1e6, "params": 1e6, "latency": 1.0}.get(front[0]["kind"], 1.0)
    label = {"macs": "M MACs", "params": "M params", "latency": "ms"}.get(front[0]["kind"], "")
    lines = ["## Best candidate per budget level", "",
             f"{search.get('known', 0)} candidates came from "
             f"{', '.join(f'`{s}`' for s in search.get('sources', []))} without training again; "
             f"validation accuracy after the search's epochs (the accuracy-vs-budget front):", "",
             f"| budget ({label}) | candidates within | best val acc % | its MACs % | trial | "
             "origin | trained in |", "|---|---|---|---|---|---|---|"]
    for e in front:
        mark = " (this run)" if e["this_run"] else ""
        lines.append(f"| {e['limit'] / unit:.4g}{mark} | {e['candidates']} | {_pct(e['val_acc'])} | "
                     f"{_pct(e['macs_ratio'])} | {e['trial_id']} | {e['origin']} | "
                     f"{e['from_run'] or 'this run'} |")
    return lines + [""]


def write_width_histograms(rows: list[dict], full_widths, logdir: Path) -> None:
    """TensorBoard histograms of each candidate's kept fraction per group (one step per
    candidate, in proposal order), beside Tune's per-trial scalars."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboardX is a dependency
        return
    import numpy as np
    full = np.asarray(full_widths, dtype=np.float64)
    with SummaryWriter(str(logdir)) as writer:
        for step, r in enumerate(rows):
            if not r["widths"]:
                continue
            ratios = np.asarray(r["widths"], dtype=np.float64) / full
            writer.add_histogram("candidate/width_ratio", ratios, step)
            if r.get("val_acc") is not None:
                writer.add_scalar("candidate/val_acc", r["val_acc"], step)
            writer.add_scalar("candidate/macs_ratio", r.get("macs_ratio") or 0.0, step)


def speed_lines(speed: dict | None) -> list[str]:
    """The measured speed-up: one row per runtime and batch size (older runs: one line)."""
    if not speed:
        return []
    runs = speed.get("runs") or [dict(speed, runtime="torch")]
    how = speed.get("method", "median")
    lines = [f"Measured forward latency on {speed['device']} ({speed.get('threads', '?')} "
             f"threads; baseline and winner {how}):", "",
             "| runtime | batch | baseline ms | winner ms | speed-up |", "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['runtime']} | {r['batch_size']} | {r['baseline_ms']:.2f} | "
                     f"{r['winner_ms']:.2f} | {r['speedup']:.2f}x |")
    return lines + [""]
