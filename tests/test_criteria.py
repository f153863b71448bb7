"""Importance criteria: one contract suite over every registered criterion, then each criterion
against hand-built tensors with known answers, LASSO selection and reconstruction, the cache."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from torch import nn

from structsearch import WidthSpace, criteria, models
from structsearch.criteria.cache import cached_scores
from structsearch.criteria.hrank import feature_map_ranks
from structsearch.criteria.lasso import lasso_order, lasso_select, lasso_select_gram, reconstruct
from structsearch.surgery import prune

SHAPES = {"small_cnn": (1, 28, 28), "cifar_resnet20": (3, 32, 32), "cifar_resnet56": (3, 32, 32),
          "torchvision:resnet18": (3, 32, 32)}


@functools.lru_cache(maxsize=None)
def model_and_space(name: str):
    torch.manual_seed(0)
    shape = SHAPES[name]
    model = models.build(name, num_classes=10, in_channels=shape[0])
    # Non-trivial BN statistics and scales, as in a trained model (fresh ones are all 1 / 0).
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.1
            m.bias.data = 0.1 * torch.randn(m.num_features, generator=gen)
    return model.eval(), WidthSpace.from_model(model, shape)


def random_batches(shape, n_batches=2, batch=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=gen), torch.zeros(batch, dtype=torch.long))
            for _ in range(n_batches)]


def check_contract(name, model_name):
    model, space = model_and_space(model_name)
    crit = criteria.get(name)
    assert crit.name == name and isinstance(crit.needs_data, bool)
    json.dumps(crit.params())  # parameters are JSON-able (cache keys, run records)
    batches = random_batches(SHAPES[model_name]) if crit.needs_data else None
    scores = crit.scores(model, space, batches)
    assert len(scores) == len(space.groups)
    for s, group in zip(scores, space.groups):
        assert isinstance(s, np.ndarray) and s.shape == (group.width,)
        assert s.dtype.kind == "f" and np.isfinite(s).all()
    widths = space.uniform(0.5)
    pruned = prune(model, space, widths, keep=criteria.criterion_keep(scores, widths)).eval()
    x = random_batches(SHAPES[model_name], 1, 2, seed=5)[0][0]
    with torch.no_grad():
        assert pruned(x).shape == (2, 10)
    return crit, scores, batches


@pytest.mark.parametrize("model_name", ["small_cnn", "cifar_resnet20"])
@pytest.mark.parametrize("name", criteria.names())
def test_contract_and_determinism(name, model_name):
    crit, scores, batches = check_contract(name, model_name)
    model, space = model_and_space(model_name)
    again = criteria.get(name).scores(model, space, batches)
    for a, b in zip(scores, again):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["cifar_resnet56", "torchvision:resnet18"])
@pytest.mark.parametrize("name", criteria.names())
def test_runs_on_resnet56_and_torchvision_resnet18(name, model_name):
    check_contract(name, model_name)


def test_registry_lists_every_criterion_and_rejects_unknown():
    assert set(criteria.names()) == {"l1", "bn_scale", "hrank", "activation", "lasso",
                                     "group_lasso", "random"}
    with pytest.raises(KeyError, match="choose one of"):
        criteria.get("nope")


@pytest.mark.parametrize("name", ["hrank", "activation", "lasso"])
def test_data_criteria_refuse_to_score_without_data(name):
    model, space = model_and_space("small_cnn")
    with pytest.raises(ValueError, match="needs data"):
        criteria.get(name).scores(model, space, None)


# ---------------------------------------------------------------- hand-built tensors


class Tiny(nn.Module):
    """conv1 (C -> 4) - BN - ReLU - conv2 (4 -> 3) - BN - ReLU - GAP - fc."""

    def __init__(self, in_channels=1, k=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, k, padding=k // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def tiny(in_channels=1, k=3, size=8):
    torch.manual_seed(0)
    model = Tiny(in_channels, k).eval()
    space = WidthSpace.from_model(model, (in_channels, size, size), min_ratio=0.25)
    assert [g.name for g in space.groups] == ["conv1", "conv2"]
    return model, space


def identity_tiny(size):
    """Tiny net whose bn1 output equals its 4-channel input (1x1 identity conv, unit BN)."""
    model, space = tiny(in_channels=4, k=1, size=size)
    with torch.no_grad():
        model.conv1.weight.copy_(torch.eye(4)[:, :, None, None])
        model.bn1.eps = 0.0
    return model, space


def test_l1_orders_filters_by_absolute_weight_sum():
    model, space = tiny()
    with torch.no_grad():
        model.conv1.weight.copy_(torch.tensor([3.0, -1.0, 4.0, 2.0])[:, None, None, None]
                                 * torch.ones(4, 1, 3, 3))
    scores = criteria.get("l1").scores(model, space)[0]
    np.testing.assert_allclose(scores, [0.75, 0.25, 1.0, 0.5])  # 9|v| / max
    assert criteria.criterion_keep([scores], [2])[0].tolist() == [0, 2]


def test_bn_scale_orders_by_absolute_gamma():
    model, space = tiny()
    with torch.no_grad():
        model.bn1.weight.copy_(torch.tensor([-0.5, 2.0, 0.1, 1.0]))
    np.testing.assert_allclose(criteria.get("bn_scale").scores(model, space)[0],
                               [0.25, 1.0, 0.05, 0.5], rtol=1e-6)
    raw = criteria.get("bn_scale", normalize=False).scores(model, space)[0]
    np.testing.assert_allclose(raw, [0.5, 2.0, 0.1, 1.0], rtol=1e-6)
    assert criteria.criterion_keep([raw], [3])[0].tolist() == [0, 1, 3]


def low_rank_maps(ranks, n_images, size, gen):
    """(n_images, len(ranks), size, size) non-negative maps, channel c the sum of ranks[c]
    outer products of positive vectors (so ReLU keeps them and their rank is ranks[c])."""
    maps = torch.zeros(n_images, len(ranks), size, size, dtype=torch.float64)
    for c, r in enumerate(ranks):
        u = torch.rand(n_images, size, r, generator=gen, dtype=torch.float64) + 0.1
        v = torch.rand(n_images, r, size, generator=gen, dtype=torch.float64) + 0.1
        maps[:, c] = u @ v
    return maps


def test_hrank_of_maps_with_known_rank():
    gen = torch.Generator().manual_seed(0)
    ranks = [1, 3, 2, 5]
    maps = low_rank_maps(ranks, 3, 16, gen)
    np.testing.assert_array_equal(feature_map_ranks(maps).numpy(), np.tile(ranks, (3, 1)))
    # Through a model: bn1's output is the input itself, so the score is rank / max rank.
    model, space = identity_tiny(16)
    batches = [(low_rank_maps(ranks, 4, 16, gen).float(), None) for _ in range(2)]
    scores = criteria.get("hrank", num_batches=2).scores(model, space, batches)[0]
    np.testing.assert_allclose(scores * max(ranks), ranks, rtol=1e-6)


def test_activation_is_mean_over_images_of_pooled_relu_output():
    model, space = identity_tiny(6)
    a = torch.tensor([0.5, -1.0, 2.0, 1.0])  # channel 1 is negative: ReLU zeroes it
    b = torch.tensor([1.5, 3.0, 2.0, -1.0])
    x = torch.stack([a, b])[:, :, None, None].expand(2, 4, 6, 6).contiguous()
    scores = criteria.get("activation", num_batches=1).scores(model, space, [x])[0]
    means = np.array([1.0, 1.5, 2.0, 0.5])  # mean over images of relu(value)
    np.testing.assert_allclose(scores, means / means.max(), rtol=1e-6)


def test_group_lasso_is_the_filter_l2_norm():
    model, space = tiny()
    values = torch.tensor([1.0, -2.0, 0.5, 0.0])
    with torch.no_grad():
        model.conv1.weight.copy_(values[:, None, None, None] * torch.ones(4, 1, 3, 3))
    raw = criteria.get("group_lasso", normalize=False).scores(model, space)[0]
    np.testing.assert_allclose(raw, 3.0 * values.abs().numpy(), rtol=1e-6)  # sqrt(9) |v|
    np.testing.assert_allclose(criteria.get("group_lasso").scores(model, space)[0],
                               [0.5, 1.0, 0.25, 0.0], rtol=1e-6)


def test_random_is_seeded():
    _, space = model_and_space("cifar_resnet20")
    a = criteria.get("random", seed=3).scores(None, space)
    b = criteria.get("random", seed=3).scores(None, space)
    c = criteria.get("random", seed=4).scores(None, space)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


# ---------------------------------------------------------------- LASSO


def test_lasso_picks_the_channels_that_generated_the_output():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(400, 6, 10, generator=gen, dtype=torch.float64)  # samples, outputs, channels
    source = [1, 4, 6]
    y = z[:, :, source] @ torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64)
    flat = z.reshape(-1, 10)
    gram, q = (flat.T @ flat).numpy(), (flat.T @ y.reshape(-1)).numpy()
    keep, beta = lasso_select_gram(gram, q, 3)
    assert keep.tolist() == source
    assert np.count_nonzero(beta) == 3
    assert set(lasso_order(gram, q)[:3].tolist()) == set(source)


def test_lasso_select_and_reconstruction_lower_the_error():
    model, space = tiny(size=10)
    with torch.no_grad():
        model.bn1.running_mean.normal_(0, 0.2)
        model.bn1.weight.uniform_(0.5, 1.5)
    batches = random_batches((1, 10, 10), n_batches=3, batch=16)
    keep = lasso_select(model, space, "conv1", 2, batches, num_batches=3)
    assert len(keep) == 2 and keep.tolist() == sorted(set(keep.tolist()))
    widths = [2, 3]
    pruned = prune(model, space, widths, keep={0: keep})

    def conv2_error(m):  # squared error of conv2's output against the original, all positions
        seen = {}
        hooks = [mod.register_forward_hook(lambda _, __, out, key=key: seen.__setitem__(key, out))
                 for key, mod in (("orig", model.conv2), ("new", m.conv2))]
        with torch.no_grad():
            for x, _ in batches:
                model(x)
                m(x)
                seen.setdefault("err", 0.0)
                seen["err"] += float(((seen["orig"] - seen["new"]) ** 2).sum())
        for h in hooks:
            h.remove()
        return seen["err"]

    before = conv2_error(pruned)
    errors = reconstruct(pruned, model, space, {0: keep}, batches, num_batches=3,
                         points_per_image=None)
    after = conv2_error(pruned)
    assert set(errors) == {"conv2"}
    rel_before, rel_after = errors["conv2"]
    assert rel_after < rel_before
    assert after < 0.9 * before
    with torch.no_grad():
        energy = sum(float((model.conv2(torch.relu(model.bn1(model.conv1(x)))) ** 2).sum())
                     for x, _ in batches)
    assert rel_before == pytest.approx(before / energy, rel=1e-4)


def test_lasso_scores_rank_path_entry():
    model, space = model_and_space("small_cnn")
    scores = criteria.get("lasso", num_batches=2).scores(model, space,
                                                          random_batches(SHAPES["small_cnn"]))
    for s, g in zip(scores, space.groups):
        # Entry ranks: a permutation of 1/n .. 1, so every width has a unique top-w.
        np.testing.assert_allclose(np.sort(s), np.arange(1, g.width + 1) / g.width)


# ---------------------------------------------------------------- cache


def test_cached_scores_compute_once_per_weights(tmp_path):
    model, space = tiny()

    class Counting(criteria.L1Norm):
        calls = 0

        def scores(self, model, space, batches=None):
            Counting.calls += 1
            return super().scores(model, space, batches)

    first = cached_scores(Counting(), model, space, None, tmp_path)
    second = cached_scores(Counting(), model, space, None, tmp_path)
    assert Counting.calls == 1
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("l1-")
    with np.load(files[0], allow_pickle=False) as data:
        np.testing.assert_array_equal(data["group_0"], first[0])
    with torch.no_grad():
        model.conv1.weight.mul_(2.0)  # new weights, new entry
    cached_scores(Counting(), model, space, None, tmp_path)
    assert Counting.calls == 2 and len(list(tmp_path.glob("*.npz"))) == 2
    cached_scores(criteria.get("random", seed=1), model, space, None, tmp_path)
    cached_scores(criteria.get("random", seed=2), model, space, None, tmp_path)
    assert len(list(tmp_path.glob("random-*.npz"))) == 2  # parameters are in the key


def test_hrank_scores_a_residual_stream_at_the_block_outputs():
    """ResNet-20's stage-1 stream: the stem's relu(bn1) and each block's output after the
    addition (what a pruned stream channel carries; HRank's official code ranks block outputs),
    not relu(bn2) before the addition."""
    model, space = model_and_space("cifar_resnet20")
    g = next(i for i, grp in enumerate(space.groups) if "layer1.0.conv2" in grp.producers)
    batches = random_batches((3, 32, 32))
    scores = criteria.get("hrank", num_batches=2).scores(model, space, batches)[g]
    modules = dict(model.named_modules())
    maps: dict = {}
    names = ["bn1", "layer1.0", "layer1.1", "layer1.2", "layer1.0.bn2"]
    hooks = [modules[n].register_forward_hook(
        lambda mod, args, out, n=n: maps.setdefault(n, []).append(torch.relu(out).detach()))
        for n in names]
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()

    def mean_ranks(name):
        ranks = feature_map_ranks(torch.cat(maps[name])).double().mean(0).numpy()
        return ranks / ranks.max()

    expected = sum(mean_ranks(n) for n in ["bn1", "layer1.0", "layer1.1", "layer1.2"])
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    before_add = mean_ranks("bn1") + mean_ranks("layer1.0.bn2") + mean_ranks("layer1.1") + mean_ranks("layer1.2")
    assert not np.allclose(scores, before_add), "layer1.0 is read after its residual addition"
