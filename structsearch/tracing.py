"""Tracing a model into a :class:`~structsearch.space.WidthSpace` (the torch side of the space).

Torch-Pruning's ``DependencyGraph`` traces the model's autograd graph into nodes: one per
conv, linear, norm layer and per operation between them (add, concatenation, split, slice,
view, ...). From those nodes this module builds its own *channel graph*: a **slot** is one
channel dimension of one node (a layer's input or its output channels, a norm's or an
operation's channels), and an edge relates the positions of two slots that carry the same
channel, through the exact index arithmetic of concatenations, splits, slices and flattens
(read from the shapes autograd recorded, so nothing is inferred). The connected components
of that graph are the channels that must be removed together; components that touch the same
layers the same way form one prunable group. Every step is linear in the number of channel
positions, so no model can send the tracer into an exponential walk.

A construct the surgery cannot follow is *frozen* rather than guessed: a split with fixed
sizes, a slice with fixed bounds, a view that mixes channels with other dimensions (e.g. a
channel shuffle), a reduction over channels, a layer without channel surgery. Its channels
keep their full width, the group is listed in ``space.frozen`` with the reason, and one
:class:`~structsearch.space.TracingWarning` line per kind of reason names the groups. The
self-check (:mod:`structsearch.selfcheck`) then verifies the space on pruned copies.

Every member's channel indices are recorded against the group's own channel numbering ("root"
channels), so surgery and cost need nothing from the tracer afterwards. One forward pass
records each conv/linear layer's shape, from which the closed-form MACs and parameter cost
models (:mod:`structsearch.cost`) are built.
"""
from __future__ import annotations

import dataclasses

import contextlib
import copy
import fnmatch
import re
import signal
import threading
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .cost import Affine, CostModel
from .layers import CUSTOM_LEAVES
from .space import (Group, Member, TracingError, TracingTimeout, TracingWarning, WidthSpace,
                    _grid, group_round_to)


def _unit(group: Group) -> int:
    """Producer channels per root channel: 1, or the channels of one conv group when a grouped
    conv's width is counted in whole groups."""
    return max([m.multiplicity for m in group.members if m.dim == "out"] or [1])

_BatchNorm = nn.modules.batchnorm._BatchNorm
_InstanceNorm = nn.modules.instancenorm._InstanceNorm
#: Per-channel layers whose input and output channels are one dimension.
NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU)


def is_layer(module: nn.Module) -> bool:
    """A conv or linear layer (the layers that cost MACs)."""
    return isinstance(module, (nn.Conv2d, nn.Linear))


