"""The self-check of a traced space, run before any training.

Tracing reads a model's structure; this module verifies that reading on pruned copies, the
way a search will use them:

1. a full-width copy reproduces the model's output and its MACs equal the cost model's;
2. for a few seeded width vectors (the smallest one, then random ones), each with random
   kept channels: surgery succeeds, the pruned model runs, returns ``(batch, classes)``, its
   MACs (the package's own per-layer count of one forward pass) and parameter count equal
   ``space.macs(widths)`` and ``space.params(widths)``, and its output equals the full
   model's with the removed channels zeroed at every layer that reads them (exact pruning;
   a float32 mismatch is decided again in float64, since rounding grows through deep random
   networks). Groups through a LayerNorm, a one-group GroupNorm or a layer that standardises
   its weight over its inputs are left out of that last comparison only: normalising over
   fewer channels legitimately changes the output.

A failing vector is bisected over its pruned groups down to the groups at fault, which are
frozen (removed from the space like ``space.ignore`` would, listed in ``space.frozen`` with
the reason), and the check runs again until it passes. It runs on a copy whose weights are
redrawn from a fixed seed, so its verdict depends only on the architecture (a rebuilt model
with other weights gets the same space) and no zero-initialised layer hides a wrong mapping.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from .space import TracingError, WidthSpace
from .tracing import Deadline, example_input, measured_macs, subspace

_BatchNorm = nn.modules.batchnorm._BatchNorm


def self_check(model: nn.Module, space: WidthSpace, *, samples: int = 3, seed: int = 0,
               rtol: float = 1e-4, deadline: Deadline | None = None,
               timeout_s: float | None = None) -> tuple[WidthSpace, list[tuple[str, str]]]:
    """Verify ``space`` on pruned copies of ``model`` (see the module docstring) and return the
    space without the groups that failed, and those groups as ``(name, reason)`` (also appended
    to ``space.frozen`` and ``space.skipped``). ``samples`` width vectors are tried, drawn with
    ``seed``; a full-width copy that does not reproduce the model raises :class:`TracingError`."""
    key = _fingerprint(model, space, samples, seed, rtol)
    if key in _VERDICTS:  # the verdict depends on the architecture only: reuse it
        frozen = _VERDICTS[key]
        by_name = dict(frozen)
        drop = {i: by_name[g.name] for i, g in enumerate(space.groups) if g.name in by_name}
        return (subspace(model, space, drop) if drop else space), list(frozen)
    deadline = deadline or Deadline(timeout_s, "the self-check")
    checker = _Checker(model, space, seed, rtol)
    checker.full_width(space)
    frozen: list[tuple[str, str]] = []
    while space.groups:
        drop = checker.failures(space, samples, deadline)
        if not drop:
            break
        frozen += [(space.groups[i].name, why) for i, why in sorted(drop.items())]
        space = subspace(model, space, drop)
    if len(_VERDICTS) >= 64:
        _VERDICTS.pop(next(iter(_VERDICTS)))
    _VERDICTS[key] = list(frozen)
    return space, frozen


#: Verdicts of :func:`self_check` by architecture fingerprint, so a model traced again in the
#: same process (a rebuilt checkpoint, the CLI, tests) is not checked again.
_VERDICTS: dict[tuple, list[tuple[str, str]]] = {}


def _fingerprint(model: nn.Module, space: WidthSpace, *settings) -> tuple:
    """What the self-check's verdict depends on: the model's structure (its modules' text,
    every parameter's and buffer's shape), the traced groups and the check's settings."""
    tensors = tuple((n, tuple(t.shape)) for n, t in
                    list(model.named_parameters()) + list(model.named_buffers()))
    groups = tuple((g.name, g.width, tuple((m.module, m.dim, len(m.idxs)) for m in g.members))
                   for g in space.groups)
    return (type(model).__qualname__, repr(model), tensors, groups, tuple(space.input_shape),
            space.round_to, space.min_ratio, settings)


#: Random values drawn per tensor at most; a larger tensor repeats them (a 100M-weight
#: classifier would otherwise cost a second of random numbers for a structural check).
_DRAW = 1 << 20


