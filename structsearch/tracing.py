"""Tracing a model into a :class:`~structsearch.space.WidthSpace` (the torch side of the space).

Groups are discovered by tracing the model with Torch-Pruning's ``DependencyGraph`` (no
per-model rules), and every member's channel indices are recorded against the group's own
channel numbering ("root" channels), so surgery and cost need nothing from the tracer
afterwards. One forward pass records each conv/linear layer's shape, from which the closed-form
MACs and parameter cost models (:mod:`structsearch.cost`) are built.
"""
from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cost import Affine, CostModel
from .layers import CUSTOM_LEAVES
from .space import Group, Member, WidthSpace, _grid

_BatchNorm = nn.modules.batchnorm._BatchNorm


def is_layer(module: nn.Module) -> bool:
    """A conv or linear layer (the layers that cost MACs)."""
    return isinstance(module, (nn.Conv2d, nn.Linear))


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv: one filter per channel, so its width is its producer's."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def channel_count(module: nn.Module, dim: str) -> int:
    """Full output (``dim="out"``) or input channel count of a conv, linear, BN or custom leaf."""
    if isinstance(module, _BatchNorm):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features if dim == "out" else module.in_features
    return module.out_channels if dim == "out" else module.in_channels


# ---------------------------------------------------------------------------------- shapes
@dataclass
class LayerShape:
    """What one forward pass tells about a conv/linear layer."""

    kind: str  # "conv" | "linear"
    kernel: int  # k_h * k_w (1 for linear)
    positions: int  # output positions per image and call: H_out*W_out (conv) or leading dims (linear)
    calls: int


def record_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    """Run ``model`` once on ``example`` (batch of 1) and record every conv/linear layer's shape."""
    shapes: dict[str, LayerShape] = {}
    handles = []

    def hook(name):
        def fn(module, inputs, output):
            n = output.shape[0]
            if isinstance(module, nn.Conv2d):
                positions = output.shape[2] * output.shape[3]
                kernel = module.kernel_size[0] * module.kernel_size[1]
                kind = "conv"
            else:
                positions = output.numel() // (n * module.out_features)
                kernel, kind = 1, "linear"
            if name in shapes:
                shapes[name].calls += 1
            else:
                shapes[name] = LayerShape(kind, kernel, positions, 1)
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


# ---------------------------------------------------------------------------------- groups
def _tracer_pruners():
    import torch_pruning as tp

    class _LeafPruner(tp.pruner.function.BasePruningFunc):
        # The tracer only needs channel counts; our own surgery does the cutting.
        def prune_out_channels(self, layer, idxs):
            return layer

        def prune_in_channels(self, layer, idxs):
            return layer

        def get_out_channels(self, layer):
            return layer.out_channels

        def get_in_channels(self, layer):
            return layer.in_channels

    return {cls: _LeafPruner() for cls in CUSTOM_LEAVES}


def _output_layers(dg, model: nn.Module) -> list[nn.Module]:
    """Conv/linear layers whose output channels reach the model output without passing through
    another conv/linear layer: their widths are the model's output and never searchable."""
    result = []
    for module in model.modules():
        if not is_layer(module) or module not in dg.module2node:
            continue
        stack, seen, reaches_output = [dg.module2node[module]], set(), False
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if not node.outputs:
                reaches_output = True
                break
            for nxt in node.outputs:
                if not is_layer(nxt.module):
                    stack.append(nxt)
        if reaches_output:
            result.append(module)
    return result


