"""Early stopping (ASHA) and the adaptive-BN fitness (EagleEye)."""
import copy
import json

import torch

from minis import digits_run
from structsearch import config as C
from structsearch import data as D
from structsearch import models
from structsearch.report import read_candidates
from structsearch.space import WidthSpace
from structsearch.surgery import prune
from structsearch.train import TrainSpec, evaluate, recalibrate_bn, train
from trainables.common import reset_parameters


def test_adaptive_bn_ranks_trained_above_random_init():
    torch.manual_seed(0)
    splits = D.load(name="digits", val_fraction=0.2)
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    train(model, splits.train, TrainSpec(epochs=3, lr=0.05, batch_size=64), seed=0)
    space = WidthSpace.from_model(model, splits.input_shape)
    widths = space.uniform(0.5)
    trained = prune(model, space, widths)
    # Pruning leaves BN statistics of the full network: recalibration is what makes it usable.
    random_init = copy.deepcopy(trained)
    reset_parameters(random_init)
    acc_trained = evaluate(recalibrate_bn(trained, splits.train, batches=20, batch_size=64), splits.val)["top1"]
    acc_random = evaluate(recalibrate_bn(random_init, splits.train, batches=20, batch_size=64), splits.val)["top1"]
    assert acc_trained > acc_random + 0.2, (acc_trained, acc_random)


def test_recalibrate_bn_resets_running_stats():
    splits = D.load(name="digits", val_fraction=0.2)
    model = models.build("small_cnn", num_classes=10, in_channels=1)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(100.0)
    recalibrate_bn(model, splits.train, batches=5, batch_size=64)
    assert bn.running_mean.abs().max() < 50
    assert bn.momentum == 0.1 and not model.training


def _mini(**search):
    # The final stage as the minis leave it (a 0-epoch fine-tune, no trial): not what these test.
    return C.from_dict(digits_run(search={"candidates": 6, **search}))


def test_asha_stops_candidates_and_still_picks_a_winner(tmp_path, ray_local):
    from structsearch.pipeline import run_search

    # ABC: each phase is one batch of parallel trials, which ASHA's rungs compare; a stopped
    # move is told its accuracy at the rung it stopped at (the colony's greedy step drops it).
    cfg = _mini(scheduler="asha", epochs=4, candidates=8, searcher="abc",
                params={"abc": {"food_number": 4}})
    run = run_search(cfg, out=str(tmp_path / "run"))
    rows = read_candidates(run / "candidates.csv")
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert len(rows) == 8 and stopped, [r["status"] for r in rows]
    assert all(r["epochs"] < 4 and r["val_acc"] is not None for r in stopped)
    summary = json.loads((run / "summary.json").read_text())
    winner = summary["winner"]
    assert winner["epochs"] == 4
    assert winner["trial_id"] not in {r["trial_id"] for r in stopped}
    # The journal keeps ASHA's rungs (as plain data), so a resumed search compares against the
    # same results.
    from ray.tune.schedulers import ASHAScheduler
    from structsearch.journal import journal_path, load_journal
    from structsearch.schedulers import make_scheduler
    journal = load_journal(journal_path(run))
    scheduler = make_scheduler(cfg.search, state=journal.scheduler)
    assert isinstance(scheduler, ASHAScheduler)
    in_rungs = {tid for bracket in scheduler._brackets
                for _, recorded in bracket._rungs for tid in recorded}
    assert in_rungs == {t["trial_id"] for t in journal.trials}
    phases = [phase for _, phase, _ in journal.core["phase_log"]]
    assert phases[:2] == ["init", "employed"]
    stopped_fitness = {tuple(r["widths"]): r["val_acc"] for r in stopped}
    known = journal.core["known"]
    assert all(known[w] == acc for w, acc in stopped_fitness.items())


def test_two_stage_search_trains_the_best_adaptive_bn_candidates(tmp_path, ray_local):
    """EagleEye's protocol: 6 candidates scored by adaptive BN (no training), the best 2 by
    that score trained one epoch; the winner is a trained one."""
    import json

    from structsearch.pipeline import run_search

    run = run_search(_mini(fitness="adaptive_bn", candidates=6, train_top=2),
                     out=str(tmp_path / "run"))
    rows = read_candidates(run / "candidates.csv")
    first = [r for r in rows if r["epochs"] == 0]
    trained = [r for r in rows if r["epochs"] == 1]
    assert len(first) == 6 and all(r["status"] == "ok" for r in first)
    assert max(r["val_acc"] for r in first) > 0.3
    best_two = sorted(first, key=lambda r: (-r["val_acc"], r["macs"]))[:2]
    assert sorted(r["widths"] for r in trained) == sorted(r["widths"] for r in best_two)
    assert {r["trial_id"] for r in trained} == {r["trial_id"] + "-trained" for r in best_two}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["search"]["trained"] == 2 and summary["search"]["fitness"] == "adaptive_bn"
    assert summary["winner"]["trial_id"].endswith("-trained") and summary["winner"]["epochs"] == 1
    assert summary["winner"]["val_acc"] == max(r["val_acc"] for r in trained)
