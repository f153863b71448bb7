"""Training and evaluation loops shared by every trainable.

SGD with a per-iteration learning-rate schedule, optional sparsity regulariser, label
smoothing, and an ``on_epoch`` hook. On CUDA the loop uses bf16 autocast, channels_last and
cuDNN autotuning; on CPU it stays fp32 and deterministic (same seed, same thread count ->
bit-identical weights). Metrics accumulate on the device and are read once per epoch, so the
host never waits on the accelerator inside an epoch except for the periodic finite-loss check.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.sgd import sgd as _sgd_update

__all__ = ["Regularizer", "SGD", "TrainSpec", "evaluate", "lr_factor", "plan_run", "train"]


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation recipe.

    ``lr`` is the peak learning rate; ``schedule`` is ``cosine`` (to 0 over all steps),
    ``multistep`` (times ``gamma`` at each ``milestones`` fraction of the epochs) or
    ``constant``; ``warmup_epochs`` (may be fractional) ramps linearly from 0 to ``lr``.
    """

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    batch_size: int = 128
    warmup_epochs: float = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "multistep", "constant"):
            raise ValueError(
                f"schedule must be cosine, multistep or constant, got {self.schedule!r}"
            )
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(
                f"need epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}"
            )
        if any(not 0.0 <= m <= 1.0 for m in self.milestones):
            raise ValueError(
                f"milestones are fractions of the epochs in [0, 1], got {self.milestones}"
            )


class Regularizer(Protocol):
    """Sparsity hook: ``penalty`` is added to the loss, ``after_backward`` edits gradients."""

    def penalty(self, model: nn.Module) -> torch.Tensor | None: ...

    def after_backward(self, model: nn.Module) -> None: ...


def lr_factor(spec: TrainSpec, step: int, total_steps: int) -> float:
    """Multiplier in [0, 1] of ``spec.lr`` at optimiser step ``step`` of ``total_steps``."""
    steps_per_epoch = total_steps / max(spec.epochs, 1)
    warmup = spec.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    if spec.schedule == "constant":
        return 1.0
    if spec.schedule == "multistep":
        epoch = step / steps_per_epoch
        passed = sum(epoch >= m * spec.epochs for m in spec.milestones)
        return spec.gamma**passed
    span = max(total_steps - warmup, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))


