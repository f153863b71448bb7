"""Per-group pruning sensitivity (Li et al., "Pruning Filters for Efficient ConvNets", Figure 2).

Each group alone is pruned to a range of ratios, keeping the criterion's top channels, and the
pruned model is evaluated on validation data without retraining. Flat curves mark groups that
can lose many channels; steep ones are the sensitive layers Li et al. leave whole.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from .space import WidthSpace

DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))


def sensitivity(model: nn.Module, space: WidthSpace, criterion, val_split, ratios=DEFAULT_RATIOS, *,
                batches=None, scores=None, out_png=None, device="cpu",
                batch_size: int = 512) -> list[dict]:
    """Validation top-1 after pruning one group at a time, without retraining.

    ``criterion`` is a name or criterion object (its channels are kept); data-driven criteria
    score on ``batches`` (default: ``val_split``); precomputed ``scores`` skip scoring.
    ``ratios`` are fractions of each group's channels *removed*, in [0, 1); the width is
    snapped to the space's grid, so it never goes below the floor. Returns one row per
    (group, ratio) plus the unpruned baseline as ratio 0: ``group`` (index), ``name``,
    ``ratio``, ``width``, ``macs`` (whole model), ``val_acc`` in [0, 1]. With ``out_png`` (a
    file, or a directory that gets ``sensitivity.png``) one accuracy-vs-ratio curve per group is
    plotted.
    """
    from . import criteria
    from .surgery import prune
    from .train import evaluate

    if scores is None:
        crit = criteria.resolve(criterion)
        data = (batches if batches is not None else val_split) if crit.needs_data else None
        scores = crit.scores(model, space, data)
    full = np.array(space.full_widths, dtype=np.int64)
    baseline = evaluate(model, val_split, batch_size=batch_size, device=device)["top1"]
    rows = []
    for g, group in enumerate(space.groups):
        rows.append({"group": g, "name": group.name, "ratio": 0.0, "width": int(full[g]),
                     "macs": int(space.macs(full)), "val_acc": baseline})
        accuracy_at: dict[int, float] = {int(full[g]): baseline}
        for ratio in ratios:
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"ratios are fractions removed in [0, 1), got {ratio}")
            target = full.astype(np.float64)
            target[g] = (1 - ratio) * full[g]
            widths = space.snap(target)  # full widths are on the grid: only group g moves
            w = int(widths[g])
            if w not in accuracy_at:  # ratios that snap to one width are evaluated once
                keep = {g: criteria.criterion_keep([scores[g]], [w])[0]}
                pruned = prune(model, space, widths, keep=keep)
                accuracy_at[w] = evaluate(pruned, val_split, batch_size=batch_size,
                                          device=device)["top1"]
            rows.append({"group": g, "name": group.name, "ratio": float(ratio), "width": w,
                         "macs": int(space.macs(widths)), "val_acc": accuracy_at[w]})
    if out_png is not None:
        plot_sensitivity(rows, out_png)
    return rows


def plot_sensitivity(rows: list[dict], out_png) -> Path:
    """One validation-accuracy curve per group against the fraction of its channels removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(out_png)
    if path.is_dir() or not path.suffix:
        path = path / "sensitivity.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    groups = sorted({r["group"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    for i, g in enumerate(groups):
        mine = sorted((r for r in rows if r["group"] == g), key=lambda r: r["ratio"])
        ax.plot([100 * r["ratio"] for r in mine], [100 * r["val_acc"] for r in mine], marker="o",
                markersize=3, color=cmap(i / max(len(groups) - 1, 1)),
                label=f"{g}: {mine[0]['name']}")
    ax.set_xlabel("channels removed from the group (%)")
    ax.set_ylabel("validation top-1 (%), no retraining")
    ax.set_title("Pruning sensitivity per group")
    ax.grid(alpha=0.3)
    if len(groups) <= 16:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def group_drops(rows: list[dict], at: float = 0.5) -> np.ndarray:
    """Per group, the validation accuracy lost (baseline - accuracy) with the fraction ``at``
    of its channels removed (the nearest measured ratio)."""
    groups = sorted({r["group"] for r in rows})
    drops = np.zeros(len(groups))
    for g in groups:
        mine = [r for r in rows if r["group"] == g]
        base = next(r["val_acc"] for r in mine if r["ratio"] == 0.0)
        near = min(mine, key=lambda r: abs(r["ratio"] - at))
        drops[g] = base - near["val_acc"]
    return drops


def li_widths(space: WidthSpace, rows: list[dict], limit: float, *, cost=None,
              tolerance: float = 0.02, at: float = 0.5) -> np.ndarray:
    """Li et al.'s read-out of the sensitivity curves: groups that lose more than ``tolerance``
    validation accuracy with the fraction ``at`` of their channels removed are sensitive and
    kept whole; every other group keeps one common ratio, the largest that meets ``limit``
    (bisection). When even the prunable groups at their floor cannot meet the budget, the
    least sensitive of the sensitive groups become prunable, one by one."""
    view = space._view(cost)
    drops = group_drops(rows, at)
    whole = [g for g in np.argsort(-drops, kind="stable") if drops[g] > tolerance]
    full = np.asarray(space.full_widths, dtype=np.float64)
    while True:
        mask = np.zeros(len(space), dtype=bool)
        mask[list(whole)] = True

        def widths(r: float) -> np.ndarray:
            return space.snap(np.where(mask, full, np.maximum(r * full, space.lower)))
        if view.cost(widths(0.0)) <= limit:
            break
        if not whole:
            return space.project(widths(0.0), limit, cost=view)
        whole = whole[:-1]
    lo, hi = 0.0, 1.0
    if view.cost(widths(hi)) <= limit:
        return widths(hi)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if view.cost(widths(mid)) <= limit else (lo, mid)
    return widths(lo)


def write_csv(rows: list[dict], path) -> Path:
    """The curves as ``sensitivity.csv`` (group, name, ratio, width, macs, val_acc)."""
    import csv
    import io

    from .report import atomic_write
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["group", "name", "ratio", "width", "macs", "val_acc"])
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(path), buf.getvalue())
    return Path(path)


def read_csv(path) -> list[dict]:
    import csv
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{"group": int(r["group"]), "name": r["name"], "ratio": float(r["ratio"]),
             "width": int(r["width"]), "macs": int(r["macs"]), "val_acc": float(r["val_acc"])}
            for r in rows]
