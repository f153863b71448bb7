"""LASSO channel selection and least-squares reconstruction (He et al., "Channel Pruning for
Accelerating Very Deep Neural Networks", ICCV 2017).

For a group, the consumer layers B (convs with ``groups == 1`` and linears that read the group's
channels) define the problem. At a few sampled output positions per image, the contribution of
input channel c to B's output is ``Z_c = W[:, c] * X_c`` (bias excluded) and B's output is
``Y = sum_c Z_c``. The selection solves ``min_beta ||Y - sum_c beta_c Z_c||^2 + alpha ||beta||_1``.

Everything the LASSO needs is the Gram matrix ``G = Z^T Z`` (channels x channels) and
``q = Z^T Y``; with the Cholesky factor ``G = L L^T`` the problem is the small, exactly
equivalent regression ``||L^{-1} q - L^T beta||^2``, so the (samples x outputs) design matrix is
never built. Consumers are weighed equally (each one's ``||Y||^2`` is scaled to 1).

``scores`` ranks channels by when they enter the LASSO path (largest alpha first), so the top
``w`` channels are the first ``w`` to become non-zero whatever the width; :func:`lasso_select`
bisects alpha to exactly ``w`` non-zeros (the paper's procedure);
:func:`structsearch.surgery.reconstruct` (re-exported here) refits the consumers of a pruned
model by least squares on the kept channels.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..space import WidthSpace
from ..surgery import reconstruct  # noqa: F401  (it lives with the rest of weight surgery)
from .base import Criterion, criterion_keep, forward_hooked, model_inputs

# Gram chunks are (samples x outputs x channels) floats; 2**24 floats = 64 MiB keeps peak
# memory flat even for 512-channel layers at ImageNet batch sizes.
_CHUNK_FLOATS = 1 << 24


def is_consumer(module: nn.Module) -> bool:
    """A layer whose output is a sum over its input channels (a non-grouped conv or a linear):
    the layers LASSO selection and least-squares reconstruction fit."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def _conv_geometry(conv: nn.Conv2d, h: int, w: int):
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    pad = conv.padding
    if isinstance(pad, str):  # "valid" or "same" (stride 1)
        pad = (0, 0) if pad == "valid" else (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    ph, pw = pad
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return (kh, kw), (sh, sw), (dh, dw), (ph, pw), (ho, wo)


def sample_positions(module: nn.Module, x: torch.Tensor, points: int | None,
                     rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    """Sampled output positions of ``module`` on input ``x``: for a conv ``(image, row, col)``
    index tensors with ``points`` positions per image (all positions when None or fewer exist);
    for a linear layer one row index tensor over the flattened leading dims."""
    if isinstance(module, nn.Linear):
        rows = int(np.prod(x.shape[:-1]))
        return (torch.arange(rows, device=x.device),)
    n, _, h, w = x.shape
    *_, (ho, wo) = _conv_geometry(module, h, w)
    total = ho * wo
    if points is None or points >= total:
        pos = np.tile(np.arange(total), n)
    else:
        pos = np.concatenate([rng.choice(total, size=points, replace=False) for _ in range(n)])
    per = len(pos) // n
    images = np.repeat(np.arange(n), per)
    t = lambda a: torch.as_tensor(a, device=x.device, dtype=torch.long)  # noqa: E731
    return t(images), t(pos // wo), t(pos % wo)


def input_patches(module: nn.Module, x: torch.Tensor, where) -> torch.Tensor:
    """Inputs that produce ``module``'s output at the positions ``where``: (S, C, K) where K is
    the kernel area for a conv and 1 for a linear layer."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])[where[0]][:, :, None]
    images, oy, ox = where
    (kh, kw), (sh, sw), (dh, dw), (ph, pw), _ = _conv_geometry(module, x.shape[2], x.shape[3])
    padded = nn.functional.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1)  # N, Hp, Wp, C
    rows = oy[:, None] * sh + torch.arange(kh, device=x.device)[None] * dh
    cols = ox[:, None] * sw + torch.arange(kw, device=x.device)[None] * dw
    patch = padded[images[:, None, None], rows[:, :, None], cols[:, None, :]]  # S, kh, kw, C
    return patch.permute(0, 3, 1, 2).reshape(len(images), x.shape[1], kh * kw)


def _weight3(module: nn.Module) -> torch.Tensor:
    """Weight as (out, in, K)."""
    w = module.weight.detach().float()
    return w.reshape(w.shape[0], w.shape[1], -1)


def _accumulate_gram(gram: torch.Tensor, patches: torch.Tensor, weight: torch.Tensor,
                     idxs: torch.Tensor, roots: torch.Tensor, *, target: torch.Tensor | None = None,
                     cross: torch.Tensor | None = None) -> None:
    """``gram += Z^T Z`` for contributions ``Z[s, o, r] = sum_{c -> r} sum_k W[o,c,k] P[s,c,k]``;
    with ``target`` (samples x outputs) also ``cross += Z^T target``."""
    p = patches[:, idxs].float()
    w = weight[:, idxs]
    width = gram.shape[0]
    # Usual case: module channel i is root channel i, and the root aggregation is a no-op.
    identity = len(roots) == width and bool(
        (roots == torch.arange(width, device=roots.device)).all())
    step = max(1, _CHUNK_FLOATS // max(w.shape[0] * width, 1))
    for start in range(0, p.shape[0], step):
        z = torch.einsum("sck,ock->soc", p[start:start + step], w)
        if not identity:
            z = z.new_zeros(z.shape[0], z.shape[1], width).index_add_(2, roots, z)
        flat = z.reshape(-1, width)
        # float32 products, float64 running sum: ranking needs no more, and it is 2x faster.
        gram += (flat.T @ flat).double()
        if target is not None:
            cross += (flat.T @ target[start:start + step].float().reshape(-1)).double()


def consumer_grams(model: nn.Module, space: WidthSpace, inputs: list[torch.Tensor], *,
                   groups=None, points_per_image: int | None = 10,
                   seed: int = 0) -> list[torch.Tensor | None]:
    """Per group, ``G = sum_B Z_B^T Z_B / ||Y_B||^2`` over its consumers B (None without one).

    One forward pass over ``inputs`` (eval mode) with a pre-hook on every consumer.
    ``groups`` restricts the work to these group indices.
    """
    modules = dict(model.named_modules())
    wanted = range(len(space.groups)) if groups is None else groups
    device = next(model.parameters()).device
    jobs: dict[str, list] = {}  # consumer module -> [(group, idxs, roots)]
    for g in wanted:
        for m in space.groups[g].members:
            if m.dim == "in" and is_consumer(modules[m.module]):
                idxs = torch.as_tensor(m.idxs, device=device)
                roots = torch.as_tensor(m.root_idxs, device=device)
                jobs.setdefault(m.module, []).append((g, idxs, roots))
    grams = {}
    for name, items in jobs.items():
        for g, _, _ in items:
            width = space.groups[g].width
            grams[(g, name)] = torch.zeros(width, width, dtype=torch.float64, device=device)
    rng = np.random.default_rng(seed)

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach().float()
            where = sample_positions(module, x, points_per_image, rng)
            patches = input_patches(module, x, where)
            weight = _weight3(module)
            for g, idxs, roots in jobs[name]:
                _accumulate_gram(grams[(g, name)], patches, weight, idxs, roots)
        return hook

    forward_hooked(model, inputs, [modules[n].register_forward_pre_hook(hook_for(n)) for n in jobs])
    result: list[torch.Tensor | None] = [None] * len(space.groups)
    for (g, _), gram in grams.items():
        energy = gram.sum()  # = ||Y_B||^2, since Y_B = Z_B @ 1
        if energy > 0:
            result[g] = gram / energy if result[g] is None else result[g] + gram / energy
    return result


# ------------------------------------------------------------------ LASSO on a Gram matrix


def _reduced_problem(gram: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` with ``X^T X = G`` and ``X^T y = q`` (so ``||y - X b||^2`` equals the original
    residual up to a constant): ``X = L^T``, ``y = L^{-1} q`` for ``G = L L^T``."""
    n = len(gram)
    scale = max(float(np.trace(gram)) / max(n, 1), 1e-30)
    # Dead channels (all-zero Z_c) and float32 accumulation leave G singular or a hair
    # indefinite; the smallest diagonal jitter that factorises (a negligible ridge) fixes it.
    # torch's factorisation: numpy's OpenBLAS threads are far slower on a shared CPU.
    for rel in (1e-9, 1e-7, 1e-5, 1e-3, 1e-1):
        lower, info = torch.linalg.cholesky_ex(torch.from_numpy(gram + rel * scale * np.eye(n)))
        if int(info) == 0:
            break
    else:
        raise np.linalg.LinAlgError("Gram matrix of channel contributions is not positive "
                                    "semi-definite (non-finite activations?)")
    y = torch.linalg.solve_triangular(lower, torch.from_numpy(q)[:, None], upper=False)[:, 0]
    return lower.T.contiguous().numpy(), y.numpy()


def lasso_order(gram, q, *, n_alphas: int = 100) -> np.ndarray:
    """Channels in the order they enter the LASSO path (most important first).

    Ties within one alpha step go to the larger |beta| there; channels that never enter are
    ordered by their final |beta|, then by index.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import lasso_path

    gram, q = np.asarray(gram, np.float64), np.asarray(q, np.float64)
    x, y = _reduced_problem(gram, q)
    alpha_max = np.abs(x.T @ y).max() / len(y)
    if alpha_max <= 0:
        return np.arange(len(q))
    alphas = alpha_max * np.logspace(0, -4, n_alphas)
    with warnings.catch_warnings():
        # Entry order is settled long before full convergence at the smallest alphas.
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, coefs, _ = lasso_path(x, y, alphas=alphas, max_iter=5000, tol=1e-6)
    active = np.abs(coefs) > 0
    entered = np.where(active.any(1), active.argmax(1), n_alphas)
    at_entry = np.abs(coefs[np.arange(len(q)), np.minimum(entered, n_alphas - 1)])
    return np.lexsort((np.arange(len(q)), -at_entry, entered))


def lasso_select_gram(gram, q, width: int, *, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Bisect alpha until exactly ``width`` betas are non-zero; returns (sorted channel indices,
    beta of every channel). If no alpha gives exactly ``width`` (channels entering together), the
    first ``width`` channels of the path are kept and their beta refitted by least squares."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import Lasso

    gram, q = np.asarray(gram, np.float64), np.asarray(q, np.float64)
    n = len(q)
    if not 1 <= width <= n:
        raise ValueError(f"width must be in [1, {n}], got {width}")
    x, y = _reduced_problem(gram, q)
    alpha_max = np.abs(x.T @ y).max() / n
    lo, hi = np.log(alpha_max * 1e-8 + 1e-300), np.log(alpha_max + 1e-300)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            beta = Lasso(alpha=float(np.exp(mid)), fit_intercept=False, max_iter=10000,
                         tol=1e-8).fit(x, y).coef_
        count = int((np.abs(beta) > 0).sum())
        if count == width:
            return np.nonzero(beta)[0], beta
        if count > width:
            lo = mid
        else:
            hi = mid
    keep = np.sort(lasso_order(gram, q)[:width])
    beta = np.zeros(n)
    beta[keep] = np.linalg.lstsq(x[:, keep], y, rcond=None)[0]
    return keep, beta


# ------------------------------------------------------------------ criterion and model API


class ChannelLasso(Criterion):
    """He et al.'s LASSO criterion: channels ranked by their entry into the LASSO path of
    reconstructing the consumers' outputs from ``points_per_image`` sampled positions of each
    image of the first ``num_batches`` batches (seeded by ``seed``). A group without a
    conv/linear consumer falls back to L1 of its producers."""

    name = "lasso"
    needs_data = True
    reconstructs = True  # He et al. refit the consumer by least squares after the selection

    def __init__(self, num_batches: int = 5, points_per_image: int = 10, seed: int = 0,
                 n_alphas: int = 100, order: str = "joint"):
        if num_batches < 1 or points_per_image < 1 or n_alphas < 2:
            raise ValueError("num_batches, points_per_image must be >= 1 and n_alphas >= 2")
        if order not in ("joint", "sequential"):
            raise ValueError(f"order must be joint (every group on the baseline, one Gram each) "
                             f"or sequential (He et al.'s: each group after the ones before it "
                             f"are pruned and refit), got {order!r}")
        self.num_batches = num_batches
        self.points_per_image = points_per_image
        self.seed = seed
        self.n_alphas = n_alphas
        self.order = order

    @property
    def selects_per_width(self) -> bool:
        """Joint: alpha bisected per width on the baseline's Grams (state computed once)."""
        return self.order == "joint"

    @property
    def selects_on_model(self) -> bool:
        """Sequential: each candidate's selection runs on the baseline and data
        (:meth:`select_on_model`)."""
        return self.order == "sequential"

    def select_on_model(self, model, space, widths, batches, scores=None):
        """He et al.'s sequential procedure for one width vector (criteria/sequential.py)."""
        from .sequential import sequential_keep
        return sequential_keep(model, space, widths, batches, scores=scores,
                               num_batches=self.num_batches,
                               points_per_image=self.points_per_image, seed=self.seed)

    def scores(self, model, space, batches=None):
        inputs = model_inputs(batches, self.num_batches)
        grams = consumer_grams(model, space, inputs, points_per_image=self.points_per_image,
                               seed=self.seed)
        fallback = None
        result = []
        for g, gram in enumerate(grams):
            if gram is None:
                if fallback is None:
                    from .l1 import L1Norm
                    fallback = L1Norm().scores(model, space)
                result.append(fallback[g])
                continue
            gram = gram.cpu().numpy()
            order = lasso_order(gram, gram.sum(1), n_alphas=self.n_alphas)
            score = np.empty(len(order))
            score[order] = (len(order) - np.arange(len(order))) / len(order)
            result.append(score)
        return result


    def selection_state(self, model, space, batches=None):
        """Per group, the consumers' Gram matrix (numpy; None without a conv/linear consumer)."""
        inputs = model_inputs(batches, self.num_batches)
        grams = consumer_grams(model, space, inputs, points_per_image=self.points_per_image,
                               seed=self.seed)
        return [None if g is None else g.cpu().numpy() for g in grams]

    def select(self, state, scores, widths):
        """He et al.: at each candidate's own width, alpha is bisected until exactly ``w``
        betas are non-zero (groups at full width, or without a consumer, keep their top-``w``
        channels by score)."""
        keep = criterion_keep(scores, widths)
        for g, (gram, w) in enumerate(zip(state or [], widths)):
            if gram is not None and int(w) < len(gram):
                keep[g] = np.sort(lasso_select_gram(gram, gram.sum(1), int(w))[0])
        return keep


def _group_index(space: WidthSpace, group) -> int:
    if isinstance(group, str):
        names = space.names
        if group not in names:
            raise KeyError(f"no group named {group!r}")
        return names.index(group)
    return int(group)


def lasso_select(model: nn.Module, space: WidthSpace, group, width: int, batches, *,
                 num_batches: int = 5, points_per_image: int = 10, seed: int = 0) -> np.ndarray:
    """Root channels of ``group`` (index or name) that He et al.'s alpha bisection keeps at
    ``width``: exactly ``width`` sorted indices."""
    g = _group_index(space, group)
    inputs = model_inputs(batches, num_batches)
    gram = consumer_grams(model, space, inputs, groups=[g], points_per_image=points_per_image,
                          seed=seed)[g]
    if gram is None:
        raise ValueError(f"group {g} ({space.groups[g].name}) has no conv/linear consumer")
    gram = gram.cpu().numpy()
    return lasso_select_gram(gram, gram.sum(1), width)[0]
