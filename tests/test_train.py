"""Training engine on CPU: learning, determinism, schedules, hooks and failure modes."""

from __future__ import annotations

import math

import pytest
import torch

from structsearch import data, models
from structsearch.train import SGD, TrainSpec, evaluate, lr_factor, train

METRIC_KEYS = {"epoch", "train_loss", "train_acc", "val_acc", "val_loss", "images_per_s", "seconds"}


@pytest.fixture(autouse=True)
def _two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits():
    return data.load(data.DataSpec(name="digits"))


def _small_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build("small_cnn", num_classes=10, in_channels=1)


def test_small_cnn_reaches_90_percent_on_mnist5k_in_two_epochs():
    splits = data.load(data.DataSpec(name="mnist5k"))
    model = _small_cnn()
    seen = []
    result = train(
        model,
        splits.train,
        TrainSpec(epochs=2, lr=0.2, batch_size=32, schedule="cosine"),
        val_split=splits.val,
        on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)),
    )
    assert result["val_acc"] >= 0.90
    assert [epoch for epoch, _ in seen] == [1, 2]
    assert set(result) == METRIC_KEYS | {"history"} and len(result["history"]) == 2
    assert all(set(metrics) == METRIC_KEYS for _, metrics in seen)
    assert result["images_per_s"] > 0 and result["seconds"] > 0
    assert result["history"][1]["train_loss"] < result["history"][0]["train_loss"]
    # The reported val accuracy is what evaluate() measures on the trained model.
    assert evaluate(model, splits.val)["top1"] == pytest.approx(result["val_acc"])


def _train_digits(digits, seed: int):
    model = _small_cnn(0)
    result = train(
        model,
        digits.train,
        TrainSpec(epochs=1, lr=0.1, batch_size=64),
        val_split=digits.val,
        seed=seed,
    )
    return result, model.state_dict()


def test_same_seed_is_bit_identical_on_cpu(digits):
    first, weights_a = _train_digits(digits, seed=4)
    second, weights_b = _train_digits(digits, seed=4)
    other, weights_c = _train_digits(digits, seed=5)
    assert first["val_acc"] == second["val_acc"] and first["train_loss"] == second["train_loss"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # A different seed reshuffles the batches, so the weights must move.
    assert not all(torch.equal(weights_a[k], weights_c[k]) for k in weights_a)


def test_evaluate_counts_every_example_and_restores_mode(digits):
    model = _small_cnn()
    model.train()
    result = evaluate(model, digits.test, batch_size=100)
    assert result["n"] == len(digits.test)
    assert 0.0 <= result["top1"] <= 1.0 and math.isfinite(result["loss"])
    assert model.training


class _NanPenalty:
    def penalty(self, model):
        return torch.tensor(float("nan"))

    def after_backward(self, model):
        pass


def test_non_finite_loss_raises(digits):
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1 step 0"):
        train(_small_cnn(), digits.train, TrainSpec(epochs=1), regularizer=_NanPenalty())
    # BN absorbs merely large steps; 1e20 overflows the logits after the first update.
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1 step 1"):
        train(_small_cnn(), digits.train, TrainSpec(epochs=1, lr=1e20, weight_decay=0))


class _CountingL1:
    """BN-L1-style hook: records calls and pushes BN scales towards zero."""

    def __init__(self, strength: float) -> None:
        self.strength = strength
        self.penalties = 0
        self.backwards = 0

    def penalty(self, model):
        self.penalties += 1
        return None

    def after_backward(self, model):
        self.backwards += 1
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.grad.add_(self.strength * torch.sign(module.weight.detach()))


def test_regularizer_hooks_run_every_step_and_shrink_bn_scales(digits):
    spec = TrainSpec(epochs=1, lr=0.05, batch_size=128, weight_decay=0)
    steps = len(digits.train) // spec.batch_size

    def bn_l1(model):
        scales = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        return sum(float(w.abs().sum()) for w in scales)

    plain = _small_cnn()
    train(plain, digits.train, spec, regularizer=_CountingL1(0.0))
    hook = _CountingL1(0.5)
    sparse = _small_cnn()
    train(sparse, digits.train, spec, regularizer=hook)
    assert hook.penalties == hook.backwards == steps
    assert bn_l1(sparse) < 0.8 * bn_l1(plain)


def test_on_epoch_can_stop_early_and_zero_epochs_only_evaluates(digits):
    result = train(
        _small_cnn(),
        digits.train,
        TrainSpec(epochs=3, batch_size=256),
        on_epoch=lambda epoch, metrics: epoch >= 1,
    )
    assert len(result["history"]) == 1 and result["epoch"] == 1 and result["val_acc"] is None

    untouched = _small_cnn()
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    result = train(untouched, digits.train, TrainSpec(epochs=0), val_split=digits.val)
    assert result["history"] == [] and 0.0 <= result["val_acc"] <= 1.0
    assert all(torch.equal(before[k], v) for k, v in untouched.state_dict().items())


def test_lr_schedules():
    cosine = TrainSpec(epochs=10)
    assert lr_factor(cosine, 0, 100) == 1.0
    assert lr_factor(cosine, 50, 100) == pytest.approx(0.5)
    assert lr_factor(cosine, 99, 100) < 0.01

    multistep = TrainSpec(epochs=10, schedule="multistep", milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(multistep, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )

    warm = TrainSpec(epochs=10, warmup_epochs=2)
    assert lr_factor(warm, 0, 100) == pytest.approx(0.05)
    assert lr_factor(warm, 19, 100) == pytest.approx(1.0)
    assert lr_factor(warm, 20, 100) == pytest.approx(1.0)
    assert lr_factor(warm, 60, 100) == pytest.approx(0.5)

    assert lr_factor(TrainSpec(epochs=3, schedule="constant"), 77, 100) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        TrainSpec(epochs=1, schedule="linear")


@pytest.mark.parametrize("momentum,nesterov,weight_decay", [(0.9, True, 5e-4), (0.9, False, 1e-4), (0.0, False, 0.0)])
def test_sgd_matches_torch_optim_sgd_bit_for_bit(momentum, nesterov, weight_decay):
    # Our SGD skips torch's Optimizer class (its first use imports torch._dynamo, ~1.7 s per
    # trial process) but must be the same update, including a parameter without a gradient.
    torch.manual_seed(0)
    ours, ref = (models.build("small_cnn", num_classes=10, in_channels=1) for _ in range(2))
    ref.load_state_dict(ours.state_dict())
    frozen = [m for m in ours.modules() if isinstance(m, torch.nn.Linear)][0]
    opt = SGD(ours.parameters(), momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=momentum, nesterov=nesterov,
                              weight_decay=weight_decay)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for step, lr in enumerate([0.1, 0.05, 0.02]):
        for model in (ours, ref):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        if step == 1:  # one parameter gets no gradient this step: both must skip it
            frozen.weight.grad = None
            [m for m in ref.modules() if isinstance(m, torch.nn.Linear)][0].weight.grad = None
        for group in ref_opt.param_groups:
            group["lr"] = lr
        opt.step(lr)
        ref_opt.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert sum(b is not None for b in opt.buffers) == (len(opt.params) if momentum else 0)
