"""Seeded width proposals (uniform, global, SSL, published presets) and the sensitivity scan."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from structsearch import WidthError, WidthSpace, models, seeds
from structsearch.data import DataSpec, load
from structsearch.seeds import PRESETS, expand_rates
from structsearch.sensitivity import sensitivity
from structsearch.train import evaluate

PRESET_MODEL = {"vgg16": "cifar_vgg16", "resnet56": "cifar_resnet56",
                "resnet110": "cifar_resnet110"}


@functools.lru_cache(maxsize=None)
def model_and_space(name: str):
    torch.manual_seed(0)
    in_channels, size = (1, 28) if name == "small_cnn" else (3, 32)
    model = models.build(name, num_classes=10, in_channels=in_channels)
    return model.eval(), WidthSpace.from_model(model, (in_channels, size, size))


def model_for(proposal: str) -> str:
    for key, name in PRESET_MODEL.items():
        if proposal.endswith(key) or f"_{key}_" in proposal:
            return name
    return "small_cnn"


@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", seeds.names())
def test_every_proposal_is_valid_and_in_budget(name, ratio):
    model, space = model_and_space(model_for(name))
    budget = ratio * space.full_macs
    batches = [(torch.randn(4, *space.input_shape), None)]
    extra = {}
    if name == "sensitivity":  # Li et al.'s read-out of measured curves: a synthetic set here
        extra["rows"] = [{"group": g, "name": "", "ratio": r, "width": 0, "macs": 0,
                          "val_acc": 0.9 - (0.2 if g == 0 else 0.0) * r}
                         for g in range(len(space)) for r in (0.0, 0.5, 0.9)]
    widths = seeds.propose(name, model, space, limit=budget, batches=batches, **extra)
    assert widths.dtype == np.int64
    space.validate(widths)
    assert space.macs(widths) <= budget
    # Every proposal spends most of the budget (the projection and bisections are tight).
    assert space.macs(widths) >= 0.9 * budget


def test_names_cover_every_preset():
    assert {"uniform", "global", "ssl", "sensitivity"} | set(PRESETS) == set(seeds.names())
    assert {"hrank_vgg16", "hrank_resnet56", "hrank_resnet110", "li_vgg16_a", "li_resnet56_a",
            "li_resnet56_b", "li_resnet110_a", "li_resnet110_b"} == set(PRESETS)


# Li et al. (ICLR 2017), Table 2: MACs removed by each pruned model (conv + linear, exact counts
# including the next layer's input channels, as the paper counts them).
LI_REDUCTION = {"li_vgg16_a": 0.342, "li_resnet56_a": 0.104, "li_resnet56_b": 0.276,
                "li_resnet110_a": 0.159, "li_resnet110_b": 0.386}


@pytest.mark.parametrize("name", sorted(LI_REDUCTION))
def test_li_presets_reproduce_the_published_macs_reduction(name):
    model, space = model_and_space(model_for(name))
    widths = seeds.propose(name, model, space, limit=space.full_macs, fit="project")
    assert 1 - space.macs(widths) / space.full_macs == pytest.approx(LI_REDUCTION[name], abs=0.005)


def test_li_vgg16_a_and_hrank_vgg16_widths():
    model, space = model_and_space("cifar_vgg16")
    li = seeds.propose("li_vgg16_a", model, space, limit=space.full_macs, fit="project")
    assert li.tolist() == [32, 64, 128, 128, 256, 256, 256] + [256] * 6 + [512]
    # HRank keeps c - floor(rate * c); its 0.95 on conv 1 (3 of 64) stops at the 10% floor (7).
    hrank = seeds.propose("hrank_vgg16", model, space, limit=space.full_macs, fit="project")
    assert hrank.tolist() == [7, 32, 64, 64, 128, 128, 128, 52, 52, 52, 52, 103, 103, 512]


def test_hrank_resnet56_maps_rates_onto_groups_by_conv_name():
    model, space = model_and_space("cifar_resnet56")
    published = ("[0.1]+[0.60]*35+[0.0]*2+[0.6]*6+[0.4]*3+[0.1]+[0.4]+[0.1]+[0.4]+[0.1]+[0.4]"
                 "+[0.1]+[0.4]")
    assert len(expand_rates(published)) == 55
    rates = dict(zip(space.names, seeds.preset_rates("hrank_resnet56", model, space)))
    # Rate k is conv k in definition order: stem, then conv1, conv2 of each block.
    assert rates["layer1.0.conv1"] == 0.6 and rates["layer3.0.conv1"] == 0.0
    assert rates["layer3.4.conv1"] == 0.4
    assert [rates[f"layer3.{b}.conv1"] for b in range(5, 9)] == [0.1] * 4
    # A residual stream takes its least-pruned writer: stem 0.1 in stage 1, layer2.8.conv2 0.0.
    stream = {name: r for name, r in rates.items() if "conv2" in name}
    assert sorted(stream.values()) == [0.0, 0.1, 0.4]


def test_presets_scale_to_the_budget_and_refuse_other_models():
    model, space = model_and_space("cifar_resnet56")
    published = seeds.propose("li_resnet56_b", model, space, limit=space.full_macs, fit="project")
    tighter = seeds.propose("li_resnet56_b", model, space, limit=0.5 * space.full_macs)
    # Scaling only moves the layers the preset prunes; the skipped ones stay whole.
    untouched = published == space.upper
    assert (tighter[untouched] == space.upper[untouched]).any()
    assert (tighter <= published).all() and space.macs(tighter) <= 0.5 * space.full_macs
    small, small_space = model_and_space("small_cnn")
    with pytest.raises(ValueError, match="ResNet-56"):
        seeds.propose("li_resnet56_a", small, small_space, limit=small_space.full_macs)


@pytest.mark.parametrize("criterion", ["hrank", "activation", "group_lasso"])
def test_global_reads_out_any_criterion(criterion):
    model, space = model_and_space("small_cnn")
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 28, 28, generator=gen), None)]
    budget = 0.5 * space.full_macs
    widths = seeds.propose("global", model, space, limit=budget, criterion=criterion,
                           batches=batches)
    space.validate(widths)
    assert 0.95 * budget <= space.macs(widths) <= budget


def test_uniform_is_the_largest_ratio_in_budget():
    model, space = model_and_space("small_cnn")
    budget = 0.4 * space.full_macs
    widths = seeds.propose("uniform", model, space, limit=budget)
    ratio = widths / np.array(space.full_widths)
    assert ratio.max() - ratio.min() < 0.1  # one ratio, up to rounding
    assert space.macs(space.uniform(ratio.mean() + 0.05)) > budget


def test_ssl_removes_channels_with_zero_norm():
    model, space = model_and_space("small_cnn")
    model = type(model)(num_classes=10, in_channels=1)
    model.load_state_dict(model_and_space("small_cnn")[0].state_dict())
    with torch.no_grad():
        model.features[0].weight[:20] = 0.0  # group 0: 20 of 32 filters died under SSL
    widths = seeds.propose("ssl", model, space, limit=space.full_macs)
    assert widths.tolist() == [12, 32, 64, 64]


def test_proposals_reject_impossible_budgets_and_unknown_names():
    model, space = model_and_space("small_cnn")
    for name in ("uniform", "global", "ssl", "hrank_vgg16"):
        with pytest.raises(WidthError, match="below the smallest network"):
            seeds.propose(name, model, space, limit=0.5 * space.min_macs)
    with pytest.raises(KeyError, match="choose one of"):
        seeds.propose("nope", model, space, limit=space.full_macs)


def test_sensitivity_table_and_plot(tmp_path):
    model, space = model_and_space("small_cnn")
    val = load(DataSpec(name="mnist5k")).val.subset(200, seed=0)
    ratios = (0.25, 0.5, 0.9)
    rows = sensitivity(model, space, "l1", val, ratios, out_png=tmp_path)
    assert len(rows) == len(space.groups) * (len(ratios) + 1)
    baseline = evaluate(model, val)["top1"]
    for g, group in enumerate(space.groups):
        mine = [r for r in rows if r["group"] == g]
        assert [r["ratio"] for r in mine] == [0.0, *ratios]
        assert mine[0]["val_acc"] == baseline and mine[0]["width"] == group.width
        assert mine[2]["width"] == round(0.5 * group.width)
        assert mine[3]["width"] == space.lower[g]  # 90% removed stops at the 10% floor
        assert all(0.0 <= r["val_acc"] <= 1.0 for r in mine)
        assert mine[3]["macs"] < mine[0]["macs"]
    png = tmp_path / "sensitivity.png"
    assert png.is_file() and png.stat().st_size > 10_000


# Li et al. (ICLR 2017), Table 1: parameters of the pruned models.
LI_PARAMS = {"li_vgg16_a": 5.4e6, "li_resnet56_a": 7.7e5, "li_resnet56_b": 7.3e5,
             "li_resnet110_a": 1.68e6, "li_resnet110_b": 1.16e6}
# HRank's README (lmbxmu/HRank): MACs ("Flops") of its pruned models. Its counter removes a
# conv's pruned filters but not the next layer's matching input channels (the README says so),
# so it over-counts; ours is exact, hence lower. For VGG-16, counting its way (each layer's
# MACs scaled by the fraction of its own output channels kept) reproduces the README's figure.
HRANK_README_MACS = {"hrank_vgg16": 108.61e6, "hrank_resnet56": 62.72e6, "hrank_resnet110": 156.90e6}


def _out_only_macs(model, space, widths):
    """MACs counted HRank's way: each conv/linear layer's full MACs x its kept output fraction."""
    from structsearch import prune
    pruned = dict(prune(model, space, widths).named_modules())
    modules = dict(model.named_modules())
    total = 0.0
    for name, macs in space.layer_macs(space.full_widths).items():
        full, kept = modules[name], pruned[name]
        out = "out_channels" if isinstance(full, torch.nn.Conv2d) else "out_features"
        total += macs * getattr(kept, out) / getattr(full, out)
    return total


@pytest.mark.parametrize("name", sorted(LI_PARAMS) + sorted(HRANK_README_MACS))
def test_paper_presets_are_the_published_architectures(name):
    model = models.build(model_for(name))
    space = WidthSpace.from_model(model, (3, 32, 32), min_ratio=0.01)  # HRank cuts 95% of conv 1
    widths = seeds.propose(f"{name}@paper", model, space, limit=space.full_macs)
    if name in LI_PARAMS:
        assert 1 - space.macs(widths) / space.full_macs == pytest.approx(LI_REDUCTION[name], abs=0.005)
        assert space.params(widths) == pytest.approx(LI_PARAMS[name], rel=0.015)
    else:
        assert space.macs(widths) < HRANK_README_MACS[name], "exact counts are below HRank's"
    if name == "hrank_vgg16":
        assert _out_only_macs(model, space, widths) == pytest.approx(108.61e6, rel=0.01)
        assert widths.tolist() == [4, 32, 64, 64, 128, 128, 128, 52, 52, 52, 52, 103, 103, 512]


def test_paper_presets_refuse_what_they_cannot_be():
    model = models.build("cifar_vgg16")
    space = WidthSpace.from_model(model, (3, 32, 32))  # min_ratio 0.1: conv 1 keeps >= 7 of 64
    with pytest.raises(WidthError, match=r"hrank_vgg16@paper keeps 4 channels .*min_ratio.*@scaled"):
        seeds.propose("hrank_vgg16@paper", model, space, limit=space.full_macs)
    with pytest.raises(WidthError, match=r"li_vgg16_a@paper costs .* above the budget .*@scaled"):
        seeds.propose("li_vgg16_a@paper", model, space, limit=0.5 * space.full_macs)
    scaled = seeds.propose("li_vgg16_a@scaled", model, space, limit=0.5 * space.full_macs)
    assert space.macs(scaled) <= 0.5 * space.full_macs
    with pytest.raises(KeyError, match="@paper or @scaled"):
        seeds.propose("li_vgg16_a@exact", model, space, limit=space.full_macs)


def test_seed_labels_say_which_preset_fit():
    """candidates.csv labels presets as NAME@paper or NAME@scaled (a bare name is scaled)."""
    from types import SimpleNamespace

    from structsearch import config as C
    from structsearch.budget import MacsCost
    from structsearch.config import ConfigError
    from structsearch.needs import seed_proposals
    model = models.build("cifar_vgg16")
    space = WidthSpace.from_model(model, (3, 32, 32))
    cfg = C.from_dict({"model": {"name": "cifar_vgg16"}, "budget": {"macs_ratio": 0.7}})
    p = SimpleNamespace(cfg=cfg, model=model, space=space, view=MacsCost(space),
                        budget=SimpleNamespace(limit=0.7 * space.full_macs))
    got = seed_proposals(p, ["li_vgg16_a@paper", "li_vgg16_a", "uniform"])
    assert [g["origin"] for g in got] == ["li_vgg16_a@paper", "li_vgg16_a@scaled", "uniform"]
    assert got[0]["widths"] == [32, 64, 128, 128, 256, 256, 256] + [256] * 6 + [512]
    with pytest.raises(ConfigError, match="search.seeds: .*@paper or @scaled"):
        seed_proposals(p, ["li_vgg16_a@exactly"])
