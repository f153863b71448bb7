"""ASHA's state as plain data: a scheduler rebuilt from its JSON stops trials as the original."""
import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest

from structsearch import plain
from structsearch.config import SearchConfig
from structsearch.schedulers import make_scheduler, scheduler_state

ASHA = SearchConfig(scheduler="asha", epochs=8)


def _trial(trial_id):
    return SimpleNamespace(trial_id=trial_id)  # all ASHA reads of a trial


def _result(epoch, acc):
    return {"training_iteration": epoch, "val_acc": acc}


def _feed(scheduler, results, added):
    """``results``: (trial id, epoch, val_acc); adds unseen trials first. Returns the actions."""
    actions = []
    for trial_id, epoch, acc in results:
        if trial_id not in added:
            scheduler.on_trial_add(None, _trial(trial_id))
            added.add(trial_id)
        actions.append(scheduler.on_trial_result(None, _trial(trial_id), _result(epoch, acc)))
    return actions


def _first_results():
    """Eight trials reaching rungs 1, 2 and 4 with varied accuracies, in turns (Tune interleaves
    the trials' results)."""
    rng = np.random.default_rng(0)
    return [(f"t{k}", epoch, float(0.2 + 0.6 * rng.random()))
            for epoch in (1, 2, 3, 4) for k in range(8)]


def _later_results():
    rng = np.random.default_rng(1)
    out = []
    for k in range(3, 14):  # trials already known (t3..t7) and new ones (t8..t13)
        for epoch in range(1, 9):
            out.append((f"t{k}", epoch, float(0.2 + 0.6 * rng.random())))
    return out


def _cutoffs(scheduler):
    return [[b.cutoff(recorded) for _, recorded in b._rungs] for b in scheduler._brackets]


def test_none_unless_asha_with_training_and_two_epochs():
    assert make_scheduler(SearchConfig()) is None
    assert make_scheduler(SearchConfig(scheduler="asha", epochs=1)) is None
    assert make_scheduler(SearchConfig(scheduler="asha", epochs=4, fitness="adaptive_bn")) is None
    assert scheduler_state(None) is None
    with pytest.raises(ValueError, match="runs no scheduler"):
        make_scheduler(SearchConfig(), state=scheduler_state(make_scheduler(ASHA)))


def test_settings_follow_the_config():
    scheduler = make_scheduler(ASHA)
    state = scheduler_state(scheduler)
    assert state["metric"] == "val_acc" and state["mode"] == "max" and state["max_t"] == 8
    assert state["milestones"] == [[8, 4, 2, 1]] and state["reduction_factor"] == 2


@pytest.mark.parametrize("codec", ["json", "plain"])
def test_rebuilt_scheduler_decides_as_the_original(codec):
    ref = make_scheduler(ASHA)
    added = set()
    first = _feed(ref, _first_results(), added)
    assert "STOP" in first and "CONTINUE" in first, "the first results exercise the cutoffs"
    for trial_id in ("t0", "t1"):  # finished: Tune completes and forgets them
        ref.on_trial_complete(None, _trial(trial_id), _result(4, 0.5))
    ref.on_trial_remove(None, _trial("t2"))
    state = scheduler_state(ref)
    assert [bool(r) for r in state["rungs"][0]] == [False, True, True, True], "rungs 1, 2, 4 recorded"
    saved = copy.deepcopy(state)
    if codec == "json":
        text = json.dumps(state)
        loaded = json.loads(text)
    else:
        text = json.dumps(plain.encode(state))
        loaded = plain.decode(json.loads(text))
    assert loaded == saved, "the saved state comes back whole"

    clone = make_scheduler(ASHA, state=loaded)
    assert state == saved, "saving does not change the scheduler's state"
    assert scheduler_state(clone) == state
    assert _cutoffs(clone) == _cutoffs(ref)
    later = _later_results()
    expected = _feed(ref, later, set(added))
    got = _feed(clone, later, set(added))
    assert got == expected
    assert "STOP" in expected and "CONTINUE" in expected
    assert _feed(make_scheduler(ASHA), later, set()) != expected, "the saved rungs matter"
    assert _cutoffs(clone) == _cutoffs(ref)
    assert clone.debug_string() == ref.debug_string()
    assert scheduler_state(clone) == scheduler_state(ref)


def test_bracket_decisions_on_further_results():
    """Ray's _Bracket API directly: the rebuilt bracket stops at the same cutoffs."""
    ref = make_scheduler(ASHA)
    bracket = ref._brackets[0]
    for k in range(6):
        bracket.on_result(_trial(f"b{k}"), 1, 0.1 * k)
        bracket.on_result(_trial(f"b{k}"), 2, 0.1 * k + 0.05)
    clone = make_scheduler(ASHA, state=json.loads(json.dumps(scheduler_state(ref))))
    cb = clone._brackets[0]
    for k, (epoch, acc) in enumerate([(1, 0.05), (1, 0.45), (2, 0.2), (2, 0.5), (4, 0.3)]):
        trial = _trial(f"n{k}")
        assert cb.on_result(trial, epoch, acc) == bracket.on_result(trial, epoch, acc)
        assert cb.cutoff(cb._rungs[-1][1]) == bracket.cutoff(bracket._rungs[-1][1])


def test_state_from_a_different_config_is_refused():
    ref = make_scheduler(ASHA)
    _feed(ref, _first_results(), set())
    state = json.loads(json.dumps(scheduler_state(ref)))
    with pytest.raises(ValueError, match="max_t"):
        make_scheduler(SearchConfig(scheduler="asha", epochs=4), state=state)
