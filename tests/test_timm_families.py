"""timm CNN families at 64x64: tracing never hangs or raises; every channel group is either
pruned (random widths give a working model whose MACs equal the closed form, the package's own
per-layer count and fvcore's) or frozen with its reason; full widths reproduce the model."""

from __future__ import annotations

import functools
import time
import warnings

import pytest

timm = pytest.importorskip("timm")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from structsearch import WidthSpace, prune  # noqa: E402
from structsearch.space import TracingWarning  # noqa: E402
from structsearch.tracing import measured_macs  # noqa: E402

from counters import count_macs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 64, 64)
LIMIT_S = 60  # per model: tracing + self-check

# name -> (construct it covers, a reason some of its groups must be frozen for, or None when
# every traced group must be searchable). Small variants, to keep the module fast.
FAMILIES = {
    "resnet10t": ("residual stages, deep stem", None),
    "regnetx_002": ("grouped convs (whole conv groups)", None),
    "mobilenetv2_050": ("depthwise, inverted residual", None),
    "mobilenetv3_small_050": ("squeeze-excitation, hard-swish", None),
    "tinynet_e": ("efficientnet blocks (SE, SiLU)", None),
    "lcnet_050": ("depthwise-separable, SE", None),
    "ghostnet_100": ("ghost concat + slice of the full tensor", None),
    "dpn68": ("dual-path concatenation", "with fixed bounds"),
    "rexnet_100": ("partial (slice) residual", "with fixed bounds"),
    "densenet121": ("dense concatenation", None),
    "cspdarknet53": ("cross-stage partial split", "split into fixed sizes"),
    "res2net50_14w_8s": ("hierarchical split", "split into fixed sizes"),
    "mixnet_s": ("mixed depthwise split", "split into fixed sizes"),
    "hrnet_w18_small": ("multi-resolution fusion (upsample + add)", None),
    "dla34": ("tree aggregation", None),
    "selecsls42b": ("concatenation", None),
    "ese_vovnet19b_dw": ("one-shot aggregation, effective SE", None),
    "convnext_atto": ("LayerNorm, channels-last linear, layer scale", None),
    "nf_regnet_b0": ("weight-standardised convs, no norm", None),
}


@functools.lru_cache(maxsize=None)
def traced(name: str):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TracingWarning)
        space = WidthSpace.from_model(model, SHAPE, timeout_s=LIMIT_S, model_name=name)
    seconds = time.perf_counter() - start
    warned = [str(w.message) for w in caught if issubclass(w.category, TracingWarning)]
    return model, space, warned, seconds


def conv_linear_macs(model) -> int:
    """fvcore's count of conv + linear MACs. For these CNNs it equals ours exactly: their only
    matrix products are linear layers (fvcore's addmm / matmul) and none has attention."""
    return count_macs(model, SHAPE)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_traces_in_time_and_reports_every_frozen_group(name):
    model, space, warned, seconds = traced(name)
    assert seconds < LIMIT_S
    assert len(space) >= 5, f"{name}: only {space.names}"
    _, must_freeze = FAMILIES[name]
    reasons = " | ".join(why for _, why in space.frozen)
    if must_freeze is None:
        assert not space.frozen, f"{name}: {space.frozen[:3]}"
    else:
        assert must_freeze in reasons
    for group_name, why in space.frozen:
        assert why and "\n" not in why and group_name not in space.names
        assert (group_name, why) in space.skipped
    assert len(warned) >= (1 if space.frozen else 0)
    assert all("\n" not in w and "space.frozen" in w for w in warned)
    assert len(set(space.names)) == len(space.names)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_prunes_random_widths_with_exact_macs(name):
    model, space, _, _ = traced(name)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        full = prune(model, space, space.full_widths).eval()
        torch.testing.assert_close(full(x), model(x), rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(0)
    for w in space.sample(rng, 2):
        pruned = prune(model, space, w).eval()
        with torch.no_grad():
            out = pruned(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        ours, _ = measured_macs(pruned, x[:1])
        assert ours == space.macs(w) == conv_linear_macs(pruned), f"{name} widths {list(w)}"
        assert sum(p.numel() for p in pruned.parameters()) == space.params(w)


def test_grouped_convs_prune_whole_groups():
    model, space, _, _ = traced("regnetx_002")
    modules = dict(model.named_modules())
    grouped = [g for g in space.groups for m in g.members
               if getattr(modules.get(m.module), "groups", 1) > 1 and m.dim == "in"]
    assert grouped and all(m.multiplicity > 1 for g in grouped for m in g.members)


def test_layer_scale_is_a_member_of_its_group():
    _, space, _, _ = traced("convnext_atto")
    dims = {m.dim for g in space.groups for m in g.members}
    assert "param" in dims
