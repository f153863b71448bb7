"""WidthSpace: group discovery on residual / depthwise / concatenating models, grids, validation,
budget projection, sampling and the closed-form cost against published figures."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from structsearch import WidthError, WidthSpace, models, prune


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def space_of(name: str, size: int, round_to: int = 1, min_ratio: float = 0.1) -> WidthSpace:
    torch.manual_seed(0)
    model = models.build(name, num_classes=10)
    return WidthSpace.from_model(model, (3, size, size), round_to=round_to, min_ratio=min_ratio)


def group_with(space: WidthSpace, module: str, dim: str = "out"):
    found = [g for g in space.groups if any(m.module == module and m.dim == dim for m in g.members)]
    assert len(found) == 1, f"{module} ({dim}) is in {len(found)} groups"
    return found[0]


def out_members(group) -> set[str]:
    return {m.module for m in group.members if m.dim == "out"}


class TwoBranchCat(nn.Module):
    """stem -> (branch a, branch b) -> cat -> conv -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.b = nn.Conv2d(8, 10, 1, bias=False)
        self.c = nn.Conv2d(16, 12, 3, padding=1, bias=False)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)
        return self.fc(self.c(x).mean(dim=(2, 3)))


# ---------------------------------------------------------------- group discovery


def test_cifar_resnet56_stage_groups_span_every_block():
    space = space_of("cifar_resnet56", 32)
    # 27 block-inner widths + 3 residual stages; the classifier output is never searchable.
    assert len(space) == 30
    assert sorted(space.full_widths)[-3:] == [64, 64, 64]
    for stage, width in [(1, 16), (2, 32), (3, 64)]:
        group = group_with(space, f"layer{stage}.0.conv2")
        convs = {m for m in out_members(group) if m.endswith("conv2")}
        assert convs == {f"layer{stage}.{i}.conv2" for i in range(9)}
        assert group.width == width
        # The next stage's first block reads this width through conv1 and the option-A shortcut.
        if stage < 3:
            ins = {m.module for m in group.members if m.dim == "in"}
            assert {f"layer{stage + 1}.0.conv1", f"layer{stage + 1}.0.shortcut"} <= ins
        if stage > 1:  # the padding shortcut writes into this stage's channels
            assert f"layer{stage}.0.shortcut" in out_members(group)
    assert "conv1" in out_members(group_with(space, "layer1.0.conv2"))
    inner = group_with(space, "layer2.3.conv1")
    assert out_members(inner) == {"layer2.3.conv1", "layer2.3.bn1"}
    assert inner.width == 32


def test_torchvision_resnet50_downsample_shares_the_block_output_group():
    space = space_of("torchvision:resnet50", 64)
    group = group_with(space, "layer1.0.conv3")
    assert {"layer1.0.downsample.0", "layer1.0.conv3", "layer1.1.conv3",
            "layer1.2.conv3"} <= out_members(group)
    assert group.width == 256
    assert group_with(space, "layer1.0.downsample.0") is group
    # stem + 16 bottlenecks x 2 inner widths + 4 stage widths
    assert len(space) == 37
    assert "fc" not in {m.module for g in space.groups for m in g.members if m.dim == "out"}


@pytest.mark.parametrize("name", ["torchvision:mobilenet_v2", "cifar_mobilenet_v2"])
def test_mobilenet_v2_depthwise_conv_follows_its_producer(name):
    space = space_of(name, 64 if name.startswith("torchvision") else 32)
    expand = group_with(space, "features.2.conv.0.0")
    assert "features.2.conv.1.0" in out_members(expand)  # the depthwise 3x3
    assert expand.width == 96
    stem = group_with(space, "features.0.0")  # block 1 has no expansion: depthwise on the stem
    assert "features.1.conv.0.0" in out_members(stem)
    assert stem.width == 32
    for group in space.groups:  # no group ever holds a depthwise conv without its producer
        dw = [m for m in out_members(group) if m.endswith("conv.1.0")]
        assert not dw or len(out_members(group)) > 2


def test_concatenation_splits_the_consumer_input():
    torch.manual_seed(0)
    space = WidthSpace.from_model(TwoBranchCat(), (3, 10, 10))
    assert space.full_widths == [8, 6, 10, 12]
    c_in = {g.name: [m for m in g.members if (m.module, m.dim) == ("c", "in")]
            for g in space.groups}
    assert list(c_in["a"][0].idxs) == list(range(6))
    assert list(c_in["b"][0].idxs) == list(range(6, 16))
    assert list(c_in["b"][0].root_idxs) == list(range(10))
    w = [5, 3, 4, 7]
    # stem 3->5 + a 5->3 (3x3) + b 5->4 (1x1) + c (3+4)->7 (3x3) on 10x10, then fc 7->5
    expected = 100 * (9 * 3 * 5 + 9 * 5 * 3 + 5 * 4 + 9 * 7 * 7) + 7 * 5
    assert space.macs(w) == expected
    params = 9 * 3 * 5 + 5 + 9 * 5 * 3 + 5 * 4 + 9 * 7 * 7 + 7 * 5 + 5
    assert space.params(w) == params


