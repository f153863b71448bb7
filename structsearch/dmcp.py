"""DMCP supernet: differentiable Markov channel pruning over any model and WidthSpace.

Guo et al., "Differentiable Markov Channel Pruning" (CVPR 2020). Each searchable group keeps a
fixed minimum of channels plus ``G`` blocks (boundaries on the space's grid); block ``k`` is kept
only if block ``k-1`` is, with transition probability ``p_k = sigmoid(alpha_k)`` and marginal
``P_k = prod_{i<=k} p_i``. The kept channels are always a prefix of the group's root channels,
optionally reordered first (``order``) so that a pretrained model's most important channels
form the prefix.

Sub-networks are realised without touching the weights: forward hooks multiply the output
channels of each group's last producer (its BatchNorm layers, a layer-specific leaf such as the
option-A shortcut, or a conv/linear with no BN after it) by a per-channel scale. Every member of
a coupled group reads the same scale for the same root channel, so the masked supernet computes
exactly what the physically pruned network computes. Modes:

- ``full``: no scaling (the largest network);
- ``widths``: hard 0/1 masks for one width vector (weight steps);
- ``arch``: block ``k`` scaled by ``P_k`` (architecture steps, differentiable in alpha).

Expected widths ``E[w_g] = min_g + sum_k size_gk * P_gk`` enter the space's closed-form cost
model (``space._macs``: ``sum coef * (a0 + A w) * (b0 + B w)``) in float64, so expected MACs are
differentiable in alpha and equal ``space.macs(w)`` when every ``p`` is 0 or 1.

Choices where the paper leaves room (all recorded here so runs can be compared):

- Weight optimiser: SGD, momentum 0.9, weight decay 1e-4, cosine learning rate over all
  steps. Architecture optimiser: Adam (betas 0.9/0.999), no weight decay, learning rate
  ``lr_arch`` decayed by a cosine over the architecture phase (the official runner also steps
  an architecture LR scheduler); without the decay Adam keeps oscillating around the band.
  Architecture steps use the same batch as the weight step before them, as the official
  runner does.
- BatchNorm running statistics follow the largest network only: the smaller sandwich nets and
  the architecture forward run with BN momentum 0, so ``val_acc`` of the largest network is
  measured with its own statistics.
- Random sandwich widths: uniform over each group's grid (from the chain minimum up) with
  probability ``1 - step / total_steps``, else a direct sample from the chains.
- ``log_l1`` budget loss: outside ``[0.95 T, T]`` it is ``log(d + 0.05 T)`` with ``d`` the
  distance to the nearer edge, which is exactly the official code's distance to the far edge.
  The plain ``log(d)`` is singular at the edge: its gradient spikes as E reaches the band, the
  spike sits in Adam's momentum and E overshoots far past T (observed on the digits mini run:
  up to 1.7 T). "Far" means ``|E - T| > 0.1 T`` (the official threshold, 200 MFLOPs, has no
  unit-free meaning); as in the official code the 0.1 factor sits inside the log, so it shifts
  the reported loss but never the gradient. ``l1``/``l2`` are measured on ``E / T`` so their
  scale does not depend on the model's size.
- ES rounds each expected width to the nearest block (chain width), as the paper does
  (``round_to="grid"``: the nearest grid width instead).
- A chain walk keeps block ``k`` while ``U < p_k`` (``U`` uniform in [0, 1)), i.e. stops at the
  first ``U >= p_k``: the same law as "stop at the first U > p_k", exact at ``p`` = 0 and 1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .ranking import order_from_scores, walk_chains
from .space import WidthSpace
from .train import epoch_seed, mixed_precision, plan_run

__all__ = ["DMCPSupernet", "budget_loss", "build_chain", "order_from_scores", "train_supernet",
           "walk_chains", "FORMAT_VERSION"]

FORMAT_VERSION = 1
BUDGET_LOSSES = ("log_l1", "l1", "l2")


# ---------------------------------------------------------------------------------- chains
def build_chain(grid: np.ndarray, width: int, *, num_blocks: int, min_ratio: float) -> np.ndarray:
    """Widths reachable by one group's chain, ascending: ``[min, b_1, ..., b_K = width]``.

    ``min`` is the smallest grid value >= ``ceil(min_ratio * width)``; the rest is cut into
    ``num_blocks`` equal blocks whose boundaries are snapped to the nearest grid value (a
    coarse grid can merge boundaries, so ``K <= num_blocks``).
    """
    grid = np.asarray(grid, dtype=np.int64)
    floor = max(1, math.ceil(min_ratio * width - 1e-9))
    start = min(int(np.searchsorted(grid, floor)), len(grid) - 1)
    low = int(grid[start])
    chain = [low]
    above = grid[grid > low]
    if len(above):
        targets = low + (width - low) * np.arange(1, num_blocks + 1) / num_blocks
        for t in targets:
            value = int(above[np.argmin(np.abs(above - t + 1e-9))])
            if value > chain[-1]:
                chain.append(value)
        if chain[-1] != width:
            chain.append(int(width))
    return np.array(chain, dtype=np.int64)


# ---------------------------------------------------------------------------------- loss
def budget_loss(expected_macs: torch.Tensor, target_macs: float, kind: str = "log_l1", *,
                tolerance: float = 0.05, far: float = 0.1) -> torch.Tensor:
    """Budget penalty of expected MACs against target ``T`` (MACs).

    ``log_l1``: 0 inside ``[(1 - tolerance) T, T]``, else ``log(ratio * (d + tolerance * T))``
    with ``d`` the distance in MACs to the nearer edge and ``ratio = 0.1`` when
    ``|E - T| > far * T``.
    ``l1``: ``|E/T - 1|``; ``l2``: ``(E/T - 1)^2``.
    """
    t = float(target_macs)
    e = expected_macs
    if kind == "l1":
        return (e / t - 1.0).abs()
    if kind == "l2":
        return (e / t - 1.0) ** 2
    if kind != "log_l1":
        raise ValueError(f"budget loss must be one of {', '.join(BUDGET_LOSSES)}, got {kind!r}")
    lower = (1.0 - tolerance) * t
    edge = torch.where(e < lower, torch.full_like(e, lower), torch.full_like(e, t))
    # Distance to the nearer edge plus the band's width (= the distance to the far edge, as in
    # the official code): the log stays finite at the edge, and its gradient, at most
    # 1 / (tolerance * T) per MAC, cannot spike into an optimiser's momentum and overshoot.
    d = (e - edge).abs() + max(tolerance * t, 1.0)
    ratio = torch.where((e - t).abs() > far * t, torch.full_like(e, 0.1), torch.ones_like(e))
    inside = (e >= lower) & (e <= t)
    return torch.where(inside, torch.zeros_like(e), torch.log(ratio * d))


# ---------------------------------------------------------------------------------- supernet
def _out_size(module: nn.Module) -> int:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.out_channels)


def _check_order(order: Sequence[np.ndarray] | None, widths: list[int]) -> list[np.ndarray]:
    """The per-group channel permutations as int arrays (identity without ``order``)."""
    if order is None:
        order = [np.arange(c) for c in widths]
    if len(order) != len(widths):
        raise ValueError(f"order has {len(order)} entries but the space has {len(widths)} groups")
    result = []
    for i, (perm, c) in enumerate(zip(order, widths)):
        perm = np.asarray(perm, dtype=np.int64)
        if perm.shape != (c,) or not np.array_equal(np.sort(perm), np.arange(c)):
            raise ValueError(f"order[{i}] must be a permutation of range({c})")
        result.append(perm)
    return result


class DMCPSupernet(nn.Module):
    """A model plus its WidthSpace as a DMCP supernet (see the module docstring).

    ``order``: optional per-group permutation of root channels, most important first (e.g.
    :func:`order_from_scores` of a criterion); default is the channels' own order.
    """

    def __init__(self, model: nn.Module, space: WidthSpace, *, num_blocks: int = 9,
                 min_ratio: float = 0.1, order: Sequence[np.ndarray] | None = None):
        super().__init__()
        if num_blocks < 1:
            raise ValueError("num_blocks must be >= 1")
        if not 0 < min_ratio <= 1:
            raise ValueError("min_ratio must be in (0, 1]")
        self.model = model
        self.space = space
        self.num_blocks = int(num_blocks)
        self.min_ratio = float(min_ratio)
        self.chains = [build_chain(space.grid(i), g.width, num_blocks=num_blocks, min_ratio=min_ratio)
                       for i, g in enumerate(space.groups)]
        self.alpha = nn.ParameterList([nn.Parameter(torch.zeros(len(c) - 1)) for c in self.chains])
        widths = [g.width for g in space.groups]
        self.order = _check_order(order, widths)
        self._register_cost_buffers()

        # Positions: group g's position j (0 = most important) sits at offset_g + j of one flat
        # vector, followed by a trailing "not in any group" slot that always scales by 1.
        self._offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self._num_positions = int(self._offsets[-1])
        self._targets = self._scaled_outputs()
        self._target_names = self._register_targets(self._block_index())
        self._mode = "full"
        self._mask: torch.Tensor | None = None  # hard mask over positions (+ trailing 1)
        self._soft: torch.Tensor | None = None  # [1, P...] for the current arch forward
        self._widths: np.ndarray | None = None
        modules = dict(model.named_modules())
        self._handles = [
            modules[name].register_forward_hook(self._hook(t, isinstance(modules[name], nn.Linear)))
            for t, name in enumerate(self._target_names)]

    # ------------------------------------------------------------------ construction helpers
    def _register_cost_buffers(self) -> None:
        """The space's cost model and the chains' minima and block sizes as float64 buffers."""
        space = self.space
        space.macs(space.full_widths)  # forces the space to freeze its cost arrays
        cost = space._macs
        for name in ("coef", "a0", "b0", "A", "B"):
            self.register_buffer(f"_cost_{name}", torch.tensor(getattr(cost, name), dtype=torch.float64),
                                 persistent=False)
        self.register_buffer("_chain_min", torch.tensor([c[0] for c in self.chains], dtype=torch.float64),
                             persistent=False)
        for g, chain in enumerate(self.chains):
            self.register_buffer(f"_block_sizes_{g}", torch.tensor(np.diff(chain), dtype=torch.float64),
                                 persistent=False)

    def _block_index(self) -> np.ndarray:
        """Block of each position for the soft (arch) mode: index into [1, P_0..., P_1..., ...]
        (0, the leading 1, for the minimum of every chain and the trailing slot)."""
        block_index = np.zeros(self._num_positions + 1, dtype=np.int64)
        start = 1
        for g, chain in enumerate(self.chains):
            base = self._offsets[g]
            for k in range(len(chain) - 1):
                block_index[base + chain[k]: base + chain[k + 1]] = start + k
            start += len(chain) - 1
        return block_index

    def _register_targets(self, block_index: np.ndarray) -> list[str]:
        """Position and block buffers of every scaled output; returns the modules' names."""
        names = []
        for t, (name, pos) in enumerate(self._targets.items()):
            self.register_buffer(f"_pos_{t}", torch.from_numpy(pos), persistent=False)
            self.register_buffer(f"_blk_{t}", torch.from_numpy(block_index[pos]), persistent=False)
            names.append(name)
        return names

    def _scaled_outputs(self) -> dict[str, np.ndarray]:
        """Module name -> position index of each output channel, for every module whose output
        carries a group's final activations (BN, custom leaf, or a conv/linear not feeding a BN)."""
        modules = dict(self.model.named_modules())
        out_members: dict[str, list[tuple[int, object]]] = {}
        for g, group in enumerate(self.space.groups):
            for m in group.members:
                if m.dim == "out":
                    out_members.setdefault(m.module, []).append((g, m))
        feeds_bn = self._layers_feeding_bn(
            [n for n in out_members if isinstance(modules[n], (nn.Conv2d, nn.Linear))],
            [n for n in out_members if isinstance(modules[n], nn.modules.batchnorm._BatchNorm)])
        targets: dict[str, np.ndarray] = {}
        for name, members in out_members.items():
            module = modules[name]
            if isinstance(module, (nn.Conv2d, nn.Linear)) and name in feeds_bn:
                continue
            pos = np.full(_out_size(module), self._num_positions, dtype=np.int64)
            for g, m in members:
                rank = np.empty(len(self.order[g]), dtype=np.int64)
                rank[self.order[g]] = np.arange(len(self.order[g]))
                pos[m.idxs] = self._offsets[g] + rank[m.root_idxs]
            targets[name] = pos
        return targets

    def _layers_feeding_bn(self, layers: list[str], norms: list[str]) -> set[str]:
        """Conv/linear layers whose output tensor is the direct input of a BN (one traced pass)."""
        if not layers or not norms:
            return set()
        modules = dict(self.model.named_modules())
        produced: list[tuple[str, torch.Tensor]] = []
        consumed: list[torch.Tensor] = []
        handles = []
        for name in layers:
            handles.append(modules[name].register_forward_hook(
                lambda mod, inp, out, name=name: produced.append((name, out))))
        for name in norms:
            handles.append(modules[name].register_forward_pre_hook(
                lambda mod, inp: consumed.append(inp[0])))
        was_training = self.model.training
        self.model.eval()
        try:
            device = next(self.model.parameters()).device
            with torch.no_grad():
                self.model(torch.zeros(1, *self.space.input_shape, device=device))
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        return {name for name, out in produced if any(out is c for c in consumed)}

    def _scale(self, t: int) -> torch.Tensor | None:
        if self._mode == "full":
            return None
        if self._mode == "arch":
            return self._soft[getattr(self, f"_blk_{t}")]
        return self._mask[getattr(self, f"_pos_{t}")]

    def _hook(self, t: int, linear: bool) -> Callable:
        def fn(module, inputs, output):
            scale = self._scale(t)
            if scale is None:
                return None
            scale = scale.to(output.dtype)
            if not linear:
                scale = scale.view(1, -1, *([1] * (output.dim() - 2)))
            return output * scale
        return fn

    def remove_hooks(self) -> None:
        """Detach the supernet from the model (the model then runs unscaled)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ modes
    def set_full(self) -> None:
        """Run the largest network (no scaling)."""
        self._mode, self._widths = "full", None

    def set_arch(self) -> None:
        """Scale block k of every group by its marginal P_k (differentiable in alpha)."""
        self._mode, self._widths = "arch", None

    def set_widths(self, widths) -> None:
        """Hard 0/1 masks: group g keeps the first ``widths[g]`` channels of its order."""
        w = np.asarray(widths, dtype=np.int64)
        if w.shape != (len(self.chains),):
            raise ValueError(f"widths needs {len(self.chains)} entries, got {w.shape}")
        mask = np.ones(self._num_positions + 1, dtype=np.float32)
        for g, value in enumerate(w):
            c = self.space.groups[g].width
            if not 1 <= value <= c:
                raise ValueError(f"width {value} of group {g} is outside [1, {c}]")
            mask[self._offsets[g] + value: self._offsets[g + 1]] = 0.0
        self._mask = torch.from_numpy(mask).to(self._cost_coef.device)
        self._mode, self._widths = "widths", w

    @property
    def mode(self) -> str:
        return self._mode

    def channel_scales(self) -> dict[str, torch.Tensor]:
        """Module name -> the per-output-channel scale the current mode applies (``full``: all
        ones). For inspection and tests; the hooks compute the same vectors."""
        if self._mode == "arch":
            self._soft = torch.cat([torch.ones(1, device=self._cost_coef.device)]
                                   + [P.float() for P in self.marginals()])
        try:
            out = {}
            for t, name in enumerate(self._target_names):
                scale = self._scale(t)
                out[name] = torch.ones(len(getattr(self, f"_pos_{t}"))) if scale is None else scale
            return out
        finally:
            self._soft = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._mode == "arch":
            ones = torch.ones(1, device=x.device)
            self._soft = torch.cat([ones] + [P.float() for P in self.marginals()])
        try:
            return self.model(x)
        finally:
            self._soft = None

    # ------------------------------------------------------------------ probabilities and cost
    def transition_probs(self, alphas: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """``p_k = sigmoid(alpha_k)`` per group (tensors)."""
        alphas = self.alpha if alphas is None else alphas
        return [torch.sigmoid(a) for a in alphas]

    def marginals(self, alphas: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """``P_k = prod_{i<=k} p_i`` per group: the probability that block k is kept."""
        return [torch.cumprod(p, dim=0) for p in self.transition_probs(alphas)]

    def expected_width_tensor(self, alphas: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """``E[w_g] = min_g + sum_k size_gk * P_gk`` as a float64 tensor (G,)."""
        terms = []
        for g, P in enumerate(self.marginals(alphas)):
            sizes = getattr(self, f"_block_sizes_{g}")
            terms.append((sizes * P.to(torch.float64)).sum())
        if not terms:
            return self._chain_min.clone()
        return self._chain_min + torch.stack(terms)

    def macs_of(self, widths: torch.Tensor) -> torch.Tensor:
        """The space's closed-form MACs at real-valued ``widths`` (float64, differentiable)."""
        w = widths.to(torch.float64)
        a = self._cost_a0 + self._cost_A @ w
        b = self._cost_b0 + self._cost_B @ w
        return (self._cost_coef * a * b).sum()

    def expected_macs(self, alphas: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """MACs of the expected widths (float64 scalar tensor, differentiable in alpha)."""
        return self.macs_of(self.expected_width_tensor(alphas))

    # ------------------------------------------------------------------ read-outs
    def probs(self) -> list[np.ndarray]:
        """Transition probabilities per group as numpy arrays."""
        with torch.no_grad():
            return [p.detach().double().cpu().numpy() for p in self.transition_probs()]

    def expected_width_values(self) -> np.ndarray:
        with torch.no_grad():
            return self.expected_width_tensor().detach().cpu().numpy()

    def expected_widths(self, round_to: str = "block") -> np.ndarray:
        """ES read-out: each expected width rounded to its group's grid (``round_to="grid"``) or
        to the nearest chain width, i.e. block boundary (``round_to="block"``)."""
        e = self.expected_width_values()
        if round_to == "grid":
            return self.space.snap(e)
        if round_to == "block":
            return np.array([int(c[np.argmin(np.abs(c - v - 1e-9))]) for c, v in zip(self.chains, e)],
                            dtype=np.int64)
        raise ValueError("round_to must be 'grid' or 'block'")

    def sample_widths(self, rng: np.random.Generator, n: int, target_macs: float | None = None, *,
                      tol: float = 0.01, max_draws: int | None = None):
        """DS read-out: ``n`` chain walks. Returns ``(widths (n, G) int, projected (n,) bool)``.

        Without ``target_macs`` the raw walks are returned. With it, walks whose MACs are within
        ``tol * target_macs`` of the target are kept (up to ``max_draws`` walks, default
        ``200 * n``); the remaining slots are filled by further walks projected into the budget
        with ``space.project`` (closest to the target first), flagged ``projected``.
        """
        probs = self.probs()
        if target_macs is None:
            return walk_chains(rng, probs, self.chains, n), np.zeros(n, dtype=bool)
        t = float(target_macs)
        max_draws = 200 * n if max_draws is None else int(max_draws)
        kept: list[np.ndarray] = []
        drawn = 0
        batch = max(64, n)
        while len(kept) < n and drawn < max_draws:
            draws = walk_chains(rng, probs, self.chains, batch)
            drawn += batch
            macs = np.asarray(self.space.macs(draws), dtype=np.float64)
            kept.extend(draws[np.abs(macs - t) <= tol * t])
        kept = kept[:n]
        projected = np.zeros(n, dtype=bool)
        if len(kept) < n:
            need = n - len(kept)
            draws = walk_chains(rng, probs, self.chains, max(4 * need, 64))
            repaired = np.stack([self.space.project(w, t) for w in draws])
            gap = np.abs(np.asarray(self.space.macs(repaired), dtype=np.float64) - t)
            kept.extend(repaired[np.argsort(gap, kind="stable")[:need]])
            projected[n - need:] = True
        return np.stack(kept).astype(np.int64), projected

    def alphas(self) -> list[list[float]]:
        """Architecture parameters as plain lists (one per group)."""
        return [[float(v) for v in a.detach().cpu().tolist()] for a in self.alpha]

    @torch.no_grad()
    def load_alphas(self, values: Sequence[Sequence[float]]) -> None:
        if len(values) != len(self.alpha):
            raise ValueError(f"need {len(self.alpha)} alpha lists, got {len(values)}")
        for a, v in zip(self.alpha, values):
            v = torch.as_tensor(np.asarray(v, dtype=np.float32))
            if v.shape != a.shape:
                raise ValueError(f"alpha shape {tuple(v.shape)} does not match {tuple(a.shape)}")
            a.copy_(v)

    def export(self, target_macs: float | None = None) -> dict:
        """JSON-able chains for :class:`searchers.dmcp.DMCPSampler`: ``groups["<index>"]`` holds
        each group's ``name``, ``width``, chain ``widths`` (minimum first), transition
        probabilities ``p`` and ``alpha``; plus the expected widths, the ES point and their MACs."""
        probs = self.probs()
        es = self.expected_widths()
        out = {
            "format_version": FORMAT_VERSION,
            "method": "DMCP",
            "num_blocks": self.num_blocks,
            "min_ratio": self.min_ratio,
            # Keyed by group index rather than a list of records, so that Ray Tune's loggers,
            # which flatten nested dicts, see only numbers, strings and lists of numbers.
            "groups": {str(i): {"name": g.name, "width": int(g.width), "widths": [int(v) for v in chain],
                                "p": [float(v) for v in p], "alpha": alpha}
                       for i, (g, chain, p, alpha) in enumerate(zip(self.space.groups, self.chains,
                                                                     probs, self.alphas()))},
            "expected_widths": [float(v) for v in self.expected_width_values()],
            "expected_macs": float(self.expected_macs().detach()),
            "es_widths": [int(v) for v in es],
            "es_macs": int(self.space.macs(es)),
        }
        if target_macs is not None:
            out["target_macs"] = float(target_macs)
        return out

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha)

    # ------------------------------------------------------------------ sandwich widths
    def smallest_widths(self) -> np.ndarray:
        return np.array([c[0] for c in self.chains], dtype=np.int64)

    def random_widths(self, rng: np.random.Generator, uniform_prob: float) -> np.ndarray:
        """Uniform over each group's grid (chain minimum and up) with probability
        ``uniform_prob``, else one direct sample from the chains."""
        if rng.random() < uniform_prob:
            out = []
            for g, chain in enumerate(self.chains):
                grid = self.space.grid(g)
                grid = grid[grid >= chain[0]]
                out.append(int(grid[rng.integers(len(grid))]))
            return np.array(out, dtype=np.int64)
        return walk_chains(rng, self.probs(), self.chains, 1)[0]


