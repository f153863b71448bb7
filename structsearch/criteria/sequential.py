"""He et al.'s sequential order: each group's LASSO sees the layers before it already pruned.

In the paper the layers are pruned one after another. For layer B the regressors are B's inputs
in the *partially pruned* network (every earlier group cut and its consumers refit) and the
target is B's output in the *original* network, so each selection also compensates for the
error the earlier cuts left. :func:`sequential_keep` does this for one width vector: groups are
visited in model order (by their first consumer), each is selected by the exact-count alpha
bisection on cross statistics, and its consumers are refit by least squares before the next
group is visited.

The partially pruned network is kept at full shape: a cut group's channels are zeroed in the
input columns of its consumers, which is the pruned network's function whenever the consumers
(non-grouped convs and linears) are the only layers that mix channels. The final weights are
then fitted on the real pruned network (``surgery.reconstruct``), so nothing depends on that
equivalence beyond the choice of channels.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..ranking import criterion_keep
from ..space import WidthSpace
from ..surgery import ls_statistics
from .base import model_inputs
from .lasso import _accumulate_gram, _weight3, input_patches, is_consumer, lasso_select_gram, \
    sample_positions


def group_order(model: nn.Module, space: WidthSpace) -> list[int]:
    """Group indices in model order: by the position of their first consumer (groups without one
    last, by index)."""
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    modules = dict(model.named_modules())

    def first(g):
        spots = [position[m.module] for m in space.groups[g].members
                 if m.dim == "in" and is_consumer(modules[m.module])]
        return (min(spots), g) if spots else (len(position), g)
    return sorted(range(len(space.groups)), key=first)


def _consumers(model, space, g):
    modules = dict(model.named_modules())
    return [m for m in space.groups[g].members if m.dim == "in" and is_consumer(modules[m.module])]


def _bias_free(module, y):
    if module.bias is None:
        return y
    shape = (1, -1) if isinstance(module, nn.Linear) else (1, -1, 1, 1)
    return y - module.bias.detach().float().reshape(shape)


def _at(module, y, where):
    if isinstance(module, nn.Linear):
        return y.reshape(-1, y.shape[-1])[where[0]]
    return y[where[0], :, where[1], where[2]]


def _observe(current, original, names, x):
    """Consumers ``names``' inputs and outputs in ``current`` and outputs in ``original``."""
    cur, orig = dict(current.named_modules()), dict(original.named_modules())
    seen: dict = {}
    hooks = []
    for name in names:
        def pre(mod, a, name=name):
            seen[("x", name)] = a[0].detach().float()

        def post(mod, a, out, name=name, key="cur"):
            seen[(key, name)] = out.detach().float()
        hooks += [cur[name].register_forward_pre_hook(pre), cur[name].register_forward_hook(post),
                  orig[name].register_forward_hook(lambda mod, a, out, name=name, key="orig":
                                                   post(mod, a, out, name, key))]
    try:
        current(x)
        original(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def cross_statistics(current: nn.Module, original: nn.Module, space: WidthSpace, g: int, inputs,
                     points_per_image: int | None, rng) -> tuple[np.ndarray, np.ndarray] | None:
    """``(G, q)`` of group ``g``'s selection: ``G = sum_B Z_B^T Z_B / ||Y_B||^2`` with ``Z`` the
    group's channel contributions to consumer B in ``current``, and ``q = sum_B Z_B^T R_B /
    ||Y_B||^2`` with ``R_B`` the original network's B output (bias excluded) less what B's other
    input channels contribute in ``current``. None when the group has no consumer."""
    members = _consumers(current, space, g)
    if not members:
        return None
    width = space.groups[g].width
    cur = dict(current.named_modules())
    device = next(current.parameters()).device
    stats = {m.module: [torch.zeros(width, width, dtype=torch.float64, device=device),
                        torch.zeros(width, dtype=torch.float64, device=device), 0.0]
             for m in members}
    for x in inputs:
        seen = _observe(current, original, list(stats), x.to(device))
        for m in members:
            layer = cur[m.module]
            idxs = torch.as_tensor(m.idxs, device=device)
            roots = torch.as_tensor(m.root_idxs, device=device)
            where = sample_positions(layer, seen[("x", m.module)], points_per_image, rng)
            patches = input_patches(layer, seen[("x", m.module)], where)
            y = _at(layer, _bias_free(layer, seen[("orig", m.module)]), where)
            y_cur = _at(layer, _bias_free(layer, seen[("cur", m.module)]), where)
            weight = _weight3(layer)
            # The group's own contribution in ``current`` is added back: R is what it must fit.
            own = torch.einsum("sck,ock->so", patches[:, idxs], weight[:, idxs])
            entry = stats[m.module]
            _accumulate_gram(entry[0], patches, weight, idxs, roots, target=y - y_cur + own,
                             cross=entry[1])
            entry[2] += float((y.double() ** 2).sum())
    gram, q = np.zeros((width, width)), np.zeros(width)
    for g_b, q_b, energy in stats.values():
        if energy > 0:
            gram += g_b.cpu().numpy() / energy
            q += q_b.cpu().numpy() / energy
    return gram, q


@torch.no_grad()
def _cut_and_refit(current: nn.Module, original: nn.Module, space: WidthSpace, g: int,
                   kept: np.ndarray, dropped: dict, inputs, points_per_image, rng,
                   ridge: float) -> None:
    """Zero group ``g``'s dropped channels in its consumers' input columns (``dropped`` records
    them per consumer), then refit each consumer's remaining columns by least squares to the
    original network's output."""
    cur, orig = dict(current.named_modules()), dict(original.named_modules())
    for m in _consumers(current, space, g):
        layer = cur[m.module]
        gone = dropped.setdefault(m.module, set())
        gone.update(int(c) for c in m.idxs[~np.isin(m.root_idxs, kept)])
        n_out, n_in = layer.weight.shape[:2]
        k = layer.weight[0].numel() // n_in
        live = np.setdiff1d(np.arange(n_in), sorted(gone))
        layer.weight.data[:, torch.as_tensor(sorted(gone), dtype=torch.long)] = 0
        gram, cross, energy = ls_statistics(original, current, orig[m.module], layer,
                                            torch.arange(n_out), inputs, points_per_image, rng)
        cols = torch.as_tensor((live[:, None] * k + np.arange(k)[None]).reshape(-1),
                               device=gram.device)
        sub = gram[cols][:, cols]
        lam = ridge * float(sub.diagonal().mean()) + 1e-12
        eye = torch.eye(len(cols), dtype=sub.dtype, device=sub.device)
        weight = torch.zeros(n_out, n_in * k, dtype=torch.float64, device=gram.device)
        weight[:, cols] = torch.linalg.solve(sub + lam * eye, cross[cols]).T
        old = layer.weight.detach().double().reshape(weight.shape)

        def error(w):  # ||T - P W^T||^2 from the accumulated statistics
            return energy - 2 * float((w.T * cross).sum()) + float(((gram @ w.T) * w.T).sum())
        if error(weight) < error(old):
            layer.weight.data.copy_(weight.reshape(layer.weight.shape).to(layer.weight.dtype))


def sequential_keep(model: nn.Module, space: WidthSpace, widths, batches, *, scores=None,
                    num_batches: int = 5, points_per_image: int | None = 10, seed: int = 0,
                    ridge: float = 1e-6) -> dict[int, np.ndarray]:
    """Per group, the sorted root channels He et al.'s sequential procedure keeps at ``widths``.

    ``model`` (the trained baseline) is not changed. Groups at full width keep every channel;
    a group without a conv/linear consumer keeps its top-``w`` channels by ``scores`` (the
    first ``w`` without scores).
    """
    return sequential_pass(model, space, widths, batches, scores=scores, num_batches=num_batches,
                           points_per_image=points_per_image, seed=seed, ridge=ridge)[0]


def sequential_pass(model: nn.Module, space: WidthSpace, widths, batches, *, scores=None,
                    num_batches: int = 5, points_per_image: int | None = 10, seed: int = 0,
                    ridge: float = 1e-6) -> tuple[dict[int, np.ndarray], nn.Module]:
    """:func:`sequential_keep`'s channels and the full-shape network the pass ends with (cut
    channels zeroed in their consumers, the consumers refit)."""
    widths = [int(w) for w in space.validate(widths)]
    inputs = model_inputs(batches, num_batches)
    rng = np.random.default_rng(seed)
    original = model
    was_training = original.training
    original.eval()
    current = copy.deepcopy(original).eval()
    fallback = criterion_keep(scores, widths) if scores is not None else \
        {g: np.arange(w) for g, w in enumerate(widths)}
    keep: dict[int, np.ndarray] = {}
    dropped: dict[str, set] = {}
    try:
        for g in group_order(original, space):
            w = widths[g]
            if w >= space.groups[g].width:
                keep[g] = np.arange(w)
                continue
            stats = cross_statistics(current, original, space, g, inputs, points_per_image, rng)
            if stats is None:
                keep[g] = np.sort(np.asarray(fallback[g]))
                continue
            keep[g] = np.sort(lasso_select_gram(stats[0], stats[1], w)[0])
            _cut_and_refit(current, original, space, g, keep[g], dropped, inputs,
                           points_per_image, rng, ridge)
    finally:
        original.train(was_training)
    return {g: keep[g] for g in range(len(space.groups))}, current
