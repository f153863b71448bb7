"""Latency budgets: a per-layer latency model measured once on the target device.

Every conv and linear layer is timed on its own, at a few input and output widths spanning what
the space allows, on an input of its own map size (layers of one shape share the timings). A
width vector's latency is then predicted as

    T(w) = sum_k s_k * sum_{l of kind k} t_l(c_in_l(w), c_out_l(w)) + r * act(w) / act(full) + c

where ``t_l`` interpolates layer l's timings bilinearly, ``act`` counts the conv/linear output
activations (what norms, activations, residual adds and pooling touch; they shrink with the
channels), k runs over layer kinds (k x k convs; 1 x 1 convs and linear layers; grouped and
depthwise convs: they use the hardware differently) and ``s_k, r, c >= 0`` are fitted by least
squares of the relative error on whole networks (the full one, the smallest one and
``calibration`` random width vectors, each pruned and timed alone) at measure time: ``s_k``
absorbs what a layer timed alone misses (cache state, dispatch), ``c`` the fixed cost of a
forward pass.

It replaces a per-group product of one-group-at-a-time ratios, which under-predicted networks
with many groups by 39-51% (their fixed per-layer costs do not shrink; benchmarks/RESULTS.md).
:class:`structsearch.budget.LatencyCost` is the cost view of the prediction (in milliseconds),
so every searcher, ``project`` and ``sample`` work under a latency budget unchanged.
"""
from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from .space import WidthSpace
from .surgery import prune

VERSION = 2


def min_ms(run, repeats: int, max_seconds: float = 1.0) -> float:
    """Minimum ms of ``run`` over up to ``repeats`` runs (the least disturbed one) after 2
    warm-up runs, stopping after ``max_seconds`` (at least 5 runs)."""
    from .timing import interleaved
    return interleaved({"x": run}, repeats=repeats, warmup=2, max_seconds=max_seconds)["x"]