# ---------------------------------------------------------------------------------- training
@contextlib.contextmanager
def _frozen_bn_stats(model: nn.Module):
    """BN layers keep normalising with batch statistics but stop updating running ones."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, v in zip(norms, saved):
            m.momentum = v


@contextlib.contextmanager
def _no_weight_grads(params: list[nn.Parameter]):
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) on softened logits, summed over classes, mean over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student.float() / t, dim=1), F.softmax(teacher.float() / t, dim=1),
                    reduction="batchmean") * (t * t)


def weight_step(supernet: DMCPSupernet, x, y, optimizer, widths_list, *, device) -> float:
    """One sandwich step: the largest net learns from labels, each width vector in
    ``widths_list`` distils from its logits; gradients accumulate into one optimiser step.
    Returns the largest net's cross-entropy."""
    optimizer.zero_grad(set_to_none=True)
    supernet.set_full()
    with mixed_precision(device):
        logits = supernet(x)
        ce = F.cross_entropy(logits.float(), y)
    ce.backward()
    teacher = logits.detach()
    with _frozen_bn_stats(supernet.model):
        for widths in widths_list:
            supernet.set_widths(widths)
            with mixed_precision(device):
                kd = distill_loss(supernet(x), teacher)
            kd.backward()
    supernet.set_full()
    optimizer.step()
    return float(ce.detach())


