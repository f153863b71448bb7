"""Surgery: random width vectors give working models whose MACs/params an independent counter
(fvcore) agrees with; kept channels are the chosen ones; save/load round trips and refuses
unsafe or broken files."""

from __future__ import annotations

import functools
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from structsearch import (CheckpointError, WidthSpace, export_onnx, load_pruned, models, prune,
                          save_pruned)
from structsearch.surgery import load_state_dict_file

from counters import count_macs, count_params

NUM_CLASSES = 10


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine terms, so that a wrong slice shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def built(name: str, size: int) -> tuple[nn.Module, WidthSpace]:
    torch.manual_seed(0)
    model = randomize_bn(models.build(name, num_classes=NUM_CLASSES))
    return model, WidthSpace.from_model(model, (3, size, size))


def check_random_vectors(name: str, size: int, n: int, seed: int) -> None:
    """The floor vector plus ``n - 1`` random ones: forward shape, and MACs/params vs fvcore."""
    model, space = built(name, size)
    vectors = np.vstack([space.lower[None], space.sample(np.random.default_rng(seed), n - 1)])
    x = torch.randn(2, 3, size, size)
    for w in vectors:
        pruned = prune(model, space, w).eval()
        with torch.no_grad():
            out = pruned(x)
        assert out.shape == (2, NUM_CLASSES) and torch.isfinite(out).all()
        macs, params = count_macs(pruned, (3, size, size)), count_params(pruned)
        assert space.macs(w) == pytest.approx(macs, rel=5e-3), f"{name} widths {list(w)}"
        assert space.params(w) == pytest.approx(params, rel=5e-3), f"{name} widths {list(w)}"
        pruned_modules = dict(pruned.named_modules())
        for width, group in zip(w, space.groups):
            for m in group.members:
                layer = pruned_modules[m.module]
                if m.dim == "out" and isinstance(layer, nn.Conv2d) and len(m.idxs) == group.width:
                    assert layer.out_channels == width, f"{m.module} in {group.name}"


def group_index(space: WidthSpace, producer: str) -> int:
    return next(i for i, g in enumerate(space.groups) if producer in g.producers)


REGISTRY_CASES = [(name, models.default_input_size(name)) for name in models.names()]


TORCHVISION_CASES = [(f"torchvision:{name}", 64) for name in
                     ("resnet18", "resnet50", "mobilenet_v2", "vgg16_bn")]


@pytest.mark.parametrize("name,size", REGISTRY_CASES + TORCHVISION_CASES)
def test_random_widths_prune_run_and_cost_exactly(name, size):
    check_random_vectors(name, size, n=12, seed=1)


@pytest.mark.parametrize("name,size", [("cifar_resnet56", 32), ("cifar_mobilenet_v2", 32),
                                       ("cifar_vgg16", 32), ("torchvision:resnet50", 64)])
def test_full_widths_reproduce_the_model(name, size):
    model, space = built(name, size)
    pruned = prune(model, space, space.full_widths).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-6, atol=1e-6)
    assert count_params(pruned) == count_params(model)


def test_prune_leaves_the_input_model_untouched_and_shares_no_storage():
    model, space = built("cifar_resnet56", 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = {n: (getattr(m, "in_channels", None), getattr(m, "out_channels", None))
              for n, m in model.named_modules()}
    w = space.sample(np.random.default_rng(0), 1)[0]
    pruned = prune(model, space, w)
    assert {n: (getattr(m, "in_channels", None), getattr(m, "out_channels", None))
            for n, m in model.named_modules()} == shapes
    original_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not original_ptrs & {t.data_ptr() for t in pruned.state_dict().values()}
    with torch.no_grad():
        for p in pruned.parameters():
            p.mul_(0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_keep_selects_the_criterion_channels():
    model, space = built("cifar_resnet56", 32)
    widths = np.array(space.uniform(0.5))
    keep = {}
    for i, group in enumerate(space.groups):
        producer = dict(model.named_modules())[group.producers[0]]
        l1 = producer.weight.detach().abs().sum(dim=(1, 2, 3)).numpy()
        keep[i] = np.sort(np.argsort(-l1, kind="stable")[: widths[i]])
    named = group_index(space, "layer3.0.conv1")
    keep[space.names[named]] = keep.pop(named)  # a group can also be named
    pruned = prune(model, space, widths, keep=keep)
    full, small = dict(model.named_modules()), dict(pruned.named_modules())

    def kept(layer, rows, cols=None):
        weight = full[layer].weight[rows]
        return torch.equal(small[layer].weight, weight if cols is None else weight[:, cols])

    inner = keep[group_index(space, "layer2.3.conv1")]
    stage2 = keep[group_index(space, "layer2.0.conv2")]
    assert kept("layer2.3.conv1", inner, stage2) and kept("layer2.3.conv2", stage2, inner)
    assert kept("layer2.4.conv1", keep[group_index(space, "layer2.4.conv1")], stage2)
    assert kept("layer3.0.bn1", keep[space.names[named]])
    assert torch.equal(small["layer2.3.bn1"].running_var, full["layer2.3.bn1"].running_var[inner])
    with pytest.raises(ValueError, match="must hold 8 distinct channel indices in \\[0, 16\\)"):
        prune(model, space, widths, keep={1: [0, 1, 2]})


def test_pruning_zeroed_channels_keeps_the_function():
    """Drop residual-stream channels that the option-A shortcut pads with zeros, and inner
    channels, after zeroing them: the pruned network computes exactly the same outputs."""
    _, space = built("cifar_resnet56", 32)
    model = randomize_bn(models.build("cifar_resnet56", num_classes=NUM_CLASSES), seed=5)
    widths, keep = np.array(space.full_widths), {}
    modules = dict(model.named_modules())
    stage2 = group_index(space, "layer2.0.conv2")
    dropped = {stage2: [0, 3, 7, 24, 30, 31]}  # padding positions of the 16 -> 32 shortcut
    for i, group in enumerate(space.groups):
        if group.name.endswith(".conv1"):  # block inner widths
            dropped[i] = list(range(0, group.width, 3))
    with torch.no_grad():
        for i, gone in dropped.items():
            for m in space.groups[i].members:
                if m.dim == "out" and isinstance(modules[m.module], nn.BatchNorm2d):
                    modules[m.module].weight[gone] = 0
                    modules[m.module].bias[gone] = 0
            keep[i] = [c for c in range(space.groups[i].width) if c not in gone]
            widths[i] = len(keep[i])
    pruned = prune(model, space, widths, keep=keep).eval()
    assert space.macs(widths) < 0.65 * space.full_macs  # a third of every inner width is gone
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- save / load


class Payload:
    """A custom class: pickling it puts code references into a checkpoint."""

    def __init__(self):
        self.value = 1


@pytest.mark.parametrize("name,kwargs,shape", [
    ("cifar_resnet20", {"num_classes": 7}, (3, 32, 32)),
    ("small_cnn", {"num_classes": 4, "in_channels": 1, "width_mult": 0.5}, (1, 28, 28)),
])
def test_save_load_round_trip(tmp_path, name, kwargs, shape):
    torch.manual_seed(0)
    model = randomize_bn(models.build(name, **kwargs), seed=1)
    space = WidthSpace.from_model(model, shape, model_name=name, model_kwargs=kwargs)
    w = space.sample(np.random.default_rng(0), 1)[0]
    pruned = prune(model, space, w).eval()
    save_pruned(pruned, space, w, tmp_path / "run")
    arch = json.loads((tmp_path / "run" / "arch.json").read_text())
    assert arch["widths"] == [int(v) for v in w] and arch["model_kwargs"] == kwargs
    assert arch["macs"] == space.macs(w) == count_macs(pruned, shape)
    loaded = load_pruned(tmp_path / "run").eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), rtol=0, atol=0)


