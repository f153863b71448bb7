"""DropNet's schedule: explicit channels, re-scoring from each trained step, reset to initial weights."""

import numpy as np
import pytest
import torch

from searchers.core import FINISHED
from searchers.dropnet import DropNetSchedule
from structsearch import data, models
from structsearch.criteria import get
from structsearch.space import WidthSpace
from structsearch.train import TrainSpec
from trainables.common import TrialSetup, build_pruned_model, kept_channel_scores

SMALL = {"num_classes": 10, "in_channels": 1}


@pytest.fixture(scope="module")
def small():
    model = models.build("small_cnn", **SMALL)
    space = WidthSpace.from_model(model, (1, 28, 28), model_name="small_cnn", model_kwargs=SMALL)
    return model, space


def _core(space, **kw):
    rng = np.random.default_rng(0)
    scores = [rng.random(g.width) for g in space.groups]
    kw.setdefault("limit", space.full_macs)
    return DropNetSchedule(space, num_candidates=10, scores=scores, seed=0, **kw), scores


def test_steps_keep_subsets_and_drop_the_lowest_reported_channels(small):
    _, space = small
    core, baseline = _core(space, p=0.25, kappa=0.5)
    first = core.ask()
    assert first.options["init"] == "original" and first.options["channel_scores"] is True
    keep0 = [np.array(k) for k in first.options["keep"]]
    assert [len(k) for k in keep0] == list(first.widths) == [g.width for g in space.groups]
    assert core.ask() is None, "the schedule waits for each step's result"

    # The trained step reports its own activations: make channel 0..2 of group 1 the weakest
    # and group 0's channels strong, so the global drop must take group 1's first channels.
    reported = [np.full(len(k), 10.0) + np.arange(len(k)) for k in keep0]
    reported[1][:3] = [0.01, 0.02, 0.03]
    core.tell(first.token, 0.9, {"channel_scores": [v for r in reported for v in r.tolist()]})
    second = core.ask()
    keep1 = [np.array(k) for k in second.options["keep"]]
    total = sum(len(k) for k in keep0)
    assert sum(len(k) for k in keep1) == total - int(np.ceil(0.25 * total))
    for k0, k1 in zip(keep0, keep1):
        assert set(k1) <= set(k0)
    assert not {0, 1, 2} & set(keep1[1]), "the three weakest reported channels are dropped first"
    # Within a group the survivors are the best-reported channels, not the baseline's ranking.
    for g, (k0, k1) in enumerate(zip(keep0, keep1)):
        best = k0[np.argsort(-reported[g], kind="stable")[: len(k1)]]
        assert sorted(best) == list(k1)
    assert core.unscored == 0