def arch_step(supernet: DMCPSupernet, x, y, optimizer, *, target_macs: float,
              budget_weight: float = 0.1, budget_kind: str = "log_l1", device="cpu") -> dict:
    """One architecture step: ``CE(P-scaled largest net) + budget_weight * budget_loss`` on
    alpha only (weights frozen, BN running statistics untouched)."""
    device = torch.device(device)
    optimizer.zero_grad(set_to_none=True)
    supernet.set_arch()
    with _frozen_bn_stats(supernet.model), _no_weight_grads(supernet.weight_parameters()):
        with mixed_precision(device):
            logits = supernet(x)
        ce = F.cross_entropy(logits.float(), y)
        expected = supernet.expected_macs()
        budget = budget_loss(expected, target_macs, budget_kind)
        loss = ce + budget_weight * budget
        loss.backward()
    optimizer.step()
    supernet.set_full()
    return {"arch_ce": float(ce.detach()), "budget_loss": float(budget.detach()),
            "expected_macs": float(expected.detach())}


def _evaluate_largest(supernet: DMCPSupernet, split, device, batch_size: int = 512) -> float:
    supernet.set_full()
    was_training = supernet.training
    supernet.eval()
    correct, n = 0, 0
    with torch.inference_mode(), mixed_precision(device):
        for x, y in split.batches(batch_size, shuffle=False, augment=False, device=device):
            correct += int((supernet(x).argmax(1) == y).sum())
            n += int(y.shape[0])
    supernet.train(was_training)
    return correct / n if n else float("nan")