@pytest.fixture
def saved(tmp_path):
    name, kwargs = "small_cnn", {"num_classes": 3}
    model = models.build(name, **kwargs)
    space = WidthSpace.from_model(model, (3, 16, 16), model_name=name, model_kwargs=kwargs)
    w = space.uniform(0.5)
    return save_pruned(prune(model, space, w), space, w, tmp_path / "run")


def edit_arch(path, **changes):
    arch = json.loads((path / "arch.json").read_text())
    for key, value in changes.items():
        if value is None:
            arch.pop(key)
        else:
            arch[key] = value
    (path / "arch.json").write_text(json.dumps(arch))


def test_pickled_code_is_refused(saved):
    torch.save({"features.0.weight": Payload()}, saved / "weights.pt")
    with pytest.raises(CheckpointError, match="pickled code"):
        load_pruned(saved)
    with pytest.raises(CheckpointError, match="pickled code"):
        load_state_dict_file(saved / "weights.pt")


def test_truncated_weights_are_refused(saved):
    data = (saved / "weights.pt").read_bytes()
    (saved / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pruned(saved)


def test_weights_of_another_shape_are_refused(saved):
    torch.save(models.build("small_cnn", num_classes=3).state_dict(), saved / "weights.pt")
    with pytest.raises(CheckpointError, match="features.0.weight has shape"):
        load_pruned(saved)


@pytest.mark.parametrize("changes,message", [
    ({"widths": None, "width": [8, 8, 16, 16]}, "key 'widths' is missing"),
    ({"model": "cifar_resnet9000"}, "unknown model"),
    ({"model_kwargs": {"num_classes": 3, "depth": 3}}, "cannot be built"),
    ({"widths": [8, 8, 16, 70]}, "outside"),
    ({"groups": ["a", "b", "c", "d"]}, "groups do not match"),
    ({"format_version": 2}, "format_version 2 is not supported"),
])
def test_bad_arch_json_is_refused(saved, changes, message):
    edit_arch(saved, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_pruned(saved)


def test_arch_json_that_is_not_json(saved):
    (saved / "arch.json").write_text("{widths: [1,")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_pruned(saved)
    shutil.rmtree(saved)
    with pytest.raises(CheckpointError, match="not found"):
        load_pruned(saved)


def test_onnx_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    model, space = built("cifar_resnet20", 32)
    pruned = prune(model, space, space.uniform(0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        path = export_onnx(pruned, (3, 32, 32), tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(path)))
    from onnx.reference import ReferenceEvaluator

    x = torch.randn(2, 3, 32, 32)
    (logits,) = ReferenceEvaluator(str(path)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = pruned.eval()(x).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_cli_inspects_a_saved_model_whose_space_ignored_groups(tmp_path):
    import subprocess
    import sys

    model = models.build("cifar_resnet20", num_classes=10)
    space = WidthSpace.from_model(model, (3, 32, 32), ignore=("layer3.*",), model_name="cifar_resnet20",
                                  model_kwargs={"num_classes": 10})
    w = space.uniform(0.5)
    save_pruned(prune(model, space, w), space, w, tmp_path / "m")
    res = subprocess.run([sys.executable, "-m", "structsearch.cli", "inspect", str(tmp_path / "m")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"total: {len(space)} groups" in res.stdout
