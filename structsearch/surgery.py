"""Widths + kept channel indices -> a physically smaller model; least-squares reconstruction
of the layers that lost input channels; portable save and load.

Surgery slices parameters and buffers by the indices each :class:`~structsearch.space.Member`
recorded, so it works for any model the space could trace. A saved model is ``arch.json`` (how to
rebuild it from the registry) plus a plain ``state_dict`` loaded with ``weights_only=True``.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .space import WidthError, WidthSpace
from .tracing import NORMS, channel_count, is_depthwise, param_axis

FORMAT_VERSION = 1
ARCH_FILE = "arch.json"
WEIGHTS_FILE = "weights.pt"


class CheckpointError(ValueError):
    """A checkpoint or arch file that cannot be loaded safely (one line: what and the fix)."""


def _chosen(keep, index: int, group):
    """The channels ``keep`` names for group ``index`` (by index or name), or None."""
    if keep is None:
        return None
    return keep.get(index, keep.get(group.name)) if isinstance(keep, dict) else keep[index]


def keep_sets(space: WidthSpace, widths, keep) -> list[np.ndarray]:
    """Per group, the sorted root channels it keeps at ``widths``: those ``keep`` names (a
    list, or a dict by group index or name), else the first ``w``. Raises ``ValueError`` when a
    group's kept set does not hold exactly ``w`` distinct channels of the group."""
    widths = space.validate(widths)
    result = []
    for i, (group, w) in enumerate(zip(space.groups, widths)):
        chosen = _chosen(keep, i, group)
        if chosen is None:
            chosen = np.arange(w)
        chosen = np.unique(np.asarray(chosen, dtype=np.int64))
        if len(chosen) != w or chosen.min() < 0 or chosen.max() >= group.width:
            raise ValueError(f"keep for group {i} ({group.name}) must hold {w} distinct channel "
                             f"indices in [0, {group.width}); got {len(chosen)}")
        result.append(chosen)
    return result


def removed_channels(space: WidthSpace, kept_sets) -> dict[tuple[str, str], np.ndarray]:
    """``(module, "out" | "in")`` -> that module dimension's channel indices that the kept root
    channels ``kept_sets`` (one array per group, see :func:`keep_sets`) drop."""
    removed: dict[tuple[str, str], list[np.ndarray]] = {}
    for group, kept in zip(space.groups, kept_sets):
        if len(kept) == group.width:
            continue
        for m in group.members:
            gone = m.idxs[~np.isin(m.root_idxs, kept)]
            removed.setdefault((m.module, m.dim), []).append(gone)
    return {k: np.concatenate(v) for k, v in removed.items()}


def keep_index(n: int, gone: np.ndarray | None) -> torch.Tensor | None:
    """The indices of ``range(n)`` not in ``gone`` as a tensor, or None when nothing is gone."""
    if gone is None or len(gone) == 0:
        return None
    mask = np.ones(n, dtype=bool)
    mask[gone] = False
    return torch.from_numpy(np.nonzero(mask)[0])


def _slice_param(param: nn.Parameter, dim: int, idx: torch.Tensor) -> nn.Parameter:
    # index_select already writes new storage: no clone, so each kept weight is copied once.
    return nn.Parameter(param.data.index_select(dim, idx.to(param.device)),
                        requires_grad=param.requires_grad)


def _slice_rest(module: nn.Module, full: int, keep: torch.Tensor, done=("weight", "bias")) -> None:
    """Slice every other parameter and buffer of ``module`` whose first dimension is one per
    channel (``full`` of them), e.g. a weight-standardised conv's gain or a norm's statistics."""
    for key, p in list(module._parameters.items()):
        if p is not None and key not in done and p.ndim and p.shape[0] == full:
            module._parameters[key] = _slice_param(p, 0, keep)
    for key, b in list(module._buffers.items()):
        if b is not None and b.ndim and b.shape[0] == full:
            module._buffers[key] = b.index_select(0, keep.to(b.device))