def test_concatenation_prunes_the_right_consumer_columns():
    torch.manual_seed(0)
    model = TwoBranchCat().eval()
    space = WidthSpace.from_model(model, (3, 10, 10))
    keep = {"a": [1, 4, 5], "b": [0, 2, 7, 9]}
    pruned = prune(model, space, [5, 3, 4, 7], keep=keep)
    assert sum(p.numel() for p in pruned.parameters()) == space.params([5, 3, 4, 7])
    columns = [1, 4, 5] + [6 + i for i in (0, 2, 7, 9)]
    assert torch.equal(pruned.c.weight, model.c.weight[:7][:, columns])
    assert torch.equal(pruned.a.weight, model.a.weight[[1, 4, 5], :5])
    assert torch.equal(pruned.b.weight, model.b.weight[[0, 2, 7, 9], :5])
    # Zero everything the pruned model drops: the full model then computes the same function.
    with torch.no_grad():
        model.stem.weight[5:] = 0
        model.stem.bias[5:] = 0
        model.a.weight[[0, 2, 3]] = 0
        model.b.weight[[1, 3, 4, 5, 6, 8]] = 0
        model.fc.weight[:, 7:] = 0
        x = torch.randn(3, 3, 10, 10)
        torch.testing.assert_close(prune(model, space, [5, 3, 4, 7], keep=keep)(x), model(x),
                                   rtol=0, atol=1e-5)


def test_tracing_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = models.build("cifar_resnet20").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    WidthSpace.from_model(model, (3, 32, 32))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ignore_freezes_groups_produced_by_matching_layers():
    model = models.build("cifar_resnet20")
    space = WidthSpace.from_model(model, (3, 32, 32), ignore=("layer1.0.conv1", "layer3.*"))
    reasons = dict(space.skipped)
    assert reasons["layer1.0.conv1"] == "ignored by 'layer1.0.conv1'"
    # layer1.0.conv1 only reads the stage-1 residual width: that group stays searchable.
    assert "conv1..layer1.2.conv2 (4 layers)" in space.names
    # Every group produced inside stage 3 (its inner convs and its residual stream) is frozen.
    assert not any(name.startswith("layer3.") for name in space.names)
    assert "layer2.0.conv2..layer2.2.conv2 (3 layers)" in space.names
    assert len(space) == 12 - 4 - 1
    assert space.full_macs == space_of("cifar_resnet20", 32).full_macs


# ---------------------------------------------------------------- published figures


def test_cifar_resnet56_full_cost_matches_the_paper():
    space = space_of("cifar_resnet56", 32)
    assert space.full_macs == 125_485_696  # 125.49M, He et al. / HRank tables
    assert space.params(space.full_widths) == 853_018


def test_torchvision_resnet50_full_cost_at_224():
    # The one 224x224 trace of the suite (a few seconds).
    model = models.build("torchvision:resnet50", num_classes=1000)
    space = WidthSpace.from_model(model, (3, 224, 224))
    assert round(space.full_macs / 1e9, 2) == 4.09  # torchvision's published 4.09 GFLOPS
    assert space.full_macs == 4_089_184_256  # what fvcore and thop count for this network
    assert space.params(space.full_widths) == 25_557_032  # torchvision's published count


# ---------------------------------------------------------------- grids and vectors


def test_round_to_grids_keep_the_full_width():
    space = space_of("torchvision:resnet50", 64, round_to=8)
    for i, group in enumerate(space.groups):
        grid = space.grid(i)
        assert grid[-1] == group.width
        assert np.all(grid[:-1] % 8 == 0) and np.all(np.diff(grid) > 0)
        assert grid[0] >= 0.1 * group.width
    assert list(space.grid(space.names.index("conv1"))) == [8, 16, 24, 32, 40, 48, 56, 64]

    odd = nn.Sequential(nn.Conv2d(3, 20, 3), nn.ReLU(), nn.Conv2d(20, 4, 1))
    s = WidthSpace.from_model(odd, (3, 8, 8), round_to=8)
    assert list(s.grid(0)) == [8, 16, 20]  # multiples of 8, then the full width
    s = WidthSpace.from_model(odd, (3, 8, 8), min_ratio=0.5)
    assert s.bounds == [(10, 20)]


def test_validate_errors_say_what_is_wrong():
    space = space_of("cifar_resnet56", 32, round_to=8)
    good = space.full_widths
    assert list(space.validate(good)) == good
    with pytest.raises(WidthError, match="has 3 entries but the space has 30 groups"):
        space.validate([16, 16, 16])
    bad = list(good)
    bad[29] = 72
    with pytest.raises(WidthError, match=r"width 72 of group 29 .* outside \[8, 64\]"):
        space.validate(bad)
    bad[29] = 4
    with pytest.raises(WidthError, match="outside"):
        space.validate(bad)
    bad[29] = 12
    with pytest.raises(WidthError, match=r"not on the grid \(multiples of 8, or the full width 64"):
        space.validate(bad)
    bad[29] = 16.5
    with pytest.raises(WidthError, match="integers; entry 29 is 16.5"):
        space.validate(bad)
    with pytest.raises(WidthError, match="list of 30 integers"):
        space.validate(["wide"] * 30)


