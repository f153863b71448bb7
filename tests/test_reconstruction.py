"""He et al.'s channel pruning as the paper: LASSO at each candidate's own width, then the
least-squares reconstruction of the consumers, on a trained baseline (CPU, bundled digits)."""
import copy
import functools

import numpy as np
import pytest
import torch

from structsearch import criteria, data, models
from structsearch.criteria.lasso import lasso_select_gram
from structsearch.space import WidthSpace
from structsearch.surgery import output_error, prune, reconstruct
from structsearch.train import TrainSpec, evaluate, train


@functools.lru_cache(maxsize=None)
def trained():
    torch.manual_seed(0)
    splits = data.load(data.DataSpec(name="digits", val_fraction=0.2))
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    train(model, splits.train, TrainSpec(epochs=3, lr=0.05, batch_size=64), seed=0)
    space = WidthSpace.from_model(model, splits.input_shape)
    batches = list(splits.train.subset(640, seed=0).batches(128, shuffle=False, augment=False))
    return model.eval(), space, splits, batches


def held_out(splits):
    return splits.val.batches(256, shuffle=False, augment=False)


def test_lasso_selects_at_each_width_and_reconstruction_beats_no_reconstruction():
    model, space, splits, batches = trained()
    lasso = criteria.get("lasso")
    scores = lasso.scores(model, space, batches)
    state = lasso.selection_state(model, space, batches)
    widths = space.uniform(0.4)
    keep = lasso.select(state, scores, widths)
    assert [len(k) for k in keep.values()] == list(widths)
    # Each group's channels are the non-zero betas of the alpha bisected to this exact width.
    for g, gram in enumerate(state):
        _, beta = lasso_select_gram(gram, gram.sum(1), int(widths[g]))
        assert (beta != 0).sum() == widths[g]
        np.testing.assert_array_equal(keep[g], np.nonzero(beta)[0])
    plain = prune(model, space, widths, keep=keep)
    refit = copy.deepcopy(plain)
    errors = reconstruct(refit, model, space, keep, batches, seed=0)
    assert errors and all(after <= before for before, after in errors.values())
    err_plain, err_refit = (output_error(model, m, held_out(splits)) for m in (plain, refit))
    acc_plain = evaluate(plain, splits.val)["top1"]
    acc_refit = evaluate(refit, splits.val)["top1"]
    assert err_refit < 0.8 * err_plain, (err_plain, err_refit)
    assert acc_refit > acc_plain, (acc_plain, acc_refit)

# The pipeline side (every candidate of a lasso search reconstructed) is checked by
# tests/test_sensitivity_command.py's mini search, which runs with criterion lasso.