def _draw(shape, gen: torch.Generator, normal: bool) -> torch.Tensor:
    n = math.prod(shape)
    base = torch.randn(min(n, _DRAW), generator=gen) if normal else \
        torch.rand(min(n, _DRAW), generator=gen)
    return base.repeat(-(-n // len(base)))[:n].reshape(shape) if n > len(base) else base.reshape(shape)


def redrawn(model: nn.Module, seed: int) -> nn.Module:
    """An eval-mode copy of ``model`` with every parameter redrawn from ``seed`` (He-scaled
    normal weights, norm scales and biases in [0.5, 1.5)) and non-trivial BN statistics; the
    new tensors are put in place of the old ones while copying, so nothing is copied twice."""
    gen = torch.Generator().manual_seed(seed)
    memo = {}
    for p in model.parameters():
        if id(p) in memo:
            continue
        if p.ndim >= 2:
            value = _draw(p.shape, gen, True) * math.sqrt(2.0 / max(p[0].numel(), 1))
        else:
            value = _draw(p.shape, gen, False) + 0.5
        memo[id(p)] = nn.Parameter(value.to(p.device, p.dtype), requires_grad=p.requires_grad)
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            for buf, value in ((m.running_mean, _draw(m.running_mean.shape, gen, True) * 0.1),
                               (m.running_var, _draw(m.running_var.shape, gen, False) + 0.5)):
                memo[id(buf)] = value.to(buf.device, buf.dtype)
    return copy.deepcopy(model, memo).eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _reads_its_weight(module: nn.Module) -> bool:
    """A conv/linear layer that computes with its raw ``weight``: removing input channels then
    only drops weight columns. A subclass that derives its weight (e.g. weight standardisation
    over the input channels) computes another function after the cut, like a LayerNorm."""
    if type(module) in (nn.Conv2d, nn.Linear):
        return True
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        try:
            if isinstance(module, nn.Conv2d):
                k = max(module.kernel_size) * max(module.dilation) + max(module.stride) + 8
                x = torch.randn(1, module.in_channels, k, k, generator=gen).to(module.weight.device)
                plain = nn.Conv2d._conv_forward(module, x, module.weight, module.bias)
            else:
                x = torch.randn(2, module.in_features, generator=gen).to(module.weight.device)
                plain = nn.functional.linear(x, module.weight, module.bias)
            out = module(x)
        except Exception:  # noqa: BLE001 - cannot tell: do not compare its function
            return False
    return out.shape == plain.shape and bool(torch.allclose(out, plain, rtol=1e-4, atol=1e-5))


def _exact(group, modules: dict, plain: dict) -> bool:
    """Pruning this group keeps the function on the kept channels: no normalisation across its
    channels (a LayerNorm, a one-group GroupNorm, a layer that standardises its weight over
    the input channels it reads)."""
    for m in group.members:
        module = modules.get(m.module)
        if isinstance(module, nn.LayerNorm) or (isinstance(module, nn.GroupNorm)
                                                and module.num_groups == 1):
            return False
        if m.dim == "in" and isinstance(module, (nn.Conv2d, nn.Linear)):
            if m.module not in plain:
                plain[m.module] = _reads_its_weight(module)
            if not plain[m.module]:
                return False
    return True


def _zero_inputs(axis: int, idx: torch.Tensor):
    def hook(module, args):
        x = args[0].clone()
        x.index_fill_(axis % x.ndim, idx.to(x.device), 0)
        return (x, *args[1:])
    return hook


class _Checker:
    """The redrawn model, its input and its output, and the checks of one width vector."""

    def __init__(self, model: nn.Module, space: WidthSpace, seed: int, rtol: float):
        self.model = redrawn(model, seed)
        self.modules = dict(self.model.named_modules())
        self.x = example_input(self.model, space.input_shape)
        self.seed, self.rtol = seed, rtol
        with torch.no_grad():
            self.ref = self.model(self.x)
        self.finite = bool(torch.isfinite(self.ref).all())
        self.plain: dict[str, bool] = {}  # layer -> computes with its raw weight
        self.model64 = None  # a float64 copy, made when float32 rounding needs a second look

    def _close(self, out: torch.Tensor, ref: torch.Tensor, rtol: float | None = None) -> bool:
        """Equal up to ``rtol`` (default: the check's) of the reference's largest magnitude."""
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        rtol = self.rtol if rtol is None else rtol
        return float((out - ref).abs().max()) <= rtol * scale + 1e-30

    def full_width(self, space: WidthSpace) -> None:
        """A full-width copy must reproduce the model and the cost model's MACs."""
        from .surgery import prune

        macs, out = measured_macs(prune(self.model, space, space.full_widths), self.x)
        if self.finite and not self._close(out, self.ref):
            raise TracingError("a full-width copy of the model does not reproduce its output; "
                               "its forward pass must be deterministic in eval mode")
        if macs != space.full_macs:
            raise TracingError(f"the model's forward pass ran {macs} MACs but its traced layer "
                               f"shapes give {space.full_macs}; its layers must run the same way "
                               f"for every input")

    def failures(self, space: WidthSpace, samples: int, deadline: Deadline) -> dict[int, str]:
        """Groups at fault in the first failing vector (index -> reason), or {} if all pass."""
        rng = np.random.default_rng(self.seed)
        vectors = [space.lower] + list(space.sample(rng, max(samples - 1, 0)))
        for w in vectors[:max(samples, 1)]:
            keep = {i: np.sort(rng.choice(g.width, int(v), replace=False))
                    for i, (g, v) in enumerate(zip(space.groups, w)) if v < g.width}
            why = self.check(space, w, keep)
            if why is not None:
                found: dict[int, str] = {}
                self._bisect(space, w, keep, sorted(keep), why, found, deadline)
                return found
            deadline.check()
        return {}

    def _bisect(self, space, w, keep, candidates, why, found, deadline) -> None:
        """Narrow a failure of the groups ``candidates`` (others at full width) down to the
        single groups that fail on their own."""
        if len(candidates) <= 1:
            found.update({i: f"self-check: {why}" for i in candidates})
            return
        failed = False
        for half in (candidates[:len(candidates) // 2], candidates[len(candidates) // 2:]):
            deadline.check()
            part = np.array(space.full_widths, dtype=np.int64)
            part[half] = np.asarray(w)[half]
            reason = self.check(space, part, {i: keep[i] for i in half})
            if reason is not None:
                failed = True
                self._bisect(space, w, keep, half, reason, found, deadline)
        if not failed:  # fails only in combination: freeze the combination
            found.update({i: f"self-check: {why} (with other groups pruned)" for i in candidates})

    def check(self, space: WidthSpace, w, keep) -> str | None:
        """Why the pruned model at widths ``w`` (kept channels ``keep``) fails, or None."""
        from .surgery import prune

        try:
            pruned = prune(self.model, space, w, keep=keep)
        except Exception as exc:  # noqa: BLE001 - any failure is a verdict on the groups
            return f"surgery fails ({_first_line(exc)})"
        try:
            macs, out = measured_macs(pruned, self.x)
        except Exception as exc:  # noqa: BLE001
            return f"the pruned model fails ({_first_line(exc)})"
        if tuple(out.shape) != tuple(self.ref.shape):
            return f"the pruned model returns {tuple(out.shape)}, not {tuple(self.ref.shape)}"
        if macs != space.macs(w):
            return f"the pruned model runs {macs} MACs, the cost model says {space.macs(w)}"
        params = sum(p.numel() for p in pruned.parameters())
        if params != space.params(w):
            return f"the pruned model has {params} parameters, the cost model says {space.params(w)}"
        return self._same_function(space, w, keep, pruned, out)

    def _same_function(self, space, w, keep, pruned, out) -> str | None:
        """Compare the pruned output with the full model's with the removed channels zeroed,
        over the groups whose pruning is exact (the others stay at full width for this)."""
        from .surgery import prune

        if not self.finite:
            return None
        inexact = [i for i, g in enumerate(space.groups)
                   if w[i] < g.width and not _exact(g, self.modules, self.plain)]
        if inexact:
            w = np.array(w, dtype=np.int64)
            w[inexact] = np.array(space.full_widths)[inexact]
            keep = {i: k for i, k in keep.items() if i not in inexact}
            if not keep:
                return None
            with torch.no_grad():
                out = prune(self.model, space, w, keep=keep).eval()(self.x)
        if self._close(out, self._zeroed(self.model, self.x, space, w, keep)):
            return None
        # float32 rounding grows through deep random networks: decide in float64
        if self.model64 is None:
            self.model64 = copy.deepcopy(self.model).double()
        pruned64 = prune(self.model, space, w, keep=keep).double().eval()
        with torch.no_grad():
            out64 = pruned64(self.x.double())
        ref64 = self._zeroed(self.model64, self.x.double(), space, w, keep)
        if not self._close(out64, ref64, 1e-7):
            return "the pruned model computes another function than the model on the kept channels"
        return None

    def _zeroed(self, model, x, space: WidthSpace, w, keep) -> torch.Tensor:
        """``model``'s output on ``x`` with the channels pruning removes zeroed at the input of
        every layer that reads them."""
        from .surgery import keep_sets, removed_channels

        modules = self.modules if model is self.model else dict(model.named_modules())
        handles = []
        for (name, dim), gone in removed_channels(space, keep_sets(space, w, keep)).items():
            module = modules.get(name)
            if dim != "in" or module is None or len(gone) == 0:
                continue
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                continue  # whole groups go with their outputs, which later readers ignore
            axis = -1 if isinstance(module, nn.Linear) else 1
            handles.append(module.register_forward_pre_hook(_zero_inputs(axis, torch.as_tensor(gone))))
        try:
            with torch.no_grad():
                return model(x)
        finally:
            for h in handles:
                h.remove()