def test_min_layer_drops_p_of_every_group_and_stops_below_kappa(small):
    _, space = small
    core, _ = _core(space, p=0.5, kappa=0.8, mode="min_layer", reinit=False, rescore=False)
    first = core.ask()
    assert first.options["init"] == "inherit" and "channel_scores" not in first.options
    core.tell(first.token, 0.9)
    second = core.ask()
    assert list(second.widths) == [max(lo, w // 2) for lo, w in zip(space.lower, first.widths)]
    core.tell(second.token, 0.71)  # below 0.8 x 0.9
    assert core.ask() == FINISHED


def test_state_round_trip_continues_with_the_same_channels(small):
    _, space = small
    a, _ = _core(space)
    p = a.ask()
    scores = [list(np.linspace(1, 2, len(k))) for k in p.options["keep"]]
    a.tell(p.token, 0.9, {"channel_scores": scores})
    b, _ = _core(space)
    b.load_state(a.state())
    pa, pb = a.ask(), b.ask()
    assert pa.options == pb.options and pa.widths == pb.widths


def test_missing_channel_scores_fall_back_and_are_counted(small):
    _, space = small
    core, baseline = _core(space)
    p = core.ask()
    core.tell(p.token, 0.9)  # a trial that did not report activations
    assert core.unscored == 1
    nxt = core.ask()
    assert all(set(k1) <= set(k0) for k0, k1 in zip(p.options["keep"], nxt.options["keep"]))


def _setup(space, model):
    spec = data.DataSpec(name="digits", val_fraction=0.2)
    return TrialSetup("small_cnn", SMALL, spec, space, get("l1").scores(model, space),
                      TrainSpec(epochs=1, lr=0.02, batch_size=64), seed=3)


def test_original_init_is_the_seeded_initial_network_cut_to_the_kept_channels(small):
    model, space = small
    setup = _setup(space, model)
    widths = [g.width // 2 for g in space.groups]
    keep = [list(range(1, 2 * w, 2)) for w in widths]  # every odd channel
    a = build_pruned_model(setup, model.state_dict(), widths, inherit=False, keep=keep, original_init=True)
    b = build_pruned_model(setup, None, widths, inherit=False, keep=keep, original_init=True)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    torch.manual_seed(setup.seed)
    initial = models.build("small_cnn", **SMALL)
    first_conv = [m for m in initial.modules() if isinstance(m, torch.nn.Conv2d)][0]
    pruned_conv = [m for m in a.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert torch.equal(pruned_conv.weight, first_conv.weight[keep[0]])
    with pytest.raises(ValueError, match="exactly widths"):
        build_pruned_model(setup, None, [w + 1 for w in widths], inherit=False, keep=keep)


def test_kept_channel_scores_match_the_full_models_for_the_first_group(small):
    # The first group's post-BN activations depend only on the image and its own channels, so
    # the pruned model must score its kept channels exactly as the full model scored them.
    model, space = small
    setup = _setup(space, model)
    splits = data.load(setup.data_spec)
    from structsearch.criteria.activation import pooled_activation
    from structsearch.criteria.features import feature_scores
    full = feature_scores(model, space, splits.train, 3, pooled_activation, normalize=False)
    widths = [g.width - 3 for g in space.groups]
    keep = [sorted(np.random.default_rng(g).choice(gr.width, w, replace=False))
            for g, (gr, w) in enumerate(zip(space.groups, widths))]
    pruned = build_pruned_model(setup, model.state_dict(), widths, inherit=True, keep=keep)
    got = kept_channel_scores(pruned, setup, widths, splits.train, num_batches=3)
    assert [len(s) for s in got] == widths
    np.testing.assert_allclose(got[0], full[0][keep[0]], rtol=1e-5)


def test_kept_channel_scores_on_a_resnet_with_padded_shortcuts():
    model = models.build("cifar_resnet20", num_classes=10)
    space = WidthSpace.from_model(model, (3, 32, 32), model_name="cifar_resnet20",
                                  model_kwargs={"num_classes": 10})
    setup = TrialSetup("cifar_resnet20", {"num_classes": 10}, data.DataSpec(name="digits"), space,
                       get("l1").scores(model, space), TrainSpec(epochs=1), seed=0)
    widths = [max(1, g.width // 2) for g in space.groups]
    pruned = build_pruned_model(setup, model.state_dict(), widths, inherit=True)
    got = kept_channel_scores(pruned, setup, widths, [torch.randn(8, 3, 32, 32)], num_batches=1)
    assert [len(s) for s in got] == widths
    assert all(np.isfinite(s).all() for s in map(np.asarray, got))


def test_kept_channel_scores_with_single_channel_groups():
    # DropNet drives groups to their floor; a floor of one channel must still be scored.
    model = models.build("small_cnn", **SMALL)
    space = WidthSpace.from_model(model, (1, 8, 8), min_ratio=0.01)
    assert min(space.lower) == 1
    setup = TrialSetup("small_cnn", SMALL, data.DataSpec(name="digits"), space,
                       get("l1").scores(model, space), TrainSpec(epochs=1), seed=0)
    widths = list(space.lower)
    pruned = build_pruned_model(setup, model.state_dict(), widths, inherit=True)
    got = kept_channel_scores(pruned, setup, widths, [torch.randn(4, 1, 8, 8)], num_batches=1)
    assert [len(s) for s in got] == widths == [1] * len(space)


def test_unusable_channel_scores_fall_back_and_a_failing_first_step_is_retried_twice(small):
    _, space = small
    core, _ = _core(space)
    p = core.ask()
    core.tell(p.token, 0.9, {"channel_scores": [1.0]})  # wrong length
    core.tell(core.ask().token, 0.85, {"channel_scores": "not a list"})
    assert core.unscored == 2
    nxt = core.ask()
    assert nxt is not None and nxt != FINISHED, "unscored steps fall back; the schedule goes on"

    stuck, _ = _core(space)
    for _ in range(3):
        stuck.tell(stuck.ask().token, None)  # the first step fails every time
    assert stuck.ask() == FINISHED


def test_activation_criterion_raw_scores_compare_across_groups(small):
    model, space = small
    splits = data.load(data.DataSpec(name="digits", val_fraction=0.2))
    normalised = get("activation", num_batches=2).scores(model, space, splits.train)
    raw = get("activation", num_batches=2, normalize=False).scores(model, space, splits.train)
    for n, r in zip(normalised, raw):
        assert n.max() == pytest.approx(1.0)
        np.testing.assert_allclose(n, r / r.max())
