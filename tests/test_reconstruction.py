"""He et al.'s channel pruning as the paper: LASSO at each candidate's own width, then the
least-squares reconstruction of the consumers, on a trained baseline (CPU, bundled digits)."""
import copy
import functools

import numpy as np
import torch

from structsearch import criteria, data, models
from structsearch.criteria.lasso import lasso_select_gram
from structsearch.space import WidthSpace
from structsearch.surgery import prune, reconstruct
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


def output_error(model, pruned, split) -> float:
    """||f(x) - f_pruned(x)||^2 / ||f(x)||^2 of the logits on held-out (validation) images."""
    x = torch.cat([xb for xb, _ in split.batches(256, shuffle=False, augment=False)])
    with torch.no_grad():
        y, y_hat = model(x), pruned.eval()(x)
    return float(((y - y_hat) ** 2).sum() / (y ** 2).sum())


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
    err_plain, err_refit = output_error(model, plain, splits.val), output_error(model, refit, splits.val)
    acc_plain = evaluate(plain, splits.val)["top1"]
    acc_refit = evaluate(refit, splits.val)["top1"]
    assert err_refit < 0.8 * err_plain, (err_plain, err_refit)
    assert acc_refit > acc_plain, (acc_plain, acc_refit)

# The pipeline side (every candidate of a lasso search reconstructed) is checked by
# tests/test_sensitivity_command.py's mini search, which runs with criterion lasso.