@dataclasses.dataclass
class _SupernetRun:
    """One :func:`train_supernet` run: its optimisers, learning-rate schedules and counters."""

    supernet: DMCPSupernet
    w_opt: torch.optim.Optimizer
    a_opt: torch.optim.Optimizer
    rng: np.random.Generator
    device: torch.device
    total_steps: int
    arch_start: int
    lr_weights: float
    lr_arch: float
    target_macs: float
    budget_kind: str
    budget_weight: float
    num_random: int
    step: int = 0
    arch_steps: int = 0
    last_budget: float = float("nan")

    def epoch(self, batches, epoch: int) -> float:
        """Train on every batch; returns the largest net's mean cross-entropy."""
        loss_sum, seen = 0.0, 0
        for x, y in batches:
            ce = self.weight_step(x, y, epoch)
            loss_sum += ce * y.shape[0]
            seen += y.shape[0]
            if self.step >= self.arch_start:
                self.arch_step(x, y)
            self.step += 1
        return loss_sum / max(seen, 1)

    def weight_step(self, x, y, epoch: int) -> float:
        """A sandwich weight step at the cosine learning rate of the current step."""
        lr = 0.5 * self.lr_weights * (1.0 + math.cos(math.pi * self.step / self.total_steps))
        for group in self.w_opt.param_groups:
            group["lr"] = lr
        uniform_prob = 1.0 - self.step / self.total_steps
        widths_list = [self.supernet.smallest_widths()] + \
            [self.supernet.random_widths(self.rng, uniform_prob) for _ in range(self.num_random)]
        ce = weight_step(self.supernet, x, y, self.w_opt, widths_list, device=self.device)
        if not math.isfinite(ce):
            raise FloatingPointError(f"non-finite loss at epoch {epoch} step {self.step}")
        return ce

    def arch_step(self, x, y) -> None:
        """An architecture step at the cosine learning rate of the architecture phase."""
        progress = (self.step - self.arch_start) / max(self.total_steps - self.arch_start, 1)
        for group in self.a_opt.param_groups:
            group["lr"] = 0.5 * self.lr_arch * (1.0 + math.cos(math.pi * progress))
        info = arch_step(self.supernet, x, y, self.a_opt, target_macs=self.target_macs,
                         budget_weight=self.budget_weight, budget_kind=self.budget_kind,
                         device=self.device)
        self.last_budget = info["budget_loss"]
        self.arch_steps += 1

    def metrics(self, epoch: int, train_loss: float) -> dict:
        """The epoch's metrics up to ``val_acc`` and ``seconds``."""
        expected = float(self.supernet.expected_macs().detach())
        return {
            "epoch": epoch,
            "expected_macs": expected,
            "expected_macs_ratio": expected / float(self.supernet.space.full_macs),
            "es_macs": int(self.supernet.space.macs(self.supernet.expected_widths())),
            "train_loss": train_loss,
            "budget_loss": self.last_budget,
            "arch_steps": self.arch_steps,
        }


