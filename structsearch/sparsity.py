"""Sparsity regularisers that plug into :func:`structsearch.train.train` (``regularizer=``).

Both follow the ``Regularizer`` protocol: ``penalty(model)`` is added to the loss and
``after_backward(model)`` edits gradients between ``backward`` and the optimiser step.

- :class:`SlimmingL1` (Liu et al., "Network Slimming", ICCV 2017): adds ``s * sign(gamma)`` to
  the gradient of every BN scale, i.e. the subgradient of ``s * sum |gamma|``. The paper uses
  ``s = 1e-4`` (VGG) and ``1e-5`` (ResNet) over a full 160-epoch schedule; a short run needs a
  proportionally larger ``s`` (the tests use ``2e-2`` for 2 epochs).
- :class:`GroupLasso` (Wen et al., "Learning Structured Sparsity", NIPS 2016):
  ``lambda_n * sum_filters ||W_n||_2 + lambda_c * sum_channels ||W_:,c||_2`` over convs.

After training, ``bn_scale`` / ``group_lasso`` scores read out which channels went to zero and
:func:`structsearch.seeds.propose` (``global`` / ``ssl``) turns them into width vectors.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["SlimmingL1", "GroupLasso"]


def _selected(model: nn.Module, kinds, modules) -> list[tuple[str, nn.Module]]:
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, kinds):
            continue
        if modules is not None and not any(fnmatch.fnmatchcase(name, p) for p in modules):
            continue
        found.append((name, module))
    return found


@dataclass(frozen=True)
class SlimmingL1:
    """L1 on BN scales: ``after_backward`` adds ``s * sign(gamma)`` to each gamma's gradient.

    ``s`` is the L1 strength per unit of |gamma| (dimensionless, added to a loss gradient);
    ``modules`` optionally restricts it to BN layers whose names match these glob patterns.
    """

    s: float = 1e-4
    modules: tuple[str, ...] | None = None

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        # Applied as a gradient edit, so the loss itself (and its logged value) is unchanged.
        return None

    @torch.no_grad()
    def after_backward(self, model: nn.Module) -> None:
        for _, bn in _selected(model, nn.modules.batchnorm._BatchNorm, self.modules):
            if not bn.affine or not bn.weight.requires_grad:
                continue
            step = self.s * torch.sign(bn.weight)
            if bn.weight.grad is None:
                bn.weight.grad = step
            else:
                bn.weight.grad.add_(step)

    def l1(self, model: nn.Module) -> float:
        """``sum |gamma|`` over the selected BN layers (for logging)."""
        bns = _selected(model, nn.modules.batchnorm._BatchNorm, self.modules)
        return float(sum(bn.weight.detach().abs().sum() for _, bn in bns if bn.affine))


def _group_norms(weight: torch.Tensor, dim: int, eps: float) -> torch.Tensor:
    # sqrt(sum w^2 + eps) keeps the gradient finite once a whole group has reached zero.
    other = [d for d in range(weight.dim()) if d != dim]
    return (weight.pow(2).sum(dim=other) + eps).sqrt()


@dataclass(frozen=True)
class GroupLasso:
    """SSL group lasso over conv weights ``W`` (out, in, kh, kw).

    ``lambda_n`` weighs the L2 norms of whole filters ``W[n]`` (removes output channels),
    ``lambda_c`` the norms of input-channel slices ``W[:, c]`` (removes input channels; grouped
    and depthwise convs skip this term, their input slice is the filter itself). ``modules``
    optionally restricts the sum to convs matching these glob patterns; ``include_linear`` adds
    linear layers (rows = output features, columns = input features).
    """

    lambda_n: float = 1e-4
    lambda_c: float = 1e-4
    modules: tuple[str, ...] | None = None
    include_linear: bool = False
    eps: float = 1e-12

    def penalty(self, model: nn.Module) -> torch.Tensor | None:
        kinds = (nn.Conv2d, nn.Linear) if self.include_linear else (nn.Conv2d,)
        total = None
        for _, module in _selected(model, kinds, self.modules):
            w = module.weight
            term = self.lambda_n * _group_norms(w, 0, self.eps).sum()
            if self.lambda_c and getattr(module, "groups", 1) == 1:
                term = term + self.lambda_c * _group_norms(w, 1, self.eps).sum()
            total = term if total is None else total + term
        return total

    def after_backward(self, model: nn.Module) -> None:
        return None


# Network Slimming's s by model family (Liu et al. 2017: 1e-4 for VGG, 1e-5 for ResNet).
SLIMMING_S = {"vgg": 1e-4, "resnet": 1e-5}


def slimming_s(model_name: str | None) -> float:
    """The paper's ``s`` for ``model_name``'s family (VGG 1e-4, ResNet 1e-5; else 1e-4)."""
    name = (model_name or "").lower()
    return next((s for family, s in SLIMMING_S.items() if family in name), SlimmingL1.s)


def regularizer(params: dict | None, model_name: str | None = None):
    """The regulariser ``baseline.sparsity`` asks for (``kind: slimming | group_lasso`` plus its
    parameters; ``epochs`` is the training stage's, not the regulariser's), or None. Slimming
    without ``s`` takes the paper's value for ``model_name``'s family."""
    params = {k: v for k, v in (params or {}).items() if k != "epochs"}
    kind = params.pop("kind", None)
    if kind is None:
        return None
    if "modules" in params:
        params["modules"] = tuple(params["modules"])
    if kind == "slimming":
        params.setdefault("s", slimming_s(model_name))
        return SlimmingL1(**params)
    return GroupLasso(**params)