def is_depthwise(module: nn.Module) -> bool:
    """A depthwise conv: one filter per channel, so its width is its producer's."""
    return (isinstance(module, nn.Conv2d) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


def channel_count(module: nn.Module, dim: str) -> int:
    """Full output (``dim="out"``) or input channel count of a conv, linear, norm or custom leaf."""
    if isinstance(module, (_BatchNorm, _InstanceNorm)):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    if isinstance(module, nn.PReLU):
        return module.num_parameters
    if isinstance(module, nn.Linear):
        return module.out_features if dim == "out" else module.in_features
    return module.out_channels if dim == "out" else module.in_channels


def param_axis(param: torch.Tensor) -> int | None:
    """The channel axis of a free-standing parameter (e.g. a layer-scale vector): its last
    dimension longer than one, the convention of Torch-Pruning's tracer."""
    axes = [i for i, s in enumerate(param.shape) if s > 1]
    return axes[-1] if axes else None


def cannot_cut(module: nn.Module) -> str | None:
    """Why :func:`structsearch.surgery.prune` cannot cut ``module``'s channels, or None."""
    if isinstance(module, (nn.Conv2d, nn.Linear, _BatchNorm, _InstanceNorm, nn.GroupNorm,
                           nn.PReLU) + CUSTOM_LEAVES):
        return None
    if isinstance(module, nn.LayerNorm):
        return None if len(module.normalized_shape) == 1 else \
            f"LayerNorm over {len(module.normalized_shape)} dimensions"
    return f"no channel surgery for {type(module).__name__}"


# ---------------------------------------------------------------------------------- time limit
class Deadline:
    """A wall-clock limit for tracing: :meth:`check` raises :class:`TracingTimeout` once it has
    passed. Long loops call it; :func:`time_limit` also interrupts code that never calls it."""

    def __init__(self, seconds: float | None, what: str = "tracing"):
        self.seconds = seconds
        self.what = what
        self.end = None if not seconds else time.monotonic() + seconds

    def check(self) -> None:
        if self.end is not None and time.monotonic() > self.end:
            raise self.error()

    def left(self) -> float | None:
        return None if self.end is None else max(self.end - time.monotonic(), 0.0)

    def error(self) -> TracingTimeout:
        return TracingTimeout(f"{self.what} took longer than {self.seconds:g} s; raise "
                              f"space.trace_timeout_s, or freeze the slow part with space.ignore")


@contextlib.contextmanager
def time_limit(deadline: Deadline):
    """Interrupt the enclosed code with :class:`TracingTimeout` at ``deadline`` (a SIGALRM
    timer). Signals reach only the main thread, and another timer may be running (e.g. a test
    timeout): then only the cooperative :meth:`Deadline.check` calls enforce the limit."""
    left = deadline.left()
    usable = (left is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    state = {"on": True, "fired": 0}

    def on_alarm(signum, frame):
        state["fired"] += 1
        if not state["on"] or state["fired"] > 40:  # never outlive the block by more than 10 s
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        raise deadline.error()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    # Repeating: third-party code with a bare ``except:`` may swallow the first one.
    signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), 0.25)
    try:
        yield
    finally:
        state["on"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------- shapes
@dataclass
class LayerShape:
    """What one forward pass tells about a conv/linear layer."""

    kind: str  # "conv" | "linear"
    kernel: int  # k_h * k_w (1 for linear)
    positions: int  # output positions per image, summed over calls: H_out*W_out (conv) or leading dims
    calls: int


def _shape_hook(shapes: dict, name: str):
    def fn(module, inputs, output):
        n = output.shape[0]
        if isinstance(module, nn.Conv2d):
            positions = output.shape[2] * output.shape[3]
            kernel, kind = module.kernel_size[0] * module.kernel_size[1], "conv"
        else:
            positions = output.numel() // (n * module.out_features)
            kernel, kind = 1, "linear"
        if name in shapes:  # a reused layer: every call counts at its own resolution
            shapes[name].calls += 1
            shapes[name].positions += positions
        else:
            shapes[name] = LayerShape(kind, kernel, positions, 1)
    return fn


def forward_once(model: nn.Module, example: torch.Tensor):
    """Run ``model`` once (eval mode, no grad) on ``example`` (batch of 1); return every
    conv/linear layer's :class:`LayerShape` and the output."""
    shapes: dict[str, LayerShape] = {}
    handles = [module.register_forward_hook(_shape_hook(shapes, name))
               for name, module in model.named_modules() if is_layer(module)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes, output


def record_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    """Run ``model`` once on ``example`` (batch of 1) and record every conv/linear layer's shape."""
    return forward_once(model, example)[0]


def measured_macs(model: nn.Module, example: torch.Tensor):
    """Conv + linear MACs (bias excluded) of one forward pass on ``example`` (batch of 1),
    counted call by call from the layers' actual shapes, and the output."""
    shapes, output = forward_once(model, example)
    modules = dict(model.named_modules())
    total = 0
    for name, shape in shapes.items():
        module = modules[name]
        if isinstance(module, nn.Conv2d):
            per = module.out_channels * (module.in_channels // module.groups)
        else:
            per = module.out_features * module.in_features
        total += shape.kernel * shape.positions * per
    return total, output


def check_input_shape(input_shape) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints, or :class:`TracingError` saying the fix."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise TracingError(f"input_shape must be a sequence of ints such as (3, 32, 32); "
                           f"got {input_shape!r}") from None
    if len(shape) >= 4:
        raise TracingError(f"input_shape {shape} has {len(shape)} dimensions; give one input "
                           f"without the batch dimension, e.g. {shape[-3:]}")
    if not shape or min(shape) < 1:
        raise TracingError(f"input_shape must be positive sizes such as (3, 32, 32); got {shape}")
    return shape


def _checked_forward(model: nn.Module, example: torch.Tensor, logits: bool):
    """:func:`forward_once` with one-line errors for a failing forward, an output that is not
    one tensor, and (with ``logits``) a tensor that is not ``(batch, classes)``."""
    try:
        shapes, output = forward_once(model, example)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward is bad input
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TracingError(f"the model's forward pass fails on one input of shape "
                           f"{tuple(example.shape[1:])}: {first}; check input_shape") from None
    if not isinstance(output, torch.Tensor):
        raise TracingError(f"the model returns a {type(output).__name__}, not one (batch, "
                           f"classes) tensor; wrap it so forward returns the logits only")
    if logits and (output.ndim != 2 or output.shape[0] != example.shape[0]):
        raise TracingError(f"the model's output has shape {tuple(output.shape)} for a batch of "
                           f"{example.shape[0]}; structsearch needs (batch, classes) logits "
                           f"(end the model with global pooling and a linear classifier)")
    return shapes, output


# ---------------------------------------------------------------------------------- tracer
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


def _tp_stage(exc: BaseException) -> tuple[str, nn.Module | None]:
    """Where inside Torch-Pruning ``exc`` was raised: ``("mapping", None)`` for its shape
    inference and index mapping (which this module does not use), ``("layer", module)`` for
    a failure while handling one layer, ``("forward", None)`` when the model's own forward
    failed, ``("other", None)`` otherwise. Torch-Pruning retries a failed forward pass in a
    bare ``except:``, so the exceptions it was handling are searched for a layer too."""
    stage = _tp_frames_stage(exc)
    context = exc.__context__
    while stage[0] in ("forward", "other") and context is not None:
        if (found := _tp_frames_stage(context))[0] == "layer":
            return found
        context = context.__context__
    return stage


def _tp_frames_stage(exc: BaseException) -> tuple[str, nn.Module | None]:
    """:func:`_tp_stage` of one exception, from its own traceback."""
    tb, frames = exc.__traceback__, []
    while tb is not None:
        code = tb.tb_frame.f_code
        if "torch_pruning" in code.co_filename:
            if code.co_name in ("init_shape_information", "update_index_mapping"):
                return "mapping", None
            frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames:
        return "other", None
    if frames[-1].f_code.co_name == "_trace":
        return "forward", None
    for frame in reversed(frames):  # the innermost layer Torch-Pruning was handling
        module = frame.f_locals.get("module")
        module = getattr(frame.f_locals.get("node"), "module", None) if module is None else module
        if isinstance(module, nn.Module):
            return "layer", module
    return "other", None


def _run_tp(traced: nn.Module, example: torch.Tensor, ignored: list):
    """Torch-Pruning's dependency graph of ``traced``, each layer's output and input grad_fns
    (our own hooks: the graph keeps only one output per layer, and no inputs) and the model
    output. A failure in Torch-Pruning's own shape inference and index mapping, which come
    after the graph is complete and which this module replaces, is ignored."""
    import torch_pruning as tp

    module_fns: dict[nn.Module, list] = {}
    module_inputs: dict[nn.Module, set] = {}
    outputs = []

    def record_inputs(module, args):
        module_inputs.setdefault(module, set()).update(
            a.grad_fn for a in args if isinstance(a, torch.Tensor) and a.grad_fn is not None)

    def record(module, inputs, output):
        items = output.values() if isinstance(output, dict) else \
            output if isinstance(output, (tuple, list)) else [output]
        fns = [t.grad_fn for t in items if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        if fns:  # the first tensor is the layer's output; a layer Torch-Pruning fails on has all
            module_fns.setdefault(module, []).append(fns[0])
            module_fns.setdefault((module, "all"), []).extend(fns)

    handles = [m.register_forward_hook(record) for m in traced.modules()]
    handles += [m.register_forward_pre_hook(record_inputs) for m in traced.modules()]
    handles.append(traced.register_forward_hook(lambda m, i, o: outputs.append(o)))
    dg = tp.DependencyGraph()
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its warnings are about pruning, which we do not use
            dg.build_dependency(traced, example_inputs=(example,), ignored_layers=list(ignored),
                                customized_pruners=_tracer_pruners(), verbose=False)
    except Exception as exc:  # noqa: BLE001 - classified below
        if _tp_stage(exc)[0] != "mapping" or not hasattr(dg, "module2node"):
            raise
    finally:
        for h in handles:
            h.remove()
    return dg, module_fns, module_inputs, outputs[-1]


def _internal_ops(fns: list, inputs: set, limit: int = 64) -> set:
    """The autograd nodes a layer's forward created between its inputs and its outputs (e.g.
    the matrix product and views of a linear layer on a channels-last tensor): they belong to
    the layer's input side, whatever their shapes. Empty if the walk does not close within
    ``limit`` nodes (inputs that the hooks could not see)."""
    found, todo = set(), list(fns)
    while todo:
        for f, _ in todo.pop().next_functions:
            if f is None or f in inputs or f in found or hasattr(f, "variable"):
                continue
            found.add(f)
            todo.append(f)
            if len(found) > limit:
                return set()
    return found


def _dependency_graph(model: nn.Module, example: torch.Tensor, deadline: Deadline):
    """Torch-Pruning's graph of an eval-mode copy of ``model`` (tracing runs a forward pass,
    which would otherwise update the caller's BN statistics). A layer that Torch-Pruning fails
    on is left out of its tracing and the graph is built again, up to a few times; such layers
    are returned as ``{name: reason}`` and their channels are frozen."""
    failed: dict[str, str] = {}
    for _ in range(8):
        traced = copy.deepcopy(model).eval()
        modules = dict(traced.named_modules())
        example = example.detach().clone().requires_grad_(True)
        try:
            dg, module_fns, module_inputs, output = _run_tp(traced, example,
                                                            [modules[n] for n in failed])
            internal = set()
            for node in dg.module2node.values():
                if isinstance(node.module, nn.Module) and node.module in module_fns:
                    internal |= _internal_ops(module_fns[node.module],
                                              module_inputs.get(node.module, set()))
            return traced, dg, (module_fns, internal), output, example, failed
        except Exception as exc:  # noqa: BLE001 - one layer's failure must not sink the model
            deadline.check()  # Torch-Pruning's bare excepts may have swallowed the timeout
            stage, module = _tp_stage(exc)
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            name = {m: n for n, m in traced.named_modules()}.get(module)
            if stage != "layer" or name is None or name in failed or name == "":
                raise TracingError(f"Torch-Pruning cannot trace the model ({type(exc).__name__}: "
                                   f"{first}); freeze the layer at fault with space.ignore") from None
            failed[name] = f"Torch-Pruning fails on {type(module).__name__} {name}: {first}"
        deadline.check()
    raise TracingError("Torch-Pruning fails on more than 8 layers; freeze them with space.ignore")


# ---------------------------------------------------------------------------------- relations
# How positions of two slots correspond: ``from_a(a)`` returns the positions of ``a`` that
# exist on the other side and their counterparts, ``from_b`` the reverse (aligned arrays).
_BIG = 1 << 62


@dataclass(frozen=True)
class _Shift:
    """``b = a + offset`` for ``lo <= a < hi`` (identity, or one input of a concatenation)."""

    lo: int = 0
    hi: int = _BIG
    offset: int = 0

    def from_a(self, a):
        a = a[(a >= self.lo) & (a < self.hi)]
        return a, a + self.offset

    def from_b(self, b):
        a = b - self.offset
        keep = (a >= self.lo) & (a < self.hi)
        return a[keep], b[keep]


@dataclass(frozen=True)
class _Slice:
    """``b = (a - start) / step`` for the positions a slice ``[start:stop:step]`` keeps."""

    start: int
    stop: int
    step: int

    def from_a(self, a):
        a = a[(a >= self.start) & (a < self.stop) & ((a - self.start) % self.step == 0)]
        return a, (a - self.start) // self.step

    def from_b(self, b):
        a = b * self.step + self.start
        keep = a < self.stop
        return a[keep], b[keep]


@dataclass(frozen=True)
class _Repeat:
    """``b = a * k + j`` for ``j < k``: a flatten of ``k`` spatial positions per channel."""

    k: int

    def from_a(self, a):
        return np.repeat(a, self.k), (a[:, None] * self.k + np.arange(self.k)).ravel()

    def from_b(self, b):
        return b // self.k, b


@dataclass(frozen=True)
class _Piece:
    """Piece ``[offset, offset + size)`` of a split's input, then ``inner`` on the piece."""

    offset: int
    size: int
    inner: object

    def from_a(self, a):
        t = a[(a >= self.offset) & (a < self.offset + self.size)] - self.offset
        t, b = self.inner.from_a(t)
        return t + self.offset, b

    def from_b(self, b):
        t, b = self.inner.from_b(b)
        keep = t < self.size
        return t[keep] + self.offset, b[keep]


_IDENTITY = _Shift()


def _shape(fn, nr: int = 0) -> list[int] | None:
    """The shape of output ``nr`` of the forward op behind autograd node ``fn``."""
    try:
        return list(fn._input_metadata[nr].shape)
    except (AttributeError, IndexError, RuntimeError):
        return None


def _channel_dim(dim, shape) -> int | None:
    """``dim`` normalised against ``shape``; only dim 1 (NCHW channels, or features) is a
    channel operation, any other dim leaves channels alone."""
    if dim is None or shape is None:
        return None
    dim = int(dim)
    if dim >= _BIG or dim >= len(shape):  # some torch versions store garbage for "unset"
        return None
    return dim + len(shape) if dim < 0 else dim


def _split_offsets(fn) -> tuple[list[int], list[int]] | None:
    """Offsets and sizes of the pieces of a channel split (None if it splits another dim)."""
    sizes_in = list(getattr(fn, "_saved_self_sym_sizes", []) or [])
    if _channel_dim(getattr(fn, "_saved_dim", None), sizes_in) != 1:
        return None
    total = int(sizes_in[1])
    if hasattr(fn, "_saved_split_sizes"):
        sizes = [int(s) for s in fn._saved_split_sizes]
    else:
        step = int(fn._saved_split_size)
        sizes = [min(step, total - o) for o in range(0, total, step)]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    return offsets, sizes


_REDUCTIONS = ("Mean", "Sum", "Amax", "Amin", "Max", "Min", "Std", "Var", "Norm", "Prod",
               "Logsumexp", "Softmax", "LogSoftmax")


def _elementwise(name: str, su, sv):
    """The relation across an operation that Torch-Pruning treats as element-wise, judged by
    shapes: identity, ``None`` for an input broadcast over channels (no coupling), or a string
    saying why the operation mixes channels (the node is then frozen)."""
    if su is None or sv is None or name.startswith(("Permute", "Transpose")):
        return _IDENTITY  # a permutation moves the channel axis but keeps every channel's index
    if len(su) == len(sv):
        if len(su) < 2 or su[1] == sv[1]:
            return _IDENTITY
        if su[1] == 1:
            return None
        if name.startswith(_REDUCTIONS):
            return f"{name.rstrip('0123456789')} reduces over channels"
        return f"{name.rstrip('0123456789')} maps {su[1]} channels to {sv[1]}"
    if len(sv) < len(su):
        if len(sv) >= 2 and sv[:2] == su[:2]:
            return _IDENTITY  # a spatial reduction (e.g. global pooling)
        return f"{name.rstrip('0123456789')} reduces {tuple(su)} to {tuple(sv)}"
    return _IDENTITY  # a lower-rank operand broadcast against the channels


def _reshape(su, sv):
    """The relation across a view / reshape / flatten, or a string when it mixes channels with
    other dimensions (e.g. the (B, g, C/g, H, W) view of a channel shuffle)."""
    if su is None or sv is None or su == sv:
        return _IDENTITY
    if len(su) >= 2 and len(sv) >= 2 and su[:2] == sv[:2]:
        return _IDENTITY  # spatial dims merged or split
    if len(su) == 4 and len(sv) == 2 and sv[0] == su[0] and sv[1] == su[1] * su[2] * su[3]:
        return _Repeat(su[2] * su[3])  # flatten into a linear layer
    lead = int(np.prod(su[:-1])) == int(np.prod(sv[:-1]))
    if su[-1] == sv[-1] and lead and 2 in (len(su), len(sv)) and len(su) != len(sv):
        return _IDENTITY  # a linear layer on a channels-last tensor: (B, H, W, C) <-> (BHW, C)
    return f"view {tuple(su)} -> {tuple(sv)} mixes channels with other dimensions"


# ---------------------------------------------------------------------------------- channel graph
_OUTPUT = "model output"  # frozen silently: the classifier's outputs are never searchable


def _live(output: torch.Tensor, example: torch.Tensor, param_fns: set) -> tuple[set, set]:
    """The autograd nodes that depend on the model input, and those that depend on the input
    or on a free-standing parameter. Nodes outside both compute a layer's own weight (e.g. a
    weight-standardised conv) and carry no channels of the activations."""
    consumers: dict = {}
    stack, seen = [output.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for f, _ in fn.next_functions:
            if f is not None:
                consumers.setdefault(f, []).append(fn)
                stack.append(f)

    def reach(roots):
        found, todo = set(roots), list(roots)
        while todo:
            for c in consumers.get(todo.pop(), ()):
                if c not in found:
                    found.add(c)
                    todo.append(c)
        return found

    from_input = reach([f for f in seen if getattr(f, "variable", None) is example])
    return from_input, from_input | reach([f for f in seen if f in param_fns])


class _ChannelGraph:
    """Slots (channel dimensions of traced nodes), the relations between their positions, and
    the positions that must stay, built from Torch-Pruning's graph (see the module docstring)."""

    def __init__(self, traced, dg, fns, output, example, failed: dict[str, str]):
        from torch_pruning import ops

        module_fns, self.internal = fns
        self.O = ops.OPTYPE
        self.example = example
        self.names = {m: n for n, m in traced.named_modules()}
        self.param_names = {id(p): n for n, p in traced.named_parameters()}
        self.nodes = list(dg.module2node.values())
        self.modules = modules = dict(traced.named_modules())
        self.rank = {name: i for i, name in enumerate(modules)}
        failed_fns = {fn: why for name, why in failed.items()
                      for fn in module_fns.get((modules[name], "all"), [])}
        self.fn2node, self.node_fns, self.opaque = {}, {}, {}
        for node in self.nodes:
            fns = (module_fns.get(node.module) if self.is_module(node) else None) or [node.grad_fn]
            self.node_fns[id(node)] = fns
            for fn in fns:
                self.fn2node[fn] = node
            if not self.is_module(node) and node.grad_fn in failed_fns:
                self.opaque[id(node)] = failed_fns[node.grad_fn]
        param_fns = {n.grad_fn for n in self.nodes if n.type == self.O.PARAMETER}
        self.input_live, self.live = _live(output, example, param_fns)
        self.slot_of, self.slot_node, self.slot_side, self.sizes = {}, [], [], []
        self.edges, self.frozen, self.touch_input = [], [], []
        self.output = output

    # ------------------------------------------------------------------ slots
    def is_module(self, node) -> bool:
        return isinstance(node.module, nn.Module) and node.module in self.names

    def is_layer_name(self, name: str) -> bool:
        return name in self.modules and is_layer(self.modules[name])

    def _two_sided(self, node) -> bool:
        """A layer whose input and output channels are separate dimensions."""
        m = node.module
        return self.is_module(node) and (isinstance(m, CUSTOM_LEAVES)
                                         or (is_layer(m) and not is_depthwise(m)))

    def out_side(self, node) -> str:
        return "out" if self._two_sided(node) else "x"

    def in_side(self, node) -> str:
        return "in" if self._two_sided(node) else "x"

    def slot(self, node, side: str) -> int:
        key = (id(node), side)
        if key not in self.slot_of:
            self.slot_of[key] = len(self.sizes)
            self.slot_node.append(node)
            self.slot_side.append(side)
            self.sizes.append(self._known_size(node, side))
        return self.slot_of[key]

    def _known_size(self, node, side: str) -> int | None:
        m = node.module
        if self.is_module(node):
            if side != "x":
                return channel_count(m, side)
            if is_depthwise(m):
                return m.out_channels
            if isinstance(m, NORMS) and cannot_cut(m) is None and channel_count(m, "out") > 1:
                return channel_count(m, "out")
            return None
        if node.type == self.O.PARAMETER and node.pruning_dim is not None and node.pruning_dim >= 0:
            return int(m.shape[node.pruning_dim])
        return None

    def member(self, s: int) -> tuple[str, str] | None:
        """``(module or parameter name, "out" | "in" | "param")`` of slot ``s``, or None for an
        operation's slot."""
        node, side = self.slot_node[s], self.slot_side[s]
        if self.is_module(node):
            return self.names[node.module], ("in" if side == "in" else "out")
        if node.type == self.O.PARAMETER and id(node.module) in self.param_names:
            return self.param_names[id(node.module)], "param"
        return None

    def _locate(self, node) -> str | None:
        """The nearest named layer upstream of ``node`` (None: only the model input)."""
        seen, frontier = set(), [node]
        while frontier and len(seen) < 64:
            n = frontier.pop(0)
            if id(n) in seen:
                continue
            seen.add(id(n))
            if self.is_module(n):
                return self.names[n.module]
            frontier.extend(n.inputs)
        return None

    def where(self, node) -> str:
        """Where a construct sits, for its reason: after its nearest named layer."""
        name = self._locate(node)
        return "after the model input" if name is None else f"after {name}"

    def freeze(self, slot: int, positions, why: str, node) -> None:
        """Keep ``positions`` (None: all) of ``slot`` at full width because of the construct
        at ``node``; when several constructs freeze a channel, the earliest one names it."""
        name = self._locate(node)
        self.frozen.append((slot, positions, why, self.rank.get(name, -1)))

    # ------------------------------------------------------------------ edges
    def _incoming(self, v):
        """``(u, f, nr, fn, pos)``: output ``nr`` of ``u``'s autograd node ``f`` is input ``pos``
        of ``v``'s node ``fn``; the model input and a layer's own weight paths are left out."""
        for fn in self.node_fns[id(v)]:
            for pos, (f, nr) in enumerate(fn.next_functions):
                if f is None:
                    continue
                if getattr(f, "variable", None) is self.example:
                    self.touch_input.append(v)
                    continue
                u = self.fn2node.get(f)
                if u is not None and f in self.live:
                    yield u, f, nr, fn, pos

    def _relation(self, u, f, nr, v, fn, pos):
        """The position relation of one edge u -> v: a relation object, None (no coupling: an
        input broadcast over channels) or a string (the construct the tracer cannot map)."""
        O = self.O
        if fn not in self.input_live:  # the parameter side, e.g. a layer-scale vector's reshape
            return _IDENTITY
        su, sv = _shape(f, nr), _shape(fn)
        if self.is_module(v) or fn in self.internal or v.type in (O.OUTPUT, O.PARAMETER, O.SPLIT):
            rel = _IDENTITY
        elif v.type == O.CONCAT:
            rel = self._concat(fn, pos, sv)
        elif v.type == O.SLICE:
            rel = self._slice(u, fn, su)
        elif v.type == O.RESHAPE:
            rel = _reshape(su, sv)
        elif v.type == O.EXPAND:
            same = su is None or sv is None or len(su) != len(sv) or len(su) < 2 or su[1] == sv[1]
            rel = _IDENTITY if same else None if su[1] == 1 else f"expand {tuple(su)} -> {tuple(sv)}"
        elif v.type == O.UNBIND:
            rel = "unbind splits the channels into separate tensors"
        else:
            rel = _elementwise(fn.name(), su, sv)
        if u.type == O.SPLIT and rel is not None and not isinstance(rel, str):
            pieces = _split_offsets(f)
            if pieces is not None:
                rel = _Piece(pieces[0][nr], pieces[1][nr], rel)
        return rel

    def _concat(self, fn, pos: int, sv):
        dim = _channel_dim(getattr(fn, "_saved_dim", None), sv)
        if dim != 1:
            return _IDENTITY  # concatenating along another dim: the inputs share their channels
        sizes = []
        for f2, nr2 in fn.next_functions:
            shape = _shape(f2, nr2) if f2 is not None else None
            sizes.append(shape[dim] if shape is not None and len(shape) > dim else None)
        unknown = [i for i, s in enumerate(sizes) if s is None]
        if len(unknown) == 1:  # e.g. a constant (zero) tensor: the output size tells its size
            sizes[unknown[0]] = sv[dim] - sum(s for s in sizes if s is not None)
        elif unknown:
            return "concatenation of tensors of unknown size"
        return _Shift(0, sizes[pos], int(sum(sizes[:pos])))

    def _slice(self, u, fn, su):
        """A channel slice keeps the positions of its fixed bounds; the positions that decide
        which channels it takes (everything before ``stop``, or all with a step) stay."""
        dim = _channel_dim(getattr(fn, "_saved_dim", None), su)
        if dim != 1:
            return _IDENTITY
        size = int(su[1])
        start, stop, step = (getattr(fn, k, None) for k in ("_saved_start", "_saved_end", "_saved_step"))
        start = 0 if start is None else int(start) + (size if int(start) < 0 else 0)
        stop = size if stop is None or int(stop) >= size else int(stop) + (size if int(stop) < 0 else 0)
        step = int(step or 1)
        if start <= 0 and stop >= size and step == 1:
            return _IDENTITY
        fixed = np.arange(0, stop if stop < size or step > 1 else start)
        slot = self.slot(u, self.out_side(u))
        whole = u.type == self.O.SPLIT
        self.freeze(slot, None if whole else fixed,
                    f"slice [{start}:{stop if stop < size else ''}] with fixed bounds {self.where(u)}", u)
        return _Slice(start, stop, step)

    def build(self, deadline: Deadline) -> None:
        """Slots and edges of every node; a node with an edge the tracer cannot map is frozen
        with its inputs (its positions have no known counterpart, so nothing is guessed)."""
        for node in self.nodes:
            if self.is_module(node) or node.type == self.O.PARAMETER:
                self.slot(node, self.out_side(node))
                self.slot(node, self.in_side(node))
        for v in self.nodes:
            incoming = [(u, self._relation(u, f, nr, v, fn, pos))
                        for u, f, nr, fn, pos in self._incoming(v)]
            reason = self.opaque.get(id(v)) or next(
                (r for _, r in incoming if isinstance(r, str)), None)
            if reason is not None:
                why = f"{reason} {self.where(v)}" if id(v) not in self.opaque else reason
                self.freeze(self.slot(v, self.out_side(v)), None, why, v)
                for u, _ in incoming:
                    self.freeze(self.slot(u, self.out_side(u)), None, why, v)
                continue
            target = self.slot(v, self.in_side(v))
            for u, rel in incoming:
                if rel is not None:
                    self.edges.append((self.slot(u, self.out_side(u)), target, rel))
            deadline.check()
        self._fixed_constructs()

    def _fixed_constructs(self) -> None:
        """Freeze the model output, operations on the model input, and channel splits (their
        piece sizes are fixed in the model's code, so a narrower input would split wrongly)."""
        out = self.fn2node.get(self.output.grad_fn)
        if out is not None:
            self.freeze(self.slot(out, self.out_side(out)), None, _OUTPUT, out)
        for v in self.touch_input:
            if not self._two_sided(v):
                self.freeze(self.slot(v, "x"), None, f"combined with the model input "
                                                     f"{self.where(v)}", v)
        for v in self.nodes:
            if v.type == self.O.SPLIT and (pieces := _split_offsets(v.grad_fn)) is not None:
                self.freeze(self.slot(v, "x"), None, f"split into fixed sizes {pieces[1]} "
                                                     f"{self.where(v)}", v)

    def _block_pairs(self) -> list:
        """Channels that can only go in blocks: the groups of a grouped conv (a block of input
        channels with its block of output channels) and the groups of a GroupNorm."""
        pairs = []
        for node in self.nodes:
            m = node.module
            if not self.is_module(node):
                continue
            if isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m):
                i_slot, o_slot = self.slot(node, "in"), self.slot(node, "out")
                per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
                a, b = np.arange(m.in_channels), np.arange(m.out_channels)
                pairs.append((i_slot, a, o_slot, (a // per_in) * per_out))
                pairs.append((o_slot, b, o_slot, (b // per_out) * per_out))
            elif isinstance(m, nn.GroupNorm) and 1 < m.num_groups < m.num_channels:
                per = m.num_channels // m.num_groups
                a = np.arange(m.num_channels)
                pairs.append((self.slot(node, "x"), a, self.slot(node, "x"), (a // per) * per))
        return pairs

    # ------------------------------------------------------------------ positions
    def propagate(self, deadline: Deadline):
        """Every slot's positions (seeded by the layers' channel counts and carried along the
        edges, each position once) and the pairs of positions the edges relate."""
        seen = [np.zeros(0, dtype=np.int64) for _ in self.sizes]
        adjacent: list[list] = [[] for _ in self.sizes]
        for e, (a, b, _) in enumerate(self.edges):
            adjacent[a].append((e, True))
            adjacent[b].append((e, False))
        todo = [(s, np.arange(n, dtype=np.int64)) for s, n in enumerate(self.sizes) if n]
        pairs = []
        while todo:
            s, arr = todo.pop()
            new = np.setdiff1d(arr, seen[s])
            if not len(new):
                continue
            seen[s] = np.union1d(seen[s], new)
            for e, forward in adjacent[s]:
                a, b, rel = self.edges[e]
                pa, pb = rel.from_a(new) if forward else rel.from_b(new)
                if len(pa):
                    pairs.append((a, pa, b, pb))
                    todo.append((b, pb) if forward else (a, pa))
            deadline.check()
        for s, n in enumerate(self.sizes):
            if n and len(seen[s]) and seen[s][-1] >= n:
                node = self.slot_node[s]
                self.freeze(s, None, f"channel count mismatch {self.where(node)}", node)
        return seen, pairs + self._block_pairs()

    # ------------------------------------------------------------------ components
    def components(self, seen, pairs):
        """Connected components of all positions: ``(base, labels)`` where position ``p`` of
        slot ``s`` has the global id ``base[s] + p`` and the component ``labels[id]``."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        counts = [max(n or 0, int(seen[s][-1]) + 1 if len(seen[s]) else 0)
                  for s, n in enumerate(self.sizes)]
        base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        total = int(base[-1])
        if pairs:
            ga = np.concatenate([base[a] + pa for a, pa, _, _ in pairs])
            gb = np.concatenate([base[b] + pb for _, _, b, pb in pairs])
        else:
            ga = gb = np.zeros(0, dtype=np.int64)
        graph = coo_matrix((np.ones(len(ga), dtype=np.int8), (ga, gb)), shape=(total, total))
        return base, connected_components(graph, directed=False)[1]

    def reasons(self, seen, base, labels) -> tuple[np.ndarray, list[str]]:
        """Per component, the index of the first reason that froze it (-1: not frozen); the
        model output overrides, so the classifier's components stay silent."""
        texts: list[str] = []
        chosen = np.full(int(labels.max()) + 1 if len(labels) else 0, -1, dtype=np.int64)
        for s, positions, why, _ in sorted(self.frozen, key=lambda f: f[3]):
            positions = seen[s] if positions is None else np.intersect1d(positions, seen[s])
            if not len(positions):
                continue
            if why not in texts:
                texts.append(why)
            ls = labels[base[s] + positions]
            idx = texts.index(why)
            chosen[ls] = idx if why == _OUTPUT else np.where(chosen[ls] < 0, idx, chosen[ls])
        return chosen, texts

    def groups(self, seen, base, labels, chosen, texts, order) -> list[tuple[Group, str | None]]:
        """Components that touch the same layers the same way form one group (so every member
        has the same number of channels per root channel, and the cost stays affine in the
        width); each group with the reason it is frozen, or None."""
        slots = [s for s in range(len(self.sizes)) if self.member(s) is not None and len(seen[s])]
        if not slots:
            return []
        L = np.concatenate([labels[base[s] + seen[s]] for s in slots])
        S = np.concatenate([np.full(len(seen[s]), s, dtype=np.int64) for s in slots])
        P = np.concatenate([seen[s] for s in slots])
        n_slots = len(self.sizes)
        keys, counts = np.unique(L * n_slots + S, return_counts=True)
        signature: dict[int, list] = {}
        for key, count in zip(keys.tolist(), counts.tolist()):
            signature.setdefault(key // n_slots, []).append((key % n_slots, count))
        buckets: dict[tuple, list[int]] = {}
        for label, items in signature.items():
            buckets.setdefault((tuple(items), int(chosen[label])), []).append(label)
        group_of = np.full(len(chosen), -1, dtype=np.int64)
        found = []
        for (items, why), members in buckets.items():
            producers = [s for s, _ in items if self._produces(s)]
            if not producers or (why >= 0 and texts[why] == _OUTPUT):
                continue
            producer = min(producers, key=lambda s: order.get(self.member(s)[0], 0))
            group_of[members] = len(found)
            found.append((producer, [s for s, _ in items], texts[why] if why >= 0 else None))
        return self._build_groups(found, group_of, L, S, P, order)

    def _produces(self, s: int) -> bool:
        """Slot ``s`` is the output of a conv, linear or custom leaf layer."""
        node = self.slot_node[s]
        return (self.is_module(node) and self.slot_side[s] != "in"
                and isinstance(node.module, (nn.Conv2d, nn.Linear) + CUSTOM_LEAVES))

    def _build_groups(self, found, group_of, L, S, P, order):
        """:class:`Group` objects: root channels ranked by their position in the producer."""
        g = group_of[L]
        keep = g >= 0
        L, S, P, g = L[keep], S[keep], P[keep], g[keep]
        producer = np.array([f[0] for f in found], dtype=np.int64)
        first = np.full(len(group_of), np.iinfo(np.int64).max, dtype=np.int64)
        at_producer = S == producer[g]
        np.minimum.at(first, L[at_producer], P[at_producer])
        labels = np.nonzero(group_of >= 0)[0]
        ranked = labels[np.lexsort((first[labels], group_of[labels]))]
        rank = np.zeros(len(group_of), dtype=np.int64)
        starts = np.searchsorted(group_of[ranked], np.arange(len(found)))
        rank[ranked] = np.arange(len(ranked)) - starts[group_of[ranked]]
        R = rank[L]
        idx = np.lexsort((P, S, g))
        g, S, P, R = g[idx], S[idx], P[idx], R[idx]
        cuts = np.nonzero((np.diff(g) != 0) | (np.diff(S) != 0))[0] + 1
        members: list[list[Member]] = [[] for _ in found]
        for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(g)]])):
            name, dim = self.member(int(S[lo]))
            members[int(g[lo])].append(Member(name, dim, P[lo:hi].copy(), R[lo:hi].copy()))
        result = []
        for (_, _, why), group_members, width in zip(found, members, np.bincount(group_of[labels])):
            group_members.sort(key=lambda m: (_position(order, m.module), m.dim))
            result.append((_make_group(group_members, int(width), self), why))
        return result


def _position(order: dict, name: str) -> int:
    """Module order of a member (a free-standing parameter sorts with its module)."""
    return order.get(name, order.get(name.rsplit(".", 1)[0], 0))


def _make_group(members: list[Member], width: int, graph: _ChannelGraph) -> Group:
    """A group named after its conv/linear producers (its first member if it has none)."""
    producers = [m.module for m in members if m.dim == "out" and graph.is_layer_name(m.module)]
    if not producers:
        producers = [members[0].module]
    name = ",".join(producers) if len(producers) <= 2 else \
        f"{producers[0]}..{producers[-1]} ({len(producers)} layers)"
    return Group(name=name, width=width, members=tuple(members))


# ---------------------------------------------------------------------------------- trace
def discover(model: nn.Module, example: torch.Tensor,
             deadline: Deadline | None = None) -> list[tuple[Group, str | None]]:
    """Every channel group of ``model`` traced on ``example`` (batch of 1), each with the
    reason it must stay at full width (None if the tracer can cut it)."""
    deadline = deadline or Deadline(None)
    traced, dg, fns, output, example, failed = _dependency_graph(model, example, deadline)
    graph = _ChannelGraph(traced, dg, fns, output, example, failed)
    graph.build(deadline)
    seen, pairs = graph.propagate(deadline)
    base, labels = graph.components(seen, pairs)
    chosen, texts = graph.reasons(seen, base, labels)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return graph.groups(seen, base, labels, chosen, texts, order)


def _searchable(found, model: nn.Module, ignore, min_width: int):
    """Split traced groups into searchable ones, ``skipped`` (group, reason) for the rest, and
    ``frozen``: the skipped ones the tracer or the surgery cannot cut (not ``ignore``d by hand,
    not a single channel). Repeated entries are listed once; searchable groups that share a
    name (parts of one layer's channels that go different ways) are told apart by ``#k``."""
    modules = dict(model.named_modules())
    groups, skipped, frozen = [], [], []
    for group, why in found:
        if why is None:
            why = next((f"{cannot_cut(modules[m.module])} ({m.module})" for m in group.members
                        if m.dim != "param" and cannot_cut(modules[m.module])), None)
        if why is not None and (group.name, why) not in frozen:
            frozen.append((group.name, why))
        for pattern in ignore:
            if why is None and any(fnmatch.fnmatchcase(m, pattern) for m in group.producers):
                why = f"ignored by '{pattern}'"
        if why is None and group.width < min_width:
            why = "a single channel"
        if why is None:
            groups.append(group)
        elif (group.name, why) not in skipped:
            skipped.append((group.name, why))
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.name] = counts.get(g.name, 0) + 1
    seen: dict[str, int] = {}
    for i, g in enumerate(groups):
        if counts[g.name] > 1:
            seen[g.name] = seen.get(g.name, 0) + 1
            groups[i] = replace(g, name=f"{g.name} #{seen[g.name]}")
    return groups, skipped, frozen


def build_space(model: nn.Module, groups: list[Group], example: torch.Tensor, *, shapes=None,
                **fields) -> WidthSpace:
    """A :class:`WidthSpace` over ``groups`` (sorted by their first producer) with its cost
    models and grids; ``fields`` are the other :class:`WidthSpace` fields."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    groups = sorted(groups, key=lambda g: min(_position(order, m) for m in g.producers or g.modules))
    space = WidthSpace(groups=groups, **fields)
    space._macs, space._params = cost_models(groups, model, example, shapes=shapes)
    space._grids = [_grid(g.width, space.min_ratio,
                          group_round_to(space.round_to, g.width, _unit(g))) for g in groups]
    return space


def example_input(model: nn.Module, input_shape) -> torch.Tensor:
    """The seeded tracing input: one sample of ``input_shape`` on the model's device."""
    x = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    param = next(model.parameters(), None)
    return x if param is None else x.to(param.device)


def subspace(model: nn.Module, space: WidthSpace, drop: dict[int, str]) -> WidthSpace:
    """``space`` without the groups ``drop`` names (index -> reason): they are frozen at full
    width, listed in ``skipped`` and ``frozen``, and the cost models are rebuilt."""
    gone = [(space.groups[i].name, why) for i, why in sorted(drop.items())]
    keep = [g for i, g in enumerate(space.groups) if i not in drop]
    return build_space(model, keep, example_input(model, space.input_shape),
                       input_shape=space.input_shape, round_to=space.round_to,
                       min_ratio=space.min_ratio, ignore=space.ignore,
                       skipped=space.skipped + gone, frozen=space.frozen + gone,
                       model_name=space.model_name, model_kwargs=dict(space.model_kwargs))


def trace(model: nn.Module, input_shape, *, ignore=(), round_to: int = 1, min_ratio: float = 0.1,
          model_name: str | None = None, model_kwargs: dict | None = None,
          min_width: int = 2, check: bool = True, timeout_s: float | None = 120.0,
          strict: bool = False) -> WidthSpace:
    """Trace ``model`` on one input of ``input_shape`` (C, H, W) and discover its groups.

    ``ignore`` holds module names or glob patterns; a group whose output channels are
    produced by a matching layer is not searchable (layers that only read a group's
    channels do not freeze it). The classifier output and the input channels are never searchable,
    nor are groups narrower than ``min_width`` (a single channel cannot be cut; ``min_width=1``
    keeps them, e.g. to map the groups of an already pruned copy). Constructs the surgery cannot
    follow freeze their groups (``space.frozen``, one warning line per kind); with ``check`` the
    space is verified on pruned copies (:func:`structsearch.selfcheck.self_check`). Everything
    stops with :class:`TracingTimeout` after ``timeout_s`` seconds (None: no limit). ``strict``
    (the pipeline's setting) requires the output to be ``(batch, classes)`` logits and at least
    one searchable group (:class:`~structsearch.space.NoGroupsError` otherwise).
    """
    group_round_to(round_to, 1)  # an integer >= 1 or "auto", or a clear error
    if not 0 < min_ratio <= 1:
        raise ValueError("min_ratio must be in (0, 1]")
    input_shape = check_input_shape(input_shape)
    deadline = Deadline(timeout_s, f"tracing {model_name or type(model).__name__}")
    example = example_input(model, input_shape)
    with time_limit(deadline):
        shapes, _ = _checked_forward(model, example, logits=strict)
        groups, skipped, frozen = _searchable(discover(model, example, deadline), model, ignore,
                                              min_width)
        space = build_space(model, groups, example, shapes=shapes, input_shape=input_shape,
                            round_to=round_to, min_ratio=min_ratio, ignore=tuple(ignore),
                            skipped=skipped, frozen=frozen, model_name=model_name,
                            model_kwargs=dict(model_kwargs or {}))
        if check and space.groups:
            from .selfcheck import self_check
            space, _ = self_check(model, space, deadline=deadline)
        space = dataclasses.replace(space, checked=bool(check))
    warn_frozen(space.frozen, model_name or type(model).__name__)
    return space.require_groups(model_name or "the model") if strict else space


def reason_kind(why: str) -> str:
    """A frozen group's reason without its sizes and place (``slice [0:16] with fixed bounds
    after features.1`` -> ``slice with fixed bounds``), to report reasons by kind."""
    kind = re.sub(r"\[[^\]]*\]|\([^)]*\)|\d+", "", why.split(" after ")[0])
    return " ".join(kind.split())


def warn_frozen(frozen: list[tuple[str, str]], what: str) -> None:
    """One :class:`TracingWarning` line per kind of reason, naming the frozen groups."""
    kinds: dict[str, list[tuple[str, str]]] = {}
    for name, why in frozen:
        kinds.setdefault(reason_kind(why), []).append((name, why))
    for items in kinds.values():
        names = ", ".join(n for n, _ in items[:3]) + (f" +{len(items) - 3} more" if len(items) > 3 else "")
        warnings.warn(f"{what}: {len(items)} channel group(s) kept at full width ({items[0][1]}"
                      f"{', ...' if len(items) > 1 else ''}): {names}; listed in space.frozen "
                      f"(space.ignore freezes groups by hand)", TracingWarning, stacklevel=3)


# ---------------------------------------------------------------------------------- costs
class _ChannelCounts:
    """Every module dimension's channel count as an :class:`Affine` of the width vector: the
    full count minus the channels the groups own, plus each group's width times its
    multiplicity."""

    def __init__(self, groups: list[Group], model: nn.Module):
        modules = dict(model.named_modules())
        self.num_groups = g = len(groups)
        self.tables: dict[str, dict[str, list]] = {"out": {}, "in": {}, "param": {}}
        for gi, group in enumerate(groups):
            for m in group.members:
                if m.dim == "param":
                    p = model.get_parameter(m.module)
                    full = p.shape[param_axis(p)]
                else:
                    full = channel_count(modules[m.module], m.dim)
                entry = self.tables[m.dim].setdefault(m.module, [float(full), np.zeros(g)])
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
    """The MACs (when the layer ran) and parameter terms of one conv or linear layer, with any
    extra per-output-channel parameter of a conv subclass (e.g. a weight-standardisation gain)."""
    if isinstance(module, nn.Conv2d):
        out = counts(name, "out", module.out_channels)
        if is_depthwise(module):
            inp = counts.one
        elif module.groups > 1:  # whole conv groups go, so each group keeps its input width
            inp = counts.const(module.in_channels / module.groups)
        else:
            inp = counts(name, "in", module.in_channels)
        k = module.kernel_size[0] * module.kernel_size[1]
    else:
        out = counts(name, "out", module.out_features)
        inp = counts(name, "in", module.in_features)
        k = 1
    if shape is not None:
        macs.add(k * shape.positions, out, inp, name)
    params.add(k, out, inp, name)
    full_out = channel_count(module, "out")
    for key, p in module.named_parameters(recurse=False):
        if key == "weight":
            continue
        if p.ndim and p.shape[0] == full_out:
            params.add(p.numel() // full_out, out, counts.one, name)
        else:
            params.add(p.numel(), counts.one, counts.one, name)


def _add_other(params: CostModel, counts: _ChannelCounts, name: str, module: nn.Module) -> None:
    """Parameter terms of a norm (per-channel tensors follow its width) or of any other module
    (a free-standing parameter that is a group member follows its group, the rest is fixed)."""
    own = dict(module.named_parameters(recurse=False))
    if isinstance(module, NORMS) and cannot_cut(module) is None:
        channels = channel_count(module, "out")
        per_channel = counts(name, "out", channels)
        for p in own.values():
            if p.numel() == channels:
                params.add(1, per_channel, counts.one, name)
            else:
                params.add(p.numel(), counts.one, counts.one, name)
        return
    for key, p in own.items():
        full = f"{name}.{key}" if name else key
        if full in counts.tables["param"]:
            size = p.shape[param_axis(p)]
            params.add(p.numel() // size, counts(full, "param", size), counts.one, name)
        elif p.numel():
            params.add(p.numel(), counts.one, counts.one, name)


def cost_models(groups: list[Group], model: nn.Module, example: torch.Tensor, *,
                shapes: dict[str, LayerShape] | None = None) -> tuple[CostModel, CostModel]:
    """Closed-form MACs and parameter cost models of ``model`` over ``groups`` (one forward
    pass on ``example`` records the layer shapes, unless ``shapes`` are given)."""
    shapes = record_shapes(model, example) if shapes is None else shapes
    counts = _ChannelCounts(groups, model)
    macs, params = CostModel(len(groups)), CostModel(len(groups))
    for name, module in model.named_modules():
        if is_layer(module):
            _add_layer(macs, params, counts, name, module, shapes.get(name))
        else:
            _add_other(params, counts, name, module)
    return macs, params
