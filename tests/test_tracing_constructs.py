"""Tracing constructs one at a time, on tiny models: each is either pruned correctly (the
self-check's exact-function test passes on random widths) or frozen with a one-line reason;
bad input gives one clear error; tracing never hangs."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from structsearch import WidthSpace, prune
from structsearch.selfcheck import self_check
from structsearch.space import NoGroupsError, TracingError, TracingTimeout, TracingWarning
from structsearch.tracing import measured_macs, trace

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 16, 16)


def conv_bn(cin, cout, k=3, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Net(nn.Module):
    """stem -> body (the construct under test) -> conv -> pool -> fc."""

    def __init__(self, body: nn.Module, c_in: int = 8, c_out: int = 8):
        super().__init__()
        self.stem = conv_bn(3, c_in)
        self.body = body
        self.head = conv_bn(c_out, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.head(self.body(self.stem(x))).mean((2, 3)))


class Shuffle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = conv_bn(8, 8, 1)

    def forward(self, x):
        x = self.a(x)
        b, c, h, w = x.shape
        return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class FixedSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 3), conv_bn(5, 5)

    def forward(self, x):
        left, right = torch.split(x, [3, 5], dim=1)
        return torch.cat([self.a(left), self.b(right)], 1)


class SliceResidual(nn.Module):
    """ReXNet's partial residual: the first ``c_in`` output channels add the input."""

    def __init__(self, c_in=8, c_out=12, blocks=6):
        super().__init__()
        widths = [c_in + i * (c_out - c_in) // blocks for i in range(blocks + 1)]
        self.blocks = nn.ModuleList(conv_bn(a, b) for a, b in zip(widths, widths[1:]))
        self.widths = widths

    def forward(self, x):
        for block, w in zip(self.blocks, self.widths):
            y = block(x)
            x = torch.cat([y[:, :w] + x, y[:, w:]], dim=1)
        return x


class DualPath(nn.Module):
    """DPN: the residual part of a stream adds, the dense part concatenates."""

    def __init__(self, res=8, dense=4, blocks=3):
        super().__init__()
        self.res = res
        self.blocks = nn.ModuleList(conv_bn(res + dense * i, res + dense) for i in range(blocks))

    def forward(self, x):
        for block in self.blocks:
            y = block(x)
            x = torch.cat([x[:, :self.res] + y[:, :self.res], x[:, self.res:], y[:, self.res:]], 1)
        return x


class SqueezeExcite(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.dw = conv_bn(c, c, groups=c)
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x):
        x = self.dw(x)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class LayerNormBlock(nn.Module):
    """ConvNeXt: LayerNorm and linear layers on a channels-last tensor, a layer-scale vector."""

    def __init__(self, c=8):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 16), nn.Linear(16, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.5))

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(torch.nn.functional.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y * self.gamma.reshape(1, -1, 1, 1)


class HardCodedBias(nn.Module):
    """A constant of fixed channel count the tracer cannot see: only the self-check can."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(8, 8)
        self.register_buffer("offset", torch.ones(1, 8, 1, 1))

    def forward(self, x):
        return self.a(x) + self.offset


class Flip(nn.Module):
    """Reverses the channel order: shapes stay, so only the function test tells."""

    def __init__(self):
        super().__init__()
        self.a = conv_bn(8, 8)

    def forward(self, x):
        return self.a(x).flip(1)


def build(body, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return Net(body, **kwargs).eval()


def traced(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TracingWarning)
        space = WidthSpace.from_model(model, SHAPE, **kwargs)
    return space, [str(w.message) for w in caught if issubclass(w.category, TracingWarning)]


def assert_prunes(model, space, vectors=4, seed=0):
    """Random width vectors (the first channels of each group kept): the pruned model runs,
    and its MACs (counted by forward hooks) and parameters are what the space says."""
    rng = np.random.default_rng(seed)
    x = torch.randn(2, *SHAPE)
    for w in space.sample(rng, vectors):
        pruned = prune(model, space, w).eval()
        with torch.no_grad():
            assert pruned(x).shape == (2, 5)
        assert measured_macs(pruned, x[:1])[0] == space.macs(w)
        assert sum(p.numel() for p in pruned.parameters()) == space.params(w)


def frozen_reasons(space) -> str:
    return " | ".join(why for _, why in space.frozen)


# ---------------------------------------------------------------- constructs


def test_channel_shuffle_is_frozen_and_the_rest_prunes():
    model = build(Shuffle())
    space, warned = traced(model)
    assert "mixes channels with other dimensions" in frozen_reasons(space)
    assert not any(p.startswith("body.a") for g in space.groups for p in g.producers)
    assert "head.0" in " ".join(space.names)
    assert len(warned) == 1 and "space.frozen" in warned[0] and "body.a.0" in warned[0]
    assert_prunes(model, space)


def test_fixed_size_split_freezes_its_input():
    model = build(FixedSplit())
    space, _ = traced(model)
    assert "split into fixed sizes [3, 5]" in frozen_reasons(space)
    assert "stem.0" not in " ".join(space.names)
    assert {"body.a.0", "body.b.0"} <= {p for g in space.groups for p in g.producers}
    assert_prunes(model, space)


def test_slice_residual_traces_fast_and_prunes_the_new_channels():
    model = build(SliceResidual(blocks=6), c_out=12)
    start = time.perf_counter()
    space, _ = traced(model)
    assert time.perf_counter() - start < 10
    assert "with fixed bounds" in frozen_reasons(space)
    assert space.groups and space.frozen
    assert_prunes(model, space)


def test_dual_path_concat_prunes_the_dense_part():
    model = build(DualPath(blocks=3), c_out=20)
    space, _ = traced(model)
    assert "with fixed bounds" in frozen_reasons(space)
    dense = [g for g in space.groups if any(p.startswith("body.blocks") for p in g.producers)]
    assert dense, space.names
    assert_prunes(model, space)


def test_grouped_conv_prunes_whole_groups():
    torch.manual_seed(0)
    model = nn.Sequential(conv_bn(3, 16), conv_bn(16, 16, groups=4), conv_bn(16, 8, 1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    space, _ = traced(model)
    group = next(g for g in space.groups if "1.0" in g.modules)
    assert group.width == 4  # the unit is a conv group of 4 channels
    assert {m.multiplicity for m in group.members} == {4}
    i = space.groups.index(group)
    w = space.full_widths
    w[i] = 2
    pruned = prune(model, space, w)
    assert pruned[1][0].groups == 2 and pruned[1][0].in_channels == 8
    assert not space.frozen
    assert_prunes(model, space)


@pytest.mark.parametrize("groups,width", [(4, 4), (1, 16)])
def test_group_norm_prunes_whole_norm_groups(groups, width):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(groups, 16), nn.ReLU(),
                          nn.Conv2d(16, 8, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 5)).eval()
    space, _ = traced(model)
    assert space.groups[0].width == width and not space.frozen
    pruned = prune(model, space, space.lower)
    assert pruned[1].num_channels % pruned[1].num_groups == 0
    assert_prunes(model, space)


def test_squeeze_excite_couples_the_gate_with_its_input():
    model = build(SqueezeExcite())
    space, _ = traced(model)
    group = next(g for g in space.groups if "body.fc2" in g.producers)
    assert {"stem.0", "body.dw.0"} <= set(group.producers)
    assert not space.frozen
    assert_prunes(model, space)


def test_layer_norm_and_layer_scale_are_cut_with_their_channels():
    model = build(LayerNormBlock())
    space, _ = traced(model)
    group = next(g for g in space.groups if "body.norm" in g.modules)
    assert ("body.gamma", "param") in {(m.module, m.dim) for m in group.members}
    pruned = prune(model, space, space.lower)
    assert pruned.body.gamma.shape == (space.lower[space.groups.index(group)],)
    assert not space.frozen
    assert_prunes(model, space)


# ---------------------------------------------------------------- the self-check


def test_self_check_freezes_what_the_tracer_cannot_see():
    model = build(HardCodedBias())
    space = trace(model, SHAPE, check=False)
    assert any("body.a.0" in g.producers for g in space.groups)
    checked, frozen = self_check(model, space)
    assert [name for name, _ in frozen] == ["body.a.0"]
    assert "the pruned model fails" in frozen[0][1]
    assert checked.frozen[-1] == frozen[0] and "body.a.0" not in checked.names
    assert_prunes(model, checked)


def test_self_check_catches_a_wrong_channel_mapping():
    model = build(Flip())
    space = trace(model, SHAPE, check=False)
    checked, frozen = self_check(model, space)
    assert [name for name, _ in frozen] == ["body.a.0"]
    assert "another function" in frozen[0][1]


def test_from_model_checks_by_default_and_warns_once_per_kind():
    model = build(HardCodedBias())
    space, warned = traced(model)
    assert "body.a.0" not in space.names and space.frozen
    assert len(warned) == 1 and "self-check" in warned[0]
    unchecked, _ = traced(model, check=False)
    assert "body.a.0" in unchecked.names


# ---------------------------------------------------------------- errors and limits


def test_input_shape_with_a_batch_dimension_is_refused():
    model = build(SqueezeExcite())
    with pytest.raises(TracingError, match="batch dimension.*e.g. \\(3, 16, 16\\)"):
        WidthSpace.from_model(model, (1, 3, 16, 16))


def test_a_forward_that_fails_on_the_input_shape_is_one_clear_error():
    with pytest.raises(TracingError, match="forward pass fails on one input of shape \\(4, 16, 16\\)"):
        WidthSpace.from_model(build(SqueezeExcite()), (4, 16, 16))


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(self.a(x))


def test_an_output_that_is_not_logits_is_refused_when_strict():
    with pytest.raises(TracingError, match="output has shape \\(1, 4, 16, 16\\).*\\(batch, classes\\)"):
        WidthSpace.from_model(Dense().eval(), SHAPE, strict=True)
    assert len(WidthSpace.from_model(Dense().eval(), SHAPE)) == 1  # fine to inspect

    class Pair(Dense):
        def forward(self, x):
            return self.b(self.a(x)).mean((2, 3)), x

    with pytest.raises(TracingError, match="returns a tuple"):
        WidthSpace.from_model(Pair().eval(), SHAPE)


def test_no_searchable_group_raises_only_when_strict():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    space = WidthSpace.from_model(model, SHAPE, ignore=["0"])
    assert len(space) == 0 and space.skipped == [("0", "ignored by '0'")]
    with pytest.raises(NoGroupsError, match="no searchable channel groups.*ignored by '0'"):
        WidthSpace.from_model(model, SHAPE, ignore=["0"], strict=True)
    with pytest.raises(NoGroupsError):
        space.require_groups()


class Slow(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = conv_bn(3, 8)
        self.fc = nn.Linear(8, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 1:  # the tracer's pass hangs
            time.sleep(30)
        return self.fc(self.a(x).mean((2, 3)))


def test_tracing_stops_at_its_time_limit():
    start = time.perf_counter()
    with pytest.raises(TracingTimeout, match="longer than 0.5 s.*space.trace_timeout_s"):
        WidthSpace.from_model(Slow().eval(), SHAPE, timeout_s=0.5)
    assert time.perf_counter() - start < 5


class DictNorm(nn.BatchNorm2d):
    """A norm layer Torch-Pruning's tracer fails on (its output is a dict)."""

    def forward(self, x):
        return {"out": super().forward(x)}


class DictBody(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(8, 8, 3, padding=1), DictNorm(8), conv_bn(8, 8)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))["out"]))


def test_a_layer_torch_pruning_fails_on_is_frozen_not_fatal():
    model = build(DictBody())
    space, warned = traced(model)
    assert "Torch-Pruning fails on DictNorm body.norm" in frozen_reasons(space)
    assert "body.a" not in space.names and "body.b.0" in " ".join(space.names)
    assert warned
    assert_prunes(model, space)