@torch.no_grad()
def _cut_conv(module: nn.Conv2d, out_keep, in_keep) -> None:
    """Cut a conv: a depthwise conv keeps one filter per kept channel; a grouped conv loses
    whole groups (the space couples each group's input block with its output block), so its
    per-group input width stays and only the group count changes."""
    full_out = module.out_channels
    if is_depthwise(module):
        keep = out_keep if out_keep is not None else in_keep
        module.weight = _slice_param(module.weight, 0, keep)
        _slice_rest(module, full_out, keep, done=("weight",))
        module.in_channels = module.out_channels = module.groups = len(keep)
        return
    if out_keep is not None:
        module.weight = _slice_param(module.weight, 0, out_keep)
        _slice_rest(module, full_out, out_keep, done=("weight",))
        module.out_channels = len(out_keep)
    if in_keep is not None:
        if module.groups > 1:
            per_group = module.in_channels // module.groups
            module.groups = len(in_keep) // per_group
        else:
            module.weight = _slice_param(module.weight, 1, in_keep)
        module.in_channels = len(in_keep)


@torch.no_grad()
def _cut_norm(module: nn.Module, keep: torch.Tensor) -> None:
    """Cut a per-channel layer: BN / InstanceNorm (affine terms and running statistics),
    GroupNorm (whole groups go, so its group size stays), LayerNorm over channels, PReLU."""
    full = channel_count(module, "out")
    if isinstance(module, nn.PReLU) and module.num_parameters == 1:
        return
    _slice_rest(module, full, keep, done=())
    if isinstance(module, nn.GroupNorm):
        if module.num_groups > 1:  # one group normalises over all channels, whatever their count
            module.num_groups = len(keep) // (full // module.num_groups)
        module.num_channels = len(keep)
    elif isinstance(module, nn.LayerNorm):
        module.normalized_shape = (len(keep),)
    elif isinstance(module, nn.PReLU):
        module.num_parameters = len(keep)
    else:
        module.num_features = len(keep)


@torch.no_grad()
def _cut(module: nn.Module, out_keep, in_keep) -> None:
    if isinstance(module, nn.Conv2d):
        _cut_conv(module, out_keep, in_keep)
    elif isinstance(module, nn.Linear):
        if out_keep is not None:
            module.weight = _slice_param(module.weight, 0, out_keep)
            _slice_rest(module, module.out_features, out_keep, done=("weight",))
            module.out_features = len(out_keep)
        if in_keep is not None:
            module.weight = _slice_param(module.weight, 1, in_keep)
            module.in_features = len(in_keep)
    elif isinstance(module, NORMS):
        _cut_norm(module, out_keep if out_keep is not None else in_keep)
    elif hasattr(module, "prune_channels"):
        module.prune_channels(out_keep, in_keep)
    else:  # the space refuses groups through other layers, so this is a programming error
        raise TypeError(f"cannot cut {type(module).__name__}")


@torch.no_grad()
def _cut_param(model: nn.Module, name: str, gone: np.ndarray) -> None:
    """Cut a free-standing parameter (e.g. a layer-scale vector) along its channel axis."""
    owner, _, key = name.rpartition(".")
    module = model.get_submodule(owner)
    p = module._parameters[key]
    axis = param_axis(p)
    keep = keep_index(p.shape[axis], gone)
    if keep is not None:
        module._parameters[key] = _slice_param(p, axis, keep)