# ---------------------------------------------------------------- He et al.'s sequential order
def test_sequential_first_group_is_the_joint_problem():
    """Before anything is cut, the cross statistics are the baseline's Gram and q = G 1."""
    from structsearch.criteria.lasso import consumer_grams
    from structsearch.criteria.sequential import cross_statistics, group_order

    model, space, _, batches = trained()
    first = group_order(model, space)[0]
    assert first == space.names.index("features.0")
    gram, q = cross_statistics(copy.deepcopy(model), model, space, first, [x for x, _ in batches],
                               None, np.random.default_rng(0))
    joint = consumer_grams(model, space, [x for x, _ in batches], groups=[first],
                           points_per_image=None)[first].numpy()
    np.testing.assert_allclose(gram, joint, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(q, joint.sum(1), rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_sequential_pass_is_the_pruned_and_refit_network(ratio):
    """The pass's full-shape network (cut channels zeroed in their consumers) computes what the
    physically pruned network computes after the same least-squares refits, so each group was
    selected on the network its predecessors really left; the first group's choice is the
    joint one (nothing is cut before it)."""
    from structsearch.criteria.sequential import sequential_pass

    model, space, splits, batches = trained()
    widths = space.uniform(ratio)
    keep, current = sequential_pass(model, space, widths, batches, points_per_image=None)
    assert [len(keep[g]) for g in range(len(widths))] == list(widths)
    pruned = prune(model, space, widths, keep=keep)
    reconstruct(pruned, model, space, keep, batches, points_per_image=None)
    x = torch.cat([xb for xb, _ in splits.val.batches(256, shuffle=False, augment=False)])
    with torch.no_grad():
        a, b = current(x), pruned.eval()(x)
    assert float((a - b).abs().max()) < 1e-3 * float(a.abs().max())
    lasso = criteria.get("lasso", points_per_image=10 ** 6)  # every position, as the pass
    state = lasso.selection_state(model, space, batches)
    joint = lasso.select(state, lasso.scores(model, space, batches), widths)
    np.testing.assert_array_equal(keep[0], joint[0])


def test_sequential_order_is_a_criterion_parameter_checked_before_ray():
    from structsearch import config as C
    from structsearch.config import ConfigError
    from structsearch.preflight import run_criterion

    cfg = C.from_dict({"budget": {"macs_ratio": 0.5}, "search": {
        "criterion": "lasso", "criteria": {"lasso": {"order": "sequential"}}}})
    crit = run_criterion(cfg)
    assert crit.order == "sequential" and crit.selects_on_model and not crit.selects_per_width
    bad = C.from_dict({"budget": {"macs_ratio": 0.5}, "search": {
        "criterion": "lasso", "criteria": {"lasso": {"order": "zigzag"}}}})
    with pytest.raises(ConfigError, match=r"search\.criteria\.lasso: order must be joint"):
        run_criterion(bad)
    with pytest.raises(ConfigError, match=r"search\.criteria\.lasso: .*unexpected keyword"):
        run_criterion(C.from_dict({"budget": {"macs_ratio": 0.5},
                                   "search": {"criteria": {"lasso": {"ordre": "joint"}}}}), "lasso")


@pytest.mark.parametrize("order", ["joint", "sequential"])
def test_candidate_builder_selects_by_the_configured_order_and_refits(order):
    """trainables' candidate builder: the channels the run's lasso order picks, then the
    least-squares refit (held-out output error below the plain cut)."""
    from structsearch.criteria.sequential import sequential_keep
    from trainables.common import TrialSetup, build_pruned_model, needs_batches

    model, space, splits, batches = trained()
    lasso = criteria.get("lasso", order=order)
    scores = lasso.scores(model, space, batches)
    setup = TrialSetup("small_cnn", {"num_classes": 10, "in_channels": 1},
                       data.DataSpec(name="digits", val_fraction=0.2), space, scores,
                       TrainSpec(epochs=1), criterion="lasso", criterion_params={"order": order},
                       selection=lasso.selection_state(model, space, batches)
                       if lasso.selects_per_width else None, reconstruct=True)
    assert needs_batches(setup, inherit=True) and not needs_batches(setup, inherit=False)
    widths = space.uniform(0.4)
    built = build_pruned_model(setup, model.state_dict(), widths, inherit=True, batches=batches)
    expected = sequential_keep(model, space, widths, batches, scores=scores) \
        if order == "sequential" else lasso.select(setup.selection, scores, widths)
    plain = prune(model, space, widths, keep=expected)
    # The kept channels are the order's: the first layer's filters are its kept filters.
    first = dict(model.named_modules())["features.0"].weight
    np.testing.assert_allclose(built.features[0].weight.detach(), first[expected[0]].detach())
    built_error = output_error(model, built, held_out(splits))
    assert built_error < 0.8 * output_error(model, plain, held_out(splits))


def test_output_error_is_the_relative_squared_error_over_all_batches():
    model, space, splits, _ = trained()
    pruned = prune(model, space, space.uniform(0.5))
    x = torch.cat([xb for xb, _ in held_out(splits)])
    with torch.no_grad():
        y, y_hat = model(x), pruned(x)
    expected = float(((y - y_hat) ** 2).sum() / (y ** 2).sum())
    assert output_error(model, pruned, held_out(splits)) == pytest.approx(expected, rel=1e-5)
    assert expected > 0.01 and output_error(model, copy.deepcopy(model), held_out(splits)) == 0
    assert not model.training and not pruned.training