def epoch_seed(seed: int, epoch: int) -> int:
    """Shuffle/augmentation seed of ``epoch`` in a run seeded with ``seed`` (every loop here)."""
    # Independent, reproducible stream per epoch without correlated neighbouring seeds.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def mixed_precision(device: torch.device):
    """Autocast context of every forward pass here: bf16 on CUDA, plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(model: nn.Module, split, *, batch_size: int = 512, device="cpu") -> dict:
    """Top-1 accuracy in [0, 1], mean cross-entropy loss and example count ``n`` of ``split``."""
    device = torch.device(device)
    _prepare(model, device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n = 0
    with torch.inference_mode(), mixed_precision(device):
        for x, y in split.batches(batch_size, shuffle=False, augment=False, device=device):
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x).float()
            loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            n += y.shape[0]
    model.train(was_training)
    if n == 0:
        return {"top1": float("nan"), "loss": float("nan"), "n": 0}
    return {"top1": correct.item() / n, "loss": loss_sum.item() / n, "n": n}


def train(
    model: nn.Module,
    train_split,
    spec: TrainSpec,
    *,
    val_split=None,
    device="cpu",
    seed: int = 0,
    regularizer: Regularizer | None = None,
    on_epoch: Callable[[int, dict], bool | None] | None = None,
    augment: bool | None = None,
) -> dict:
    """Train ``model`` in place with SGD for ``spec.epochs`` epochs and return final metrics.

    Metrics per epoch (passed to ``on_epoch(epoch, metrics)``, 1-based epoch): ``epoch``,
    ``train_loss`` (cross-entropy, without the regulariser), ``train_acc`` in [0, 1],
    ``val_acc`` / ``val_loss`` (None without ``val_split``), ``images_per_s`` (training
    phase only) and ``seconds`` (whole epoch, evaluation included). ``on_epoch`` returning
    True stops training early. The result adds ``history``, the list of all epochs' metrics.
    ``augment=None`` uses the split's default. Raises ``FloatingPointError`` on a
    non-finite loss.
    """
    device = torch.device(device)
    torch.manual_seed(seed)
    _prepare(model, device)
    train_split, val_split, augment, drop_last, total_steps = plan_run(
        train_split, val_split, spec.batch_size, spec.epochs, device, augment)
    loop = _Loop(
        model=model,
        optimizer=SGD(model.parameters(), momentum=spec.momentum, nesterov=spec.nesterov,
                      weight_decay=spec.weight_decay),
        criterion=nn.CrossEntropyLoss(label_smoothing=spec.label_smoothing),
        regularizer=regularizer, spec=spec, total_steps=total_steps, device=device)

    history: list[dict] = []
    metrics = _empty_metrics()
    step = 0
    for epoch in range(1, spec.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        batches = train_split.batches(spec.batch_size, shuffle=True, augment=augment,
                                      seed=epoch_seed(seed, epoch), drop_last=drop_last)
        loss_sum, correct, seen, step = loop.epoch(batches, epoch, step)
        _sync(device)
        metrics = _train_metrics(epoch, loss_sum, correct, seen, time.perf_counter() - t0)
        _add_val_metrics(metrics, model, val_split, device)
        metrics["seconds"] = time.perf_counter() - t0
        history.append(metrics)
        if on_epoch is not None and on_epoch(epoch, dict(metrics)):
            break

    if not history:
        _add_val_metrics(metrics, model, val_split, device)
    return {**metrics, "history": history}


@dataclass
class _Loop:
    """What stays fixed across the optimiser steps of one ``train`` call."""

    model: nn.Module
    optimizer: SGD
    criterion: nn.Module
    regularizer: Regularizer | None
    spec: TrainSpec
    total_steps: int
    device: torch.device

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int):
        """One SGD update at global step ``step``; returns the detached total loss, data loss
        (without the regulariser) and logits."""
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with mixed_precision(self.device):
            logits = self.model(x)
            data_loss = self.criterion(logits, y)
        loss = data_loss
        if self.regularizer is not None:
            penalty = self.regularizer.penalty(self.model)
            if penalty is not None:
                loss = loss + penalty
        self.optimizer.zero_grad()
        loss.backward()
        if self.regularizer is not None:
            self.regularizer.after_backward(self.model)
        self.optimizer.step(self.spec.lr * lr_factor(self.spec, step, self.total_steps))
        return loss.detach(), data_loss.detach(), logits.detach()

    def epoch(self, batches, epoch: int, step: int):
        """Train on every batch; returns the summed data loss and correct count (device
        tensors, so the host never waits mid-epoch), examples seen and the next global step."""
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        nonfinite = torch.zeros((), device=self.device, dtype=torch.bool)
        # A host read of the loss stalls a GPU pipeline, so CUDA checks finiteness in strides;
        # on CPU the value is already computed and the check is free.
        check_every = 1 if self.device.type == "cpu" else 50
        seen = 0
        for i, (x, y) in enumerate(batches):
            loss, data_loss, logits = self.step(x, y, step)
            nonfinite |= ~torch.isfinite(loss)
            if (i + 1) % check_every == 0 and nonfinite.item():
                raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step}")
            loss_sum += data_loss * y.shape[0]
            correct += (logits.argmax(1) == y).sum()
            seen += y.shape[0]
            step += 1
        if nonfinite.item():
            raise FloatingPointError(f"non-finite loss at epoch {epoch} step {step - 1}")
        return loss_sum, correct, seen, step


def _train_metrics(epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int,
                   train_seconds: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": loss_sum.item() / max(seen, 1),
        "train_acc": correct.item() / max(seen, 1),
        "val_acc": None,
        "val_loss": None,
        "images_per_s": seen / train_seconds if train_seconds > 0 else float("nan"),
        "seconds": 0.0,
    }


def _add_val_metrics(metrics: dict, model: nn.Module, val_split, device: torch.device) -> None:
    if val_split is not None:
        result = evaluate(model, val_split, device=device)
        metrics["val_acc"], metrics["val_loss"] = result["top1"], result["loss"]


def plan_run(train_split, val_split, batch_size: int, epochs: int, device, augment: bool | None):
    """What every training loop here starts with: the splits on ``device``, the augmentation
    (``None``: the split's default), whether to drop the last partial batch (only when one full
    batch exists) and the total number of optimiser steps (at least 1)."""
    train_split = train_split.to(device)
    if val_split is not None:
        val_split = val_split.to(device)
    if augment is None:
        augment = bool(getattr(train_split, "augment_default", False))
    n = len(train_split)
    drop_last = n >= batch_size
    steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
    return train_split, val_split, augment, drop_last, max(steps_per_epoch * epochs, 1)


class SGD:
    """The update of ``torch.optim.SGD`` (its functional form, so results are bit-identical),
    without the ``torch.optim.Optimizer`` base class.

    Constructing or stepping a torch ``Optimizer`` imports ``torch._dynamo`` on first use, about
    1.7 s of CPU per process. Every fresh Ray trial worker would pay it before its first step;
    with short candidate trials that is a measurable share of a search (benchmarks/trial_overhead.py).
    """

    def __init__(self, params, *, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.params = [p for p in params if p.requires_grad]
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: float) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        buffers = [self.buffers[i] for i in live]
        _sgd_update([self.params[i] for i in live], [self.params[i].grad for i in live], buffers,
                    weight_decay=self.weight_decay, momentum=self.momentum, lr=lr, dampening=0.0,
                    nesterov=self.nesterov, maximize=False)
        if self.momentum:
            for i, buf in zip(live, buffers):
                self.buffers[i] = buf


def _empty_metrics() -> dict:
    return {
        "epoch": 0,
        "train_loss": None,
        "train_acc": None,
        "val_acc": None,
        "val_loss": None,
        "images_per_s": None,
        "seconds": 0.0,
    }


@torch.no_grad()
def recalibrate_bn(model: nn.Module, split, *, batches: int = 50, batch_size: int = 128,
                   device="cpu", seed: int = 0) -> nn.Module:
    """Adaptive BN (EagleEye, Li et al. 2020): re-estimate every BN layer's running statistics
    on ``batches`` training batches with no gradient step, so a freshly pruned network can be
    ranked by validation accuracy without training. Returns ``model`` (modified in place)."""
    device = torch.device(device)
    model.to(device)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    for i, (x, _) in enumerate(split.batches(batch_size, shuffle=True, augment=False, seed=seed,
                                             device=device)):
        if i >= batches:
            break
        model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()
    return model