@contextlib.contextmanager
def _one_intra_op_thread():
    # Slicing weights is a memory-bound copy. On CPU, index_select splits even small copies over
    # the intra-op threads, and on a busy machine their synchronisation costs far more than the
    # copy (ResNet-50 on 2 shared cores: 0.26 s with 2 threads, 0.03 s with 1).
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def prune(model: nn.Module, space: WidthSpace, widths, keep=None) -> nn.Module:
    """A new, physically smaller copy of ``model`` with ``widths`` channels per group.

    ``keep`` maps a group (index or name) to the root channel indices it keeps (e.g. the top
    channels of a criterion); by default a group keeps its first ``w`` channels. The input model
    is not modified.
    """
    removed = removed_channels(space, keep_sets(space, widths, keep))
    # Copy the module tree but not its tensors: cut tensors are sliced into new storage and
    # only the untouched ones are cloned afterwards, so every weight is copied once.
    originals = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    new = copy.deepcopy(model, memo=dict(originals))
    modules = dict(new.named_modules())
    with _one_intra_op_thread(), torch.no_grad():
        for name in sorted({name for name, dim in removed if dim == "param"}):
            _cut_param(new, name, removed[(name, "param")])
        for name in sorted({name for name, dim in removed if dim != "param"}):
            module = modules[name]
            out_keep = keep_index(channel_count(module, "out"), removed.get((name, "out")))
            in_keep = keep_index(channel_count(module, "in"), removed.get((name, "in")))
            _cut(module, out_keep, in_keep)
        for module in new.modules():
            for key, p in module._parameters.items():
                if p is not None and id(p) in originals and originals[id(p)] is p:
                    module._parameters[key] = nn.Parameter(p.data.clone(), requires_grad=p.requires_grad)
            for key, b in module._buffers.items():
                if b is not None and id(b) in originals and originals[id(b)] is b:
                    module._buffers[key] = b.clone()
    return new


# ---------------------------------------------------------------------------------- LS reconstruction
class _Stop(Exception):
    """Raised by a hook once it has what it needs, so the rest of the forward pass is skipped."""


@torch.no_grad()
def _capture(model: nn.Module, module: nn.Module, x: torch.Tensor, *, inputs: bool) -> torch.Tensor:
    """``module``'s input (``inputs=True``) or output for model input ``x``; the forward pass
    stops at ``module``."""
    seen = []

    def pre(mod, args):
        seen.append(args[0].detach().float())
        raise _Stop

    def post(mod, args, output):
        seen.append(output.detach().float())
        raise _Stop

    handle = module.register_forward_pre_hook(pre) if inputs else module.register_forward_hook(post)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0]


def ls_statistics(original_model: nn.Module, pruned_model: nn.Module, old: nn.Module,
                   new: nn.Module, out_keep: torch.Tensor, inputs, points_per_image, rng):
    """Normal-equation statistics of refitting consumer ``new`` (the pruned copy of ``old``):
    ``(P^T P, P^T T, ||T||^2)`` with regressors P the pruned model's input patches and targets T
    the original's output (bias excluded, pruned output channels dropped) at sampled positions."""
    from .criteria.lasso import input_patches, sample_positions

    device = next(pruned_model.parameters()).device
    dim = new.weight[0].numel()
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    cross = torch.zeros(dim, new.weight.shape[0], dtype=torch.float64, device=device)
    energy = 0.0
    for x in inputs:
        x = x.to(device)
        y = _capture(original_model, old, x, inputs=False)
        xin = _capture(pruned_model, new, x, inputs=True)
        where = sample_positions(new, xin, points_per_image, rng)
        p = input_patches(new, xin, where).reshape(len(where[0]), -1).double()
        if isinstance(old, nn.Linear):
            t = y.reshape(-1, y.shape[-1])[where[0]]
        else:
            t = y[where[0], :, where[1], where[2]]
        t = t[:, out_keep.to(t.device)].double()
        if old.bias is not None:
            t = t - old.bias.detach().double()[out_keep.to(t.device)]
        gram += p.T @ p
        cross += p.T @ t
        energy += float((t * t).sum())
    return gram, cross, energy


@torch.no_grad()
def _refit(new: nn.Module, gram: torch.Tensor, cross: torch.Tensor, energy: float,
           ridge: float) -> tuple[float, float]:
    """Replace ``new``'s weight by the ridge least-squares fit when that lowers the error;
    returns the relative error before and after."""
    weight = new.weight.detach().double().reshape(new.weight.shape[0], -1)

    def error(w):  # ||T - P W^T||^2 from the accumulated statistics
        return energy - 2 * float((w.T * cross).sum()) + float(((gram @ w.T) * w.T).sum())

    before = error(weight)
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    fitted = torch.linalg.solve(gram + lam * eye, cross).T
    after = error(fitted)
    if after < before:
        new.weight.data.copy_(fitted.reshape(new.weight.shape).to(new.weight.dtype))
    else:
        after = before
    scale = max(energy, 1e-30)
    return before / scale, after / scale