def _merge_items(raw, names, dg):
    """The tracer's dependency items of one group merged per (module, dim) into (idxs, roots)
    lists, and the reason the group cannot be searched (None if it can)."""
    merged: dict[tuple[str, str], tuple[list, list]] = {}
    reason = None
    for item in raw:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or module not in names:
            continue
        has_params = any(True for _ in module.parameters(recurse=False))
        supported = isinstance(module, (nn.Conv2d, nn.Linear, _BatchNorm)) \
            or isinstance(module, CUSTOM_LEAVES)
        if not supported:
            if has_params:
                reason = f"unsupported layer {type(module).__name__} ({names[module]})"
            continue
        if isinstance(module, nn.Conv2d) and module.groups > 1 and not is_depthwise(module):
            reason = f"grouped conv {names[module]} (groups={module.groups})"
        dim = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
        key = (names[module], dim)
        idxs, roots = merged.setdefault(key, ([], []))
        idxs.extend(int(i) for i in item.idxs)
        roots.extend(int(r) for r in item.root_idxs)
    return merged, reason


def _convert(raw, names, model, dg):
    """One tracer group as a :class:`Group` plus the reason it is not searchable (or None);
    ``(None, None)`` for a group without any supported module."""
    merged, reason = _merge_items(raw, names, dg)
    if not merged:
        return None, None
    members = []
    for (name, dim), (idxs, roots) in merged.items():
        pairs = sorted(set(zip(idxs, roots)))
        members.append(Member(name, dim, np.array([p[0] for p in pairs], dtype=np.int64),
                              np.array([p[1] for p in pairs], dtype=np.int64)))
    root_module = raw[0].dep.target.module
    width = len(set(int(r) for r in raw[0].root_idxs))
    for m in members:
        counts = np.bincount(m.root_idxs, minlength=width)
        if len(counts) != width or counts.min() != counts.max():
            reason = reason or f"uneven channel mapping at {m.module}"
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    members.sort(key=lambda m: (order[m.module], m.dim))
    producers = [m.module for m in members if m.dim == "out" and
                 isinstance(modules[m.module], (nn.Conv2d, nn.Linear))]
    if not producers:
        producers = [names[root_module]]
    name = ",".join(producers) if len(producers) <= 2 else \
        f"{producers[0]}..{producers[-1]} ({len(producers)} layers)"
    return Group(name=name, width=width, members=tuple(members)), reason


def _dependency_graph(model: nn.Module, example: torch.Tensor):
    """Torch-Pruning's dependency graph of an eval-mode copy of ``model`` (tracing runs a
    forward pass, which would otherwise update the caller's BN running statistics)."""
    import torch_pruning as tp

    was_training = model.training
    traced = copy.deepcopy(model).eval()
    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(
            traced, example_inputs=example, customized_pruners=_tracer_pruners())
    model.train(was_training)
    return dg, traced


def _searchable_groups(dg, traced: nn.Module, ignore, min_width: int):
    """The traced model's groups split into searchable ones and ``(name, reason)`` of the rest."""
    tnames = {module: name for name, module in traced.named_modules()}
    outputs = _output_layers(dg, traced)
    raw_groups = dg.get_all_groups(ignored_layers=outputs, root_module_types=[nn.Conv2d, nn.Linear])
    groups, skipped = [], []
    for raw in raw_groups:
        group, reason = _convert(raw, tnames, traced, dg)
        if group is None:
            continue
        if reason is None:
            for pattern in ignore:
                if any(fnmatch.fnmatchcase(m, pattern) for m in group.producers):
                    reason = f"ignored by '{pattern}'"
                    break
        if reason is None and group.width < min_width:
            reason = "a single channel"
        if reason is not None:
            skipped.append((group.name, reason))
            continue
        groups.append(group)
    return groups, skipped


