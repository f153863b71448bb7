"""Latency budgets: per-group latency tables measured once on the target device.

For every group the table holds the measured forward latency of the network with only that
group narrowed to a few grid widths (the others full). A width vector's latency is predicted as
``full * prod_g (table_g(w_g) / full)`` with linear interpolation between measured widths. The
product (rather than a sum of savings) stays positive, and a layer whose input and output
groups both shrink is not credited twice: a sum of per-group savings over-counts exactly those
layers and can predict negative latency for small networks; the product errs on the slow,
budget-safe side when groups touch separate layers. :class:`structsearch.budget.LatencyCost`
is the cost view of that prediction (in milliseconds), so every searcher, ``project`` and
``sample`` work under a latency budget unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from .timing import measure_latency
from .space import WidthSpace
from .surgery import prune


def _paired(full_run, small: nn.Module, x, device: str, repeats: int) -> dict[str, float]:
    """The full network (``full_run``) and ``small`` timed interleaved: ms of each."""
    from .timing import interleaved, torch_runner
    small = small.to(device).eval()
    return interleaved({"full": full_run, "small": torch_runner(small, x, device)},
                       repeats=repeats, warmup=2, max_seconds=2.0)


@dataclass(frozen=True)
class LatencyTable:
    """Measured latency (ms) per group at a few widths, plus the full network's."""

    full_ms: float
    widths: list  # per group: measured widths, ascending (the full width last)
    ms: list  # per group: latency in ms at those widths
    device: str
    batch_size: int
    # Calibration: log(T / T_full) = alpha * sum_g log(table_g / T_full), fitted on
    # ``calibration`` random vectors timed at measure time (1: the plain product, the default:
    # see benchmarks/RESULTS.md, the fit helped ResNet-56 and hurt small_cnn and VGG-16).
    alpha: float = 1.0

    @classmethod
    def measure(cls, model: nn.Module, space: WidthSpace, *, device: str = "cpu", batch_size: int = 1,
                points: int = 5, repeats: int = 15, calibration: int = 0) -> "LatencyTable":
        """Time ``points`` widths per group. Each narrowed network is timed interleaved with the
        full one (minimum of up to ``repeats`` runs each, :func:`structsearch.timing.interleaved`)
        and kept as its ratio to the full network's time in the same session, so drift and a
        busy machine cancel out of the ratios."""
        import torch

        from .timing import torch_runner
        model = copy.deepcopy(model).to(device).eval()
        x = torch.randn(batch_size, *space.input_shape, device=device)
        full_run = torch_runner(model, x, device)
        full = space.full_widths
        full_times, widths, ratios = [], [], []
        for g in range(len(space)):
            grid = space.grid(g)
            chosen = sorted({int(grid[i]) for i in np.linspace(0, len(grid) - 1, points).round().astype(int)})
            row = []
            for w in chosen:
                if w == full[g]:
                    row.append(1.0)
                    continue
                vec = list(full)
                vec[g] = w
                ms = _paired(full_run, prune(model, space, vec), x, device, repeats)
                full_times.append(ms["full"])
                row.append(min(ms["small"] / ms["full"], 1.0))
            # Timing noise must not make a narrower layer look slower than a wider one.
            row = list(np.minimum.accumulate(np.asarray(row)[::-1])[::-1])
            widths.append(chosen)
            ratios.append(row)
        full_ms = float(min(full_times)) if full_times else \
            measure_latency(model, space.input_shape, batch_size=batch_size, device=device)
        times = [[float(full_ms * r) for r in row] for row in ratios]
        table = cls(full_ms, widths, times, device, batch_size)
        alpha = table._calibrate(model, space, x, full_run, device, repeats, calibration)
        return dataclasses.replace(table, alpha=alpha)

    def _calibrate(self, model, space, x, full_run, device, repeats, n: int) -> float:
        """Least-squares ``alpha`` (through the origin, in log space) on ``n`` random vectors."""
        if n < 1:
            return 1.0
        logs_pred, logs_true = [], []
        for w in space.sample(np.random.default_rng(0), n):
            ms = _paired(full_run, prune(model, space, w), x, device, repeats)
            logs_true.append(np.log(ms["small"] / ms["full"]))
            logs_pred.append(np.log(self.predict(w) / self.full_ms))
        p, t = np.asarray(logs_pred), np.asarray(logs_true)
        return float(np.clip((p @ t) / max(p @ p, 1e-12), 0.05, 3.0)) if p @ p > 0 else 1.0

    def predict(self, widths) -> np.ndarray | float:
        """Predicted latency (ms) of one width vector (float) or of each row of a 2-D array."""
        w = np.asarray(widths, dtype=np.float64)
        single = w.ndim == 1
        w2 = np.atleast_2d(w)
        logs = np.zeros(len(w2))
        for g, (xs, ys) in enumerate(zip(self.widths, self.ms)):
            logs += np.log(np.interp(w2[:, g], xs, ys) / self.full_ms)
        total = self.full_ms * np.exp(self.alpha * logs)
        return float(total[0]) if single else total

    def to_json(self) -> dict:
        return {"full_ms": self.full_ms, "widths": self.widths, "ms": self.ms, "device": self.device,
                "batch_size": self.batch_size, "alpha": self.alpha}

    @classmethod
    def from_json(cls, data: dict) -> "LatencyTable":
        return cls(float(data["full_ms"]), data["widths"], data["ms"], data["device"],
                   int(data["batch_size"]), float(data.get("alpha", 1.0)))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path) -> "LatencyTable":
        return cls.from_json(json.loads(Path(path).read_text()))
