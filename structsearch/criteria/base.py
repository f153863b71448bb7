"""The criterion protocol and the helpers every criterion shares."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..ranking import criterion_keep  # (also importable from here, its old home)
from ..space import WidthSpace


class Criterion(ABC):
    """Scores every channel of every group; higher means more important."""

    name = "criterion"
    needs_data = False
    # Whether raw scores compare across layers, so that one global threshold may rank them
    # unnormalised (Network Slimming's |gamma| after sparsity training); otherwise the global
    # read-out max-normalises each layer first (L1 and HRank magnitudes differ by layer).
    comparable_across_layers = False
    # Whether a candidate's least-squares reconstruction (surgery.reconstruct) is part of the
    # method by default (He et al.'s), so ``search.reconstruct`` defaults to it.
    reconstructs = False
    # Whether the channels a candidate keeps depend on its own width (see :meth:`select`).
    selects_per_width = False
    # Whether a candidate's channels are chosen on the baseline and data for each candidate
    # (see :meth:`select_on_model`; He et al.'s sequential order).
    selects_on_model = False

    @abstractmethod
    def scores(self, model: nn.Module, space: WidthSpace,
               batches: Iterable | None = None) -> list[np.ndarray]:
        """One score array per group of ``space`` (length = the group's width; higher = keep)."""

    def selection_state(self, model: nn.Module, space: WidthSpace, batches=None):
        """What :meth:`select` needs beyond the scores, computed once on the baseline (None: the
        top-``w`` channels by score are the choice at every width)."""
        return None

    def select(self, state, scores: list[np.ndarray], widths) -> dict[int, np.ndarray]:
        """The channels a candidate of ``widths`` keeps: per group, sorted root indices."""
        return criterion_keep(scores, widths)

    def select_on_model(self, model: nn.Module, space: WidthSpace, widths, batches,
                        scores=None) -> dict[int, np.ndarray]:
        """The channels a candidate keeps, chosen on the baseline ``model`` and ``batches``."""
        raise NotImplementedError(f"{self.name} selects by scores (selects_on_model is False)")

    def params(self) -> dict:
        """The constructor parameters (JSON-able), e.g. for cache keys and run records."""
        return {k: v for k, v in sorted(vars(self).items()) if not k.startswith("_")}


def model_inputs(batches, limit: int | None = None, *, batch_size: int = 128) -> list[torch.Tensor]:
    """The first ``limit`` input batches of ``batches`` as tensors.

    ``batches`` may be an iterable of ``(x, y)`` pairs or of ``x`` tensors, or a data split with
    a ``batches`` method (read in order, without augmentation). Raises ``ValueError`` when there
    is no data, so a data-driven criterion never scores silently on nothing.
    """
    if batches is None:
        raise ValueError("this criterion needs data: pass batches=(a few training batches)")
    if hasattr(batches, "batches") and callable(batches.batches):
        batches = batches.batches(batch_size, shuffle=False, augment=False)
    out = []
    for item in batches:
        if limit is not None and len(out) >= limit:
            break
        x = item[0] if isinstance(item, (tuple, list)) else item
        out.append(x)
    if not out:
        raise ValueError("batches is empty: a data-driven criterion needs at least one batch")
    return out


def per_group(model: nn.Module, space: WidthSpace,
              module_score: Callable[[nn.Module], torch.Tensor | None], *,
              normalize: bool = True) -> list[np.ndarray]:
    """Combine per-module output-channel scores into per-group root-channel scores.

    ``module_score(module)`` returns one score per output channel of that module, or None if the
    module does not score (e.g. a BN for L1). Each member's scores are mapped onto the group's
    root channels (averaged where one root channel spans several module channels), normalised
    by their maximum, and summed. With ``normalize=False`` the raw member scores are averaged
    instead, so their absolute scale survives (Network Slimming's global |gamma| threshold).
    """
    modules = dict(model.named_modules())
    result = []
    for group in space.groups:
        total = np.zeros(group.width)
        scored = 0
        for member in group.members:
            if member.dim != "out":
                continue
            raw = module_score(modules[member.module])
            if raw is None:
                continue
            total += map_member(member, raw, group.width, normalize=normalize)
            scored += 1
        result.append(total if normalize else total / max(scored, 1))
    return result


def map_member(member, raw, width: int, *, normalize: bool = True) -> np.ndarray:
    """One member's per-module-channel scores ``raw`` as scores of the group's ``width`` root
    channels (mean over the module channels of each root channel), optionally divided by their
    largest magnitude."""
    if isinstance(raw, torch.Tensor):
        raw = raw.detach().float().cpu().numpy()
    values = np.asarray(raw, dtype=np.float64)[member.idxs]
    mapped = np.bincount(member.root_idxs, weights=values, minlength=width)
    mapped /= np.maximum(np.bincount(member.root_idxs, minlength=width), 1)
    if normalize:
        peak = np.abs(mapped).max()
        if peak > 0:
            mapped /= peak
    return mapped


def forward_hooked(model: nn.Module, inputs: list[torch.Tensor], handles) -> None:
    """Run ``inputs`` through ``model`` in eval mode without gradients for the hooks behind
    ``handles`` to observe, then remove those hooks and restore the model's mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for x in inputs:
                model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