def trace(model: nn.Module, input_shape, *, ignore=(), round_to: int = 1, min_ratio: float = 0.1,
          model_name: str | None = None, model_kwargs: dict | None = None,
          min_width: int = 2) -> WidthSpace:
    """Trace ``model`` on one input of ``input_shape`` (C, H, W) and discover its groups.

    ``ignore`` holds module names or glob patterns; a group whose output channels are
    produced by a matching layer is not searchable (layers that only read a group's
    channels do not freeze it). The classifier output and the input channels are never searchable,
    nor are groups narrower than ``min_width`` (a single channel cannot be cut; ``min_width=1``
    keeps them, e.g. to map the groups of an already pruned copy).
    """
    if round_to < 1:
        raise ValueError("round_to must be >= 1")
    if not 0 < min_ratio <= 1:
        raise ValueError("min_ratio must be in (0, 1]")
    input_shape = tuple(int(s) for s in input_shape)
    example = torch.randn(1, *input_shape)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    dg, traced = _dependency_graph(model, example)
    groups, skipped = _searchable_groups(dg, traced, ignore, min_width)
    groups.sort(key=lambda g: min(order.get(m, 0) for m in g.producers or g.modules))
    space = WidthSpace(groups=groups, input_shape=input_shape, round_to=round_to,
                       min_ratio=min_ratio, ignore=tuple(ignore), skipped=skipped,
                       model_name=model_name, model_kwargs=dict(model_kwargs or {}))
    space._macs, space._params = cost_models(groups, model, example)
    space._grids = [_grid(gr.width, min_ratio, round_to) for gr in groups]
    return space


# ---------------------------------------------------------------------------------- costs
class _ChannelCounts:
    """Every module dimension's channel count as an :class:`Affine` of the width vector: the
    full count minus the channels the groups own, plus each group's width times its
    multiplicity."""

    def __init__(self, groups: list[Group], modules: dict[str, nn.Module]):
        self.num_groups = g = len(groups)
        self.tables: dict[str, dict[str, list]] = {"out": {}, "in": {}}
        for gi, group in enumerate(groups):
            for m in group.members:
                entry = self.tables[m.dim].setdefault(
                    m.module, [float(channel_count(modules[m.module], m.dim)), np.zeros(g)])
                entry[0] -= len(m.idxs)
                entry[1][gi] += m.multiplicity
        self.one = Affine(1.0, np.zeros(g))

    def __call__(self, name: str, dim: str, default: int) -> Affine:
        table = self.tables[dim]
        if name in table:
            return Affine(table[name][0], table[name][1])
        return self.const(float(default))

    def const(self, value: float) -> Affine:
        return Affine(value, np.zeros(self.num_groups))


def _add_layer(macs: CostModel, params: CostModel, counts: _ChannelCounts, name: str,
               module: nn.Module, shape: LayerShape | None) -> None:
    """The MACs (when the layer ran) and parameter terms of one conv or linear layer."""
    if isinstance(module, nn.Conv2d):
        out = counts(name, "out", module.out_channels)
        if is_depthwise(module):
            inp = counts.one
        elif module.groups > 1:
            inp = counts.const(module.in_channels / module.groups)
        else:
            inp = counts(name, "in", module.in_channels)
        k = module.kernel_size[0] * module.kernel_size[1]
    else:
        out = counts(name, "out", module.out_features)
        inp = counts(name, "in", module.in_features)
        k = 1
    if shape is not None:
        macs.add(k * shape.positions * shape.calls, out, inp, name)
    params.add(k, out, inp, name)
    if module.bias is not None:
        params.add(1, out, counts.one, name)


def cost_models(groups: list[Group], model: nn.Module,
                example: torch.Tensor) -> tuple[CostModel, CostModel]:
    """Closed-form MACs and parameter cost models of ``model`` over ``groups`` (one forward
    pass on ``example`` records the layer shapes)."""
    shapes = record_shapes(model, example)
    counts = _ChannelCounts(groups, dict(model.named_modules()))
    macs, params = CostModel(len(groups)), CostModel(len(groups))
    for name, module in model.named_modules():
        if is_layer(module):
            _add_layer(macs, params, counts, name, module, shapes.get(name))
        elif isinstance(module, _BatchNorm):
            if module.affine:
                params.add(2, counts(name, "out", module.num_features), counts.one, name)
        else:
            n = sum(p.numel() for p in module.parameters(recurse=False))
            if n:
                params.add(n, counts.one, counts.one, name)
    return macs, params