def block_latency(model: nn.Module, space: WidthSpace, vectors, x, device: str,
                  repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Per width vector: the full network's latency (ms) and the pruned one's, timed right
    after it. Each network runs alone, run after run (as deployed: interleaving two networks
    run by run evicts their weights from the caches and makes small ones look slower), in a
    block right after a block of the full network, so a machine that gets busier or quieter
    over the minutes changes both alike (their ratio cancels it)."""
    from .timing import torch_runner
    full_run = torch_runner(model, x, device)
    fulls, smalls = [], []
    for w in vectors:
        fulls.append(min_ms(full_run, repeats))
        smalls.append(min_ms(torch_runner(prune(model, space, w).to(device).eval(), x, device),
                             repeats))
    return np.asarray(fulls), np.asarray(smalls)


def _record_inputs(model: nn.Module, names, x) -> dict[str, tuple]:
    """Per layer name: (input shape, output positions per channel, calls) of one forward."""
    import torch
    seen: dict[str, list] = {}
    modules = dict(model.named_modules())
    handles = []
    for name in names:
        def hook(module, args, output, name=name):
            entry = seen.setdefault(name, [tuple(args[0].shape), 0, 0])
            width = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
            entry[1] = output.numel() // (output.shape[0] * width)
            entry[2] += 1
        handles.append(modules[name].register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: tuple(v) for k, v in seen.items()}


def _standalone(module: nn.Module, ci: int, co: int) -> tuple[nn.Module, int]:
    """A fresh layer like ``module`` with ``ci`` inputs and ``co`` outputs (depthwise: ``co``
    channels; grouped: whole conv groups), and its actual input width."""
    from .tracing import is_depthwise
    if isinstance(module, nn.Conv2d):
        groups = module.groups
        if is_depthwise(module):
            ci = groups = co
        elif groups > 1:
            per_out, per_in = module.out_channels // groups, module.in_channels // groups
            groups = max(1, round(co / per_out))
            ci, co = groups * per_in, groups * per_out
        layer = nn.Conv2d(ci, co, module.kernel_size, module.stride, module.padding,
                          module.dilation, groups, bias=module.bias is not None,
                          padding_mode=module.padding_mode)
        return layer, ci
    return nn.Linear(ci, co, bias=module.bias is not None), ci


def _kind(module: nn.Module) -> str:
    """What a layer is, for the fit: kinds differ in how well they use the hardware."""
    from .tracing import is_depthwise
    if isinstance(module, nn.Conv2d):
        if is_depthwise(module) or module.groups > 1:
            return "grouped"
        return "conv" if module.kernel_size[0] * module.kernel_size[1] > 1 else "pointwise"
    return "pointwise"


def _levels(const: float, coef, lower, upper, points: int) -> list[int]:
    lo, hi = const + float(np.dot(coef, lower)), const + float(np.dot(coef, upper))
    return sorted({int(round(v)) for v in np.linspace(lo, hi, points)})


def _interp2(xs, ys, table, x, y) -> np.ndarray:
    """Bilinear interpolation of ``table[len(xs), len(ys)]`` at points ``(x, y)`` (clamped)."""
    rows = np.stack([np.interp(y, ys, row) for row in table])  # (len(xs), n)
    if len(xs) == 1:
        return rows[0]
    i = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, len(xs) - 2)
    x0, x1 = np.asarray(xs, dtype=np.float64)[i], np.asarray(xs, dtype=np.float64)[i + 1]
    t = np.clip((x - x0) / (x1 - x0), 0.0, 1.0)
    cols = np.arange(len(x))
    return rows[i, cols] * (1 - t) + rows[i + 1, cols] * t


def _nnls(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (exhaustive over active sets: few columns)."""
    best, best_err = np.zeros(X.shape[1]), float(y @ y)
    for k in range(1, X.shape[1] + 1):
        for cols in itertools.combinations(range(X.shape[1]), k):
            sol, *_ = np.linalg.lstsq(X[:, cols], y, rcond=None)
            if np.all(sol >= 0):
                coef = np.zeros(X.shape[1])
                coef[list(cols)] = sol
                err = float(np.sum((X @ coef - y) ** 2))
                if err < best_err:
                    best, best_err = coef, err
    return best


def _parts(layers: list, w2: np.ndarray) -> tuple[dict, np.ndarray]:
    """Per row of ``w2``: the summed standalone layer time (ms) per layer kind and the output
    activations."""
    kinds: dict[str, np.ndarray] = {}
    act = np.zeros(len(w2))
    for layer in layers:
        co = layer["out"][0] + w2 @ np.asarray(layer["out"][1])
        ci = layer["in"][0] + w2 @ np.asarray(layer["in"][1])
        ms = layer["calls"] * _interp2(layer["ci"], layer["co"], np.asarray(layer["ms"]), ci, co)
        kinds[layer["kind"]] = kinds.get(layer["kind"], 0.0) + ms
        act += layer["calls"] * layer["positions"] * co
    return kinds, act


@dataclass(frozen=True)
class LatencyTable:
    """Per-layer timings (ms) over a grid of widths and the fitted whole-network combination."""

    full_ms: float  # measured latency of the full network
    groups: int
    layers: list  # per layer: dict(name, calls, positions, out/in affine, ci, co, ms grid)
    coef: dict  # "s:<kind>" per layer kind, "r" and "c" (the module docstring's s, r, c)
    act_full: float
    device: str
    batch_size: int

    @classmethod
    def measure(cls, model: nn.Module, space: WidthSpace, *, device: str = "cpu", batch_size: int = 1,
                points: int = 5, repeats: int = 15, calibration: int = 12) -> "LatencyTable":
        """Time every conv/linear layer alone at ``points`` input and output widths (minimum of
        up to ``repeats`` runs), then fit the combination on the full network, the smallest one
        and ``calibration`` random width vectors (each pruned and timed the same way)."""
        import torch

        model = copy.deepcopy(model).to(device).eval()
        x = torch.randn(batch_size, *space.input_shape, device=device)
        channels = space.layer_channels()
        shapes = _record_inputs(model, list(channels), x)
        modules = dict(model.named_modules())
        cache: dict[tuple, list] = {}
        layers = []
        for name, (out, inp) in channels.items():
            if name not in shapes:
                continue
            shape, positions, calls = shapes[name]
            module = modules[name]
            co = _levels(out.const, out.coef, space.lower, space.upper, points)
            ci = _levels(inp.const, inp.coef, space.lower, space.upper, points)
            key = (repr(module), shape, tuple(ci), tuple(co))
            if key not in cache:
                cache[key] = cls._time_layer(module, shape, ci, co, device, repeats)
            layers.append({"name": name, "kind": _kind(module), "calls": int(calls),
                           "positions": int(positions),
                           "out": [float(out.const), [float(v) for v in out.coef]],
                           "in": [float(inp.const), [float(v) for v in inp.coef]],
                           "ci": ci, "co": co, "ms": cache[key]})
        vectors = [space.upper, space.lower, *space.sample(np.random.default_rng(0), calibration)]
        fulls, smalls = block_latency(model, space, vectors, x, device, repeats)
        full_ms = float(np.median(fulls))
        y = full_ms * smalls / fulls
        kinds, act = _parts(layers, np.asarray(vectors, dtype=np.float64))
        # A kind with its own scale needs a real share of the time (10% of the full network's
        # summed layer time); the others share the largest kind's scale (a scale fitted to a
        # few microseconds would only fit noise).
        total = sum(v[0] for v in kinds.values())
        major = sorted(k for k, v in kinds.items() if v[0] >= 0.1 * total)
        largest = max(kinds, key=lambda k: kinds[k][0])
        cols = {k: kinds[k] + (sum(v for j, v in kinds.items() if j not in major)
                               if k == largest else 0.0) for k in major}
        X = np.column_stack([cols[k] for k in major] + [act / act[0], np.ones(len(vectors))])
        fit = _nnls(X / y[:, None], np.ones(len(y)))  # relative errors: small networks count
        scale = dict(zip(major, fit))
        coef = {**{f"s:{k}": float(scale.get(k, scale[largest])) for k in sorted(kinds)},
                "r": float(fit[-2]), "c": float(fit[-1])}
        return cls(full_ms, len(space), layers, coef, float(act[0]), device, batch_size)

    @staticmethod
    def _time_layer(module, shape, ci, co, device, repeats) -> list:
        """ms of ``module``'s standalone copy at every (ci, co); a wider layer is never faster
        (timing noise must not make it so)."""
        import torch

        from .timing import torch_runner
        # A depthwise or grouped conv has one input level (its width per conv group, see
        # WidthSpace.layer_channels); _standalone sizes its input from the output width.
        grid = np.zeros((len(ci), len(co)))
        for i, j in itertools.product(range(len(ci)), range(len(co))):
            layer, width = _standalone(module, ci[i], co[j])
            layer = layer.to(device).eval()
            x = torch.randn(*shape[:1], width, *shape[2:], device=device) \
                if isinstance(layer, nn.Conv2d) else torch.randn(*shape[:-1], width, device=device)
            grid[i, j] = min_ms(torch_runner(layer, x, device), repeats)
        grid = np.minimum.accumulate(grid[::-1], axis=0)[::-1]
        grid = np.minimum.accumulate(grid[:, ::-1], axis=1)[:, ::-1]
        return grid.tolist()

    def predict(self, widths) -> np.ndarray | float:
        """Predicted latency (ms) of one width vector (float) or of each row of a 2-D array."""
        w = np.asarray(widths, dtype=np.float64)
        single = w.ndim == 1
        kinds, act = _parts(self.layers, np.atleast_2d(w))
        total = self.coef["r"] * act / max(self.act_full, 1e-12) + self.coef["c"]
        for kind, ms in kinds.items():
            total = total + self.coef[f"s:{kind}"] * ms
        return float(total[0]) if single else total

    def to_json(self) -> dict:
        return {"version": VERSION, "kind": "per-layer", "full_ms": self.full_ms,
                "groups": self.groups, "layers": self.layers, "coef": self.coef,
                "act_full": self.act_full, "device": self.device, "batch_size": self.batch_size}

    @classmethod
    def from_json(cls, data: dict) -> "LatencyTable":
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError("the latency table was written by another structsearch version "
                             "(per-group tables are no longer read); delete it to measure again")
        return cls(float(data["full_ms"]), int(data["groups"]), data["layers"],
                   {k: float(v) for k, v in data["coef"].items()}, float(data["act_full"]),
                   data["device"],
                   int(data["batch_size"]))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def load(cls, path) -> "LatencyTable":
        return cls.from_json(json.loads(Path(path).read_text()))