def test_uniform_and_snap():
    space = space_of("cifar_resnet56", 32)
    assert list(space.uniform(1.0)) == space.full_widths
    half = space.uniform(0.5)
    assert list(half) == [w // 2 for w in space.full_widths]
    # Halving every width quarters every conv but the stem (3 inputs) and halves the classifier.
    assert space.macs(half) / space.full_macs == pytest.approx(0.2509, abs=1e-4)
    assert list(space.uniform(0.01)) == list(space.lower)
    coarse = space_of("cifar_resnet56", 32, round_to=8)
    assert list(coarse.snap([12] * 30)) == [16] * 30  # ties go up
    assert np.array_equal(coarse.snap([100] * 30), coarse.upper)
    assert np.array_equal(coarse.snap([0] * 30), coarse.lower)


def test_vectorised_cost_equals_per_vector_calls():
    space = space_of("torchvision:resnet50", 64)
    batch = space.sample(np.random.default_rng(0), 200)
    macs, params = space.macs(batch), space.params(batch)
    assert macs.shape == params.shape == (200,)
    assert list(macs) == [space.macs(w) for w in batch]
    assert list(params) == [space.params(w) for w in batch]
    assert len(set(macs)) > 190  # the vectors differ, so the costs do


def test_sample_is_on_grid_seeded_and_respects_a_macs_range():
    space = space_of("cifar_resnet56", 32, round_to=4)
    a = space.sample(np.random.default_rng(3), 30)
    assert np.array_equal(a, space.sample(np.random.default_rng(3), 30))
    for w in a:
        space.validate(w)
    lo, hi = 0.3 * space.full_macs, 0.5 * space.full_macs
    ranged = space.sample(np.random.default_rng(4), 40, cost_range=(lo, hi))
    assert ranged.shape == (40, 30)
    m = space.macs(ranged)
    assert np.all((m >= lo) & (m <= hi))
    for w in ranged:
        space.validate(w)
    below = space.sample(np.random.default_rng(5), 10, cost_range=(None, 0.2 * space.full_macs))
    assert np.all(space.macs(below) <= 0.2 * space.full_macs)
    with pytest.raises(WidthError, match="below the smallest network"):
        space.sample(np.random.default_rng(0), 5, cost_range=(0, 0.5 * space.min_macs))
    with pytest.raises(WidthError, match="empty"):
        space.sample(np.random.default_rng(0), 5, cost_range=(hi, lo))


@pytest.mark.parametrize("name,size,round_to", [
    ("cifar_resnet56", 32, 1), ("cifar_resnet56", 32, 8), ("torchvision:resnet50", 64, 1),
    ("cifar_mobilenet_v2", 32, 1)])
def test_project_meets_the_budget_on_grid_above_the_floor(name, size, round_to):
    space = space_of(name, size, round_to)
    rng = np.random.default_rng(0)
    starts = [space.full_widths] + list(space.sample(rng, 6))
    for ratio in (0.15, 0.3, 0.6):
        budget = ratio * space.full_macs
        for w in starts:
            p = space.project(w, budget)
            assert list(space.validate(p)) == list(p)
            assert np.all(p >= space.lower) and np.all(p <= np.asarray(w))
            assert space.macs(p) <= budget
            if space.macs(w) <= budget:
                assert list(p) == list(w)  # already within budget: unchanged
            elif round_to == 1:
                assert space.macs(p) >= 0.95 * budget  # the repair does not waste the budget
    with pytest.raises(WidthError, match="below the smallest network in the space"):
        space.project(space.full_widths, 0.9 * space.min_macs)
    assert list(space.project(space.full_widths, space.min_macs)) == list(space.lower)


def test_table_lists_groups_and_totals():
    space = space_of("cifar_resnet56", 32)
    text = space.table(space.uniform(0.5))
    assert "total: 30 groups, 31.48 M MACs, 0.215 M params" in text
    assert "| 29 | layer3.8.conv1 | 3 | 32/64 | 7-64 |" in text


def test_params_cost_view_budgets_parameters_and_macs_stay_macs():
    from structsearch.budget import MacsCost, ParamsCost
    from structsearch.space import WidthError
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    space = WidthSpace.from_model(model, (1, 28, 28))
    view = ParamsCost(space)
    w = space.uniform(0.5)
    assert view.cost(w) == space.params(w) and MacsCost(space).cost(w) == space.macs(w)
    assert view.unit == "parameters" and view.kind == "params"
    assert view.full == sum(t.numel() for t in model.parameters())
    projected = space.project(space.full_widths, 0.4 * view.full, cost=view)
    assert space.params(projected) <= 0.4 * view.full
    batch = space.sample(np.random.default_rng(0), 5, (0.3 * view.full, 0.4 * view.full), cost=view)
    assert all(0.3 * view.full <= space.params(b) <= 0.4 * view.full for b in batch)
    with pytest.raises(WidthError, match="parameters is below the smallest network"):
        space.project(space.full_widths, 10, cost=view)