def train_supernet(supernet: DMCPSupernet, train_split, *, epochs: int, lr_weights: float,
                   lr_arch: float, target_macs: float, batch_size: int = 128, seed: int = 0,
                   device="cpu", on_epoch: Callable[[int, dict], bool | None] | None = None,
                   val_split=None, budget_kind: str = "log_l1", budget_weight: float = 0.1,
                   momentum: float = 0.9, weight_decay: float = 1e-4, num_random: int = 2,
                   augment: bool | None = None) -> dict:
    """Train a DMCP supernet in place (schedule in ALGORITHMS.md item 9).

    The first half of the optimiser steps trains weights only (sandwich rule: largest,
    smallest and ``num_random`` random widths, smaller nets distilling from the largest); the
    second half alternates one weight step and one architecture step. ``target_macs`` is the
    budget T in MACs. ``on_epoch(epoch, metrics)`` (1-based) may return True to stop; metrics:
    ``epoch``, ``expected_macs``, ``expected_macs_ratio`` (of the full network), ``es_macs``,
    ``train_loss`` (largest net CE), ``budget_loss`` and ``arch_steps`` (so far), ``val_acc``
    of the largest net (None without ``val_split``), ``seconds``. Returns the last metrics plus
    ``history``.
    """
    if budget_kind not in BUDGET_LOSSES:
        raise ValueError(f"budget loss must be one of {', '.join(BUDGET_LOSSES)}, got {budget_kind!r}")
    space = supernet.space
    if target_macs < space.macs(supernet.smallest_widths()) or target_macs > space.full_macs:
        raise ValueError(f"target {target_macs:.4g} MACs is outside the supernet's range "
                         f"[{space.macs(supernet.smallest_widths()):.4g}, {space.full_macs:.4g}]")
    device = torch.device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    supernet.to(device)
    supernet.train()
    train_split, val_split, augment, drop_last, total_steps = plan_run(
        train_split, val_split, batch_size, epochs, device, augment)
    run = _SupernetRun(
        supernet=supernet, rng=rng, device=device, total_steps=total_steps,
        arch_start=total_steps // 2, lr_weights=lr_weights, lr_arch=lr_arch, target_macs=target_macs,
        budget_kind=budget_kind, budget_weight=budget_weight, num_random=num_random,
        w_opt=torch.optim.SGD(supernet.weight_parameters(), lr=lr_weights, momentum=momentum,
                              weight_decay=weight_decay),
        a_opt=torch.optim.Adam(supernet.arch_parameters(), lr=lr_arch, weight_decay=0.0))
    history: list[dict] = []
    metrics: dict = {}
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        batches = train_split.batches(batch_size, shuffle=True, augment=augment,
                                      seed=epoch_seed(seed, epoch),
                                      drop_last=drop_last)
        train_loss = run.epoch(batches, epoch)
        metrics = {**run.metrics(epoch, train_loss),
                   "val_acc": None if val_split is None else _evaluate_largest(supernet, val_split, device),
                   "seconds": time.perf_counter() - t0}
        history.append(metrics)
        if on_epoch is not None and on_epoch(epoch, dict(metrics)):
            break
    supernet.set_full()
    return {**metrics, "history": history}
