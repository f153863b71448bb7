"""Model registry: shapes, MACs/params against published figures (counted independently with
fvcore), width scaling, torchvision models without downloads, and error messages."""

from __future__ import annotations

import copy
import pytest
import torch
from torch import nn

from structsearch import models
from structsearch.models import registry

from counters import count_macs as _count_macs, count_params


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    return _count_macs(model, (in_channels, input_size, input_size))


@pytest.mark.parametrize("name", models.names())
def test_every_registered_model_runs_at_its_input_size(name):
    size = models.default_input_size(name)
    model = models.build(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_registry_lists_the_agreed_names():
    expected = {
        "small_cnn",
        "cifar_vgg11", "cifar_vgg13", "cifar_vgg16", "cifar_vgg19",
        "cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
        "cifar_mobilenet_v2",
    }
    assert set(models.names()) == expected
    assert models.names() == sorted(models.names())


def test_default_input_sizes():
    assert models.default_input_size("small_cnn") == 28
    assert models.default_input_size("cifar_resnet56") == 32
    assert models.default_input_size("cifar_vgg16") == 32
    assert models.default_input_size("cifar_mobilenet_v2") == 32
    assert models.default_input_size("torchvision:resnet18") == 224


@pytest.mark.parametrize("size", [8, 28])
def test_small_cnn_handles_digits_and_mnist_sizes(size):
    model = models.build("small_cnn", num_classes=10, in_channels=1).train()
    out = model(torch.randn(2, 1, size, size))
    assert out.shape == (2, 10)
    out.sum().backward()  # trains at both sizes, not only evaluates


@pytest.mark.parametrize(
    "name, macs, macs_tol, params, params_tol",
    [
        ("cifar_resnet20", 40.55e6, 0.05e6, 0.27e6, 0.005e6),
        ("cifar_resnet56", 125.49e6, 0.05e6, 0.85e6, 0.01e6),
        ("cifar_resnet110", 252.89e6, 0.05e6, 1.73e6, 0.01e6),
        ("cifar_vgg16", 313.5e6, 0.5e6, 15.0e6, 0.3e6),
    ],
)
def test_published_macs_and_params(name, macs, macs_tol, params, params_tol):
    model = models.build(name, num_classes=10)
    assert abs(count_macs(model, 32) - macs) <= macs_tol
    assert abs(count_params(model) - params) <= params_tol


def test_vgg16_conv_macs_match_li_et_al():
    # 313.2M of the 313.5M are conv; the 0.27M rest is the 512-512-10 head.
    model = models.build("cifar_vgg16")
    assert count_macs(model, 32) == 313_196_544 + 512 * 512 + 512 * 10


def test_width_mult_scales_resnet_widths_and_macs():
    model = models.build("cifar_resnet20", width_mult=0.5)
    assert [model.conv1.out_channels, model.layer2[0].conv2.out_channels,
            model.layer3[2].conv1.out_channels] == [8, 16, 32]
    # Every 3x3 conv after the stem has both widths halved (MACs / 4); the stem only its output.
    stem_full, stem_half = 3 * 16 * 9 * 32 * 32, 3 * 8 * 9 * 32 * 32
    expected = (40_550_400 - stem_full) // 4 + stem_half + 32 * 10
    assert count_macs(model, 32) == expected


@pytest.mark.parametrize("name", ["cifar_vgg11", "cifar_mobilenet_v2", "small_cnn"])
def test_width_mult_keeps_models_runnable(name):
    size = models.default_input_size(name)
    full = models.build(name)
    thin = models.build(name, width_mult=0.25)
    assert count_params(thin) < count_params(full) / 4
    assert thin.eval()(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_resnet_accepts_explicit_block_widths():
    mids = [4, 8, 12] + [5, 10, 15] + [6, 12, 18]
    model = models.build("cifar_resnet20", mid_channels=mids)
    got = [block.conv1.out_channels for stage in (model.layer1, model.layer2, model.layer3)
           for block in stage]
    assert got == mids
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="9 positive ints"):
        models.build("cifar_resnet20", mid_channels=[4, 8])


def test_resnet_shortcuts_are_parameter_free():
    model = models.build("cifar_resnet56")
    assert not any("shortcut" in name for name, _ in model.named_parameters())


def test_torchvision_model_builds_without_download(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    model = models.build("torchvision:resnet18", num_classes=10)
    assert model.fc.out_features == 10
    gray = models.build("torchvision:resnet18", num_classes=10, in_channels=1).eval()
    assert gray.conv1.in_channels == 1
    assert gray.conv1.out_channels == 64 and gray.conv1.stride == (2, 2)
    with torch.no_grad():
        assert gray(torch.randn(2, 1, 64, 64)).shape == (2, 10)


def test_unknown_names_raise_key_error_listing_valid_ones():
    with pytest.raises(KeyError) as info:
        models.build("resnet9000")
    message = str(info.value)
    assert "cifar_resnet56" in message and "small_cnn" in message
    assert "torchvision:<name>" in message
    with pytest.raises(KeyError, match="resnet18"):
        models.build("torchvision:not_a_model")
    with pytest.raises(KeyError):
        models.default_input_size("resnet9000")


def test_register_adds_a_factory(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", copy.deepcopy(registry._REGISTRY))

    @models.register("tiny_linear", input_size=4)
    def tiny_linear(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16, num_classes))

    assert "tiny_linear" in models.names()
    assert models.default_input_size("tiny_linear") == 4
    assert models.build("tiny_linear", num_classes=3)(torch.zeros(2, 3, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny_linear")(tiny_linear)


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenet_v2"])
def test_torch_pruning_traces_and_prunes_block_inner_widths(name):
    tp = pytest.importorskip("torch_pruning")
    model = models.build(name).eval()
    example = torch.zeros(1, 3, 32, 32)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    # The first conv of a block sits inside the block, so cutting it must leave a runnable model.
    conv = model.layer1[0].conv1 if name == "cifar_resnet20" else model.features[2].conv[0][0]
    before = conv.out_channels
    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0, 1]).prune()
    assert conv.out_channels == before - 2
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