def _refit_targets(space: WidthSpace, keep, originals: dict[str, nn.Module]):
    """The consumers whose input channels ``keep`` prunes, in model order, and the removed
    channels of every module dimension."""
    from .criteria.lasso import is_consumer

    widths = []
    for i, group in enumerate(space.groups):
        chosen = _chosen(keep, i, group)
        widths.append(group.width if chosen is None else len(np.unique(chosen)))
    removed = removed_channels(space, keep_sets(space, widths, keep))
    order = list(originals)
    targets = sorted({name for name, dim in removed
                      if dim == "in" and is_consumer(originals[name])}, key=order.index)
    return targets, removed


def reconstruct(pruned_model: nn.Module, original_model: nn.Module, space: WidthSpace, keep,
                batches, *, num_batches: int = 5, points_per_image: int | None = 10,
                ridge: float = 1e-6, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Refit, by least squares, every consumer whose input channels were pruned, in model order.

    For consumer B the target is the original model's B output (bias excluded, pruned output
    channels dropped) and the regressors are the *pruned* model's B inputs, so each refit also
    absorbs the error of the layers before it (He et al.'s sequential reconstruction). The
    normal equations get a ridge of ``ridge * mean diagonal`` for stability; a refit that would
    not lower the error is skipped. ``pruned_model`` is changed in place; returns
    ``{module: (relative error before, after)}`` with error ``||Y - Y_hat||^2 / ||Y||^2`` on the
    sampled positions.
    """
    from .criteria.base import model_inputs

    originals = dict(original_model.named_modules())
    pruned = dict(pruned_model.named_modules())
    targets, removed = _refit_targets(space, keep, originals)
    inputs = model_inputs(batches, num_batches)
    rng = np.random.default_rng(seed)
    modes = original_model.training, pruned_model.training
    original_model.eval()
    pruned_model.eval()
    errors = {}
    try:
        for name in targets:
            old, new = originals[name], pruned[name]
            full_out = old.weight.shape[0]
            out_keep = keep_index(full_out, removed.get((name, "out")))
            out_keep = torch.arange(full_out) if out_keep is None else out_keep
            stats = ls_statistics(original_model, pruned_model, old, new, out_keep, inputs,
                                   points_per_image, rng)
            errors[name] = _refit(new, *stats, ridge)
    finally:
        original_model.train(modes[0])
        pruned_model.train(modes[1])
    return errors


def output_error(reference: nn.Module, pruned: nn.Module, batches) -> float:
    """The relative output error ``||f(x) - f_pruned(x)||^2 / ||f(x)||^2`` of ``pruned``
    against ``reference`` over ``batches`` (an iterable of ``(x, y)``), both in eval mode:
    how much a pruning (and any reconstruction) changed what the network computes."""
    modes = reference.training, pruned.training
    reference.eval()
    pruned.eval()
    num = den = 0.0
    try:
        with torch.no_grad():
            for x, _ in batches:
                y = reference(x)
                num += float(((y - pruned(x)) ** 2).sum())
                den += float((y ** 2).sum())
    finally:
        reference.train(modes[0])
        pruned.train(modes[1])
    return num / den


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def arch_dict(space: WidthSpace, widths) -> dict:
    widths = [int(w) for w in space.validate(widths)]
    if space.model_name is None:
        raise ValueError("the space was not built from a registry model (model_name is unset); "
                         "build it with WidthSpace.from_model(..., model_name=...)")
    return {
        "model": space.model_name,
        "model_kwargs": space.model_kwargs,
        "input_shape": list(space.input_shape),
        "widths": widths,
        "groups": space.names,
        "space": {"round_to": space.round_to, "min_ratio": space.min_ratio, "ignore": list(space.ignore),
                  "check": bool(space.checked)},
        "macs": int(space.macs(widths)),
        "params": int(space.params(widths)),
        "format_version": FORMAT_VERSION,
    }


def save_pruned(model: nn.Module, space: WidthSpace, widths, path, *, extra: dict | None = None) -> Path:
    """Write ``path/arch.json`` and ``path/weights.pt`` (a plain state_dict) for a pruned model."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arch = arch_dict(space, widths)
    if extra:
        arch.update(extra)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = path / (WEIGHTS_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / WEIGHTS_FILE)
    _atomic_write_text(path / ARCH_FILE, json.dumps(arch, indent=2))
    return path


def load_state_dict_file(path) -> dict:
    """``torch.load(path, weights_only=True)`` with one clear error for unsafe or broken files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure gets the same clear message
        kind = "contains pickled code or objects, refused by weights_only loading" \
            if "weights_only" in str(exc) or "Unsupported" in str(exc) else "is truncated or corrupt"
        raise CheckpointError(f"checkpoint {path} {kind}; save a plain state_dict "
                              f"(torch.save(model.state_dict(), path))") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a state_dict of tensors")
    return state


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load a state_dict file into ``model`` with clear errors for missing keys or wrong shapes."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        raise CheckpointError(f"checkpoint {path} does not match the model: "
                              f"{len(missing)} missing and {len(unexpected)} unexpected keys "
                              f"(first: {key}); check model.name and its kwargs")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"checkpoint {path} does not match the model: {k} has shape "
                                  f"{tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    model.load_state_dict(state)
    return model


def read_arch(path) -> dict:
    path = Path(path)
    file = path / ARCH_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{file} not found; point at a directory written by save_pruned")
    try:
        arch = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    required = {"model": str, "model_kwargs": dict, "input_shape": list, "widths": list,
                "groups": list, "format_version": int}
    for key, tp in required.items():
        if not isinstance(arch.get(key), tp):
            raise CheckpointError(f"{file}: key '{key}' is missing or not a {tp.__name__}")
    if arch["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{file}: format_version {arch['format_version']} is not supported "
                              f"(this structsearch reads {FORMAT_VERSION})")
    return arch


def build_pruned(arch: dict, model=None) -> tuple[nn.Module, WidthSpace]:
    """Rebuild the (untrained) pruned architecture described by an ``arch.json`` dict; ``model``
    (the unpruned module, or a zero-argument factory) replaces building ``arch["model"]`` by
    name, e.g. for a model that was passed to the search as a Python object."""
    from . import models

    try:
        if model is not None:
            full = copy.deepcopy(model) if isinstance(model, nn.Module) else model()
        else:
            full = models.build(arch["model"], **arch["model_kwargs"])
    except KeyError as exc:
        raise CheckpointError(f"arch.json names an unknown model: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"arch.json: model {arch['model']!r} cannot be built with "
                              f"model_kwargs {arch['model_kwargs']}: {exc}") from None
    opts = arch.get("space", {})
    try:
        space = WidthSpace.from_model(full, arch["input_shape"], round_to=opts.get("round_to", 1),
                                      min_ratio=opts.get("min_ratio", 0.1),
                                      ignore=tuple(opts.get("ignore", ())),
                                      model_name=arch["model"], model_kwargs=arch["model_kwargs"],
                                      check=bool(opts.get("check", False)))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"arch.json: cannot trace {arch['model']!r} at input_shape "
                              f"{arch['input_shape']}: {exc}") from None
    if space.names != arch["groups"]:
        raise CheckpointError("arch.json groups do not match the groups of the rebuilt model; "
                              "it was saved by a different model definition")
    try:
        widths = space.validate(arch["widths"])
    except WidthError as exc:
        raise CheckpointError(f"arch.json: {exc}") from None
    return prune(full, space, widths), space


def load_pruned(path, model=None) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` and load its weights (``weights_only``).

    The unpruned architecture is built from arch.json's model name (a registry name, timm or
    torchvision model, or an importable ``package.module:factory``), or from ``model`` (the
    unpruned module or a factory) when given."""
    path = Path(path)
    arch = read_arch(path)
    model, _ = build_pruned(arch, model)
    load_weights(model, (path if path.is_dir() else path.parent) / WEIGHTS_FILE)
    return model


def export_onnx(model: nn.Module, input_shape, path, *, opset: int = 17) -> Path:
    """Export ``model`` (eval mode, batch dimension dynamic) to ONNX."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx package: pip install 'structsearch[onnx]'") from None
    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    example = torch.randn(1, *input_shape)
    torch.onnx.export(model, (example,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=opset, dynamo=False)
    return path
