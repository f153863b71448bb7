"""Sparsity regularisers: the Slimming L1 on BN scales and SSL group lasso, and the global
threshold read-out that turns a slimmed model into a width vector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from structsearch import WidthSpace, criteria, models, seeds
from structsearch.data import DataSpec, load
from structsearch.sparsity import GroupLasso, SlimmingL1
from structsearch.train import TrainSpec, train

# Slimming strength for this 2-epoch run. The paper's 1e-4 acts over 160 epochs; here gamma can
# move at most lr * s * steps = 0.1 * 1e-2 * 224 ~ 0.22 by the L1 term alone, enough to push the
# unneeded scales (initialised at 1) towards 0 while the useful ones are held up by the loss.
SLIMMING_S = 1e-2
NEAR_ZERO = 0.1  # |gamma| below a tenth of its initial value


def bn_gammas(model):
    return torch.cat([m.weight.detach().abs() for m in model.modules()
                      if isinstance(m, nn.BatchNorm2d)]).numpy()


@pytest.fixture(scope="module")
def trained():
    """small_cnn (half width) trained 2 epochs on mnist5k without and with Slimming."""
    splits = load(DataSpec(name="mnist5k"))
    spec = TrainSpec(epochs=2, lr=0.1, batch_size=32)
    result = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # this small model trains faster on one thread of a shared CPU
    try:
        for s in (0.0, SLIMMING_S):
            torch.manual_seed(0)
            model = models.build("small_cnn", num_classes=10, in_channels=1, width_mult=0.5)
            train(model, splits.train, spec, seed=0, regularizer=SlimmingL1(s=s) if s else None)
            result[s] = model.eval()
    finally:
        torch.set_num_threads(threads)
    return result


def test_slimming_drives_many_more_gammas_to_zero(trained):
    plain = (bn_gammas(trained[0.0]) < NEAR_ZERO).mean()
    slim = (bn_gammas(trained[SLIMMING_S]) < NEAR_ZERO).mean()
    assert slim >= 0.1
    assert slim >= 10 * max(plain, 1 / len(bn_gammas(trained[0.0])))


def one_channel_macs(space, widths):
    """Largest MACs added by one more channel in any group that can still grow."""
    steps = []
    for g in range(len(widths)):
        if widths[g] < space.upper[g]:
            bigger = widths.copy()
            bigger[g] += 1
            steps.append(space.macs(bigger) - space.macs(widths))
    return max(steps)


@pytest.mark.parametrize("normalize", ["max", "none"])
def test_global_readout_hits_the_budget_above_the_floor(trained, normalize):
    model = trained[SLIMMING_S]
    space = WidthSpace.from_model(model, (1, 28, 28))
    target = 0.5 * space.full_macs
    crit = criteria.get("bn_scale", normalize=normalize == "max")
    widths = seeds.propose("global", model, space, limit=target, criterion=crit, normalize=normalize)
    space.validate(widths)
    assert (widths >= space.lower).all()
    macs = space.macs(widths)
    assert macs <= target
    assert target - macs <= one_channel_macs(space, widths)
    # The read-out follows the scores: in every group it keeps the channels above the threshold.
    scores = crit.scores(model, space)
    kept = criteria.criterion_keep(scores, widths)
    for g, s in enumerate(scores):
        dropped = np.setdiff1d(np.arange(len(s)), kept[g])
        if len(dropped) and widths[g] > space.lower[g]:
            assert s[kept[g]].min() >= s[dropped].max()


def test_global_readout_at_a_budget_that_forces_the_floor(trained):
    model = trained[SLIMMING_S]
    space = WidthSpace.from_model(model, (1, 28, 28))
    widths = seeds.propose("global", model, space, limit=space.min_macs, criterion="bn_scale")
    np.testing.assert_array_equal(widths, space.lower)


def test_slimming_adds_s_sign_gamma_to_the_gradient():
    bn = nn.BatchNorm2d(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), bn)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -2.0, 0.0]))
    model(torch.randn(2, 1, 4, 4)).sum().backward()
    before = bn.weight.grad.clone()
    SlimmingL1(s=0.3).after_backward(model)
    np.testing.assert_allclose((bn.weight.grad - before).numpy(), [0.3, -0.3, 0.0])
    assert SlimmingL1().penalty(model) is None


def test_group_lasso_penalty_matches_filter_and_channel_norms():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0  # filter 0 / channel 0: nine ones, norm 3
        conv.weight[2, 1] = 2.0  # filter 2 / channel 1: nine twos, norm 6
    reg = GroupLasso(lambda_n=0.1, lambda_c=0.01, eps=0.0)
    expected = 0.1 * (3 + 6) + 0.01 * (3 + 6)
    assert reg.penalty(nn.Sequential(conv)).item() == pytest.approx(expected, rel=1e-6)
    # Zero groups (filter 1 here) keep a finite gradient with the default eps.
    penalty = GroupLasso(lambda_n=0.1, lambda_c=0.01).penalty(nn.Sequential(conv))
    penalty.backward()
    assert torch.isfinite(conv.weight.grad).all()
    np.testing.assert_allclose(conv.weight.grad[1].numpy(), 0.0)


def test_group_lasso_training_shrinks_filter_norms():
    split = load(DataSpec(name="digits")).train
    mean_norm = {}
    for lam in (0.0, 5e-2):
        torch.manual_seed(0)
        model = models.build("small_cnn", num_classes=10, in_channels=1, width_mult=0.25)
        space = WidthSpace.from_model(model, (1, 8, 8))
        train(model, split, TrainSpec(epochs=2, lr=0.05, batch_size=64, weight_decay=0.0), seed=0,
              regularizer=GroupLasso(lambda_n=lam, lambda_c=lam) if lam else None)
        norms = criteria.get("group_lasso", normalize=False).scores(model, space)
        mean_norm[lam] = np.concatenate(norms).mean()
    assert mean_norm[5e-2] < 0.6 * mean_norm[0.0]


def _gammas_at_scales(scales):
    """small_cnn with every group's BN gammas spread evenly over [0.1, 1] x its scale (what
    sparsity training leaves when some layers matter less than others)."""
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    space = WidthSpace.from_model(model, (1, 28, 28))
    modules = dict(model.named_modules())
    with torch.no_grad():
        for group, scale in zip(space.groups, scales):
            for m in group.members:
                if isinstance(modules[m.module], nn.BatchNorm2d):
                    modules[m.module].weight.copy_(scale * torch.linspace(0.1, 1.0, group.width))
    return model, space


def test_slimming_readout_is_one_raw_threshold_on_gamma():
    """Network Slimming: gammas of different scales in two layers. The raw global threshold
    (the default for bn_scale) prunes the small-gamma layer harder; per-layer normalisation
    (right for L1 / HRank, whose magnitudes are not comparable) would prune both alike."""
    scales = [1.0, 0.01, 1.0, 1.0]
    model, space = _gammas_at_scales(scales)
    limit = 0.6 * space.full_macs
    raw = seeds.propose("global", model, space, limit=limit, criterion="bn_scale")
    normalised = seeds.propose("global", model, space, limit=limit,
                               criterion=criteria.get("bn_scale", normalize=True), normalize="max")
    frac_raw = raw / np.asarray(space.full_widths)
    frac_norm = normalised / np.asarray(space.full_widths)
    # Every small gamma ranks below every other: the small-gamma layer alone pays the budget.
    assert [raw[g] for g in (0, 2, 3)] == [space.full_widths[g] for g in (0, 2, 3)]
    assert raw[1] < space.full_widths[1]
    assert frac_raw[1] < frac_raw[0] - 0.4 and frac_raw[1] < frac_raw[2] - 0.4
    assert abs(frac_norm[1] - frac_norm[0]) <= 0.1, "normalised, the two layers look alike"
    assert space.macs(raw) <= limit and space.macs(normalised) <= limit
    assert criteria.global_readout("bn_scale") == ({"normalize": False}, "none")
    assert criteria.global_readout("l1") == ({}, "max")


def test_slimming_s_defaults_by_model_family():
    from structsearch.sparsity import regularizer
    assert regularizer({"kind": "slimming"}, "cifar_vgg16").s == 1e-4
    assert regularizer({"kind": "slimming"}, "cifar_resnet56").s == 1e-5
    assert regularizer({"kind": "slimming"}, "torchvision:resnet50").s == 1e-5
    assert regularizer({"kind": "slimming", "s": 3e-3, "epochs": 2}, "cifar_resnet56").s == 3e-3
    assert regularizer({}, "cifar_vgg16") is None


def test_sparsity_training_on_a_loaded_checkpoint(tmp_path):
    """A user's trained baseline (model.checkpoint) gets baseline.sparsity.epochs of sparsity
    training with the regulariser, and the gammas shrink."""
    from minis import digits_run
    from structsearch import config as C
    from structsearch.commands import run_baseline
    from structsearch.surgery import load_state_dict_file

    plain = run_baseline(C.from_dict(digits_run(baseline={"epochs": 1})), out=str(tmp_path / "a"))
    before = load_state_dict_file(plain / "baseline" / "weights.pt")
    cfg = digits_run(baseline={"epochs": 1, "sparsity": {"kind": "slimming", "s": 0.05, "epochs": 2}})
    cfg["model"]["checkpoint"] = str(plain / "baseline" / "weights.pt")
    run = run_baseline(C.from_dict(cfg), out=str(tmp_path / "b"))
    metrics = json.loads((run / "baseline" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["source"] == cfg["model"]["checkpoint"]
    after = load_state_dict_file(run / "baseline" / "weights.pt")
    gammas = [k for k in before if k.endswith(".weight") and before[k].ndim == 1
              and k.replace(".weight", ".running_mean") in before]
    assert gammas
    l1_before = sum(before[k].abs().sum().item() for k in gammas)
    l1_after = sum(after[k].abs().sum().item() for k in gammas)
    assert l1_after < 0.9 * l1_before, (l1_before, l1_after)
    assert metrics["val_acc"] > 0.3
