"""Every searcher's state survives JSON (structsearch.plain) with trials in flight: a fresh core
loaded from it proposes exactly what the original goes on to propose (no Ray, no pickle)."""
import json

import numpy as np
import pytest

import searchers
from searchers import FINISHED
from structsearch import plain
from test_searcher_contract import _RESUME_PARAMS, objective, params_for, space  # noqa: F401 (fixture)

COMPOSITES = ["random+uniform", "tpe+abc"]


def _params(name, space):
    """What test_searchers passes, with small start-up phases so that the saved state lies in
    each algorithm's model-based phase; keyed by part for a composite."""
    def one(part):
        return {**(params_for(part, space) or {}), **_RESUME_PARAMS.get(part, {})} or None
    if "+" in name:
        return {part: one(part) for part in searchers.parts(name)}
    return one(name)


def _build(name, space, seed):
    return searchers.build(name, space, limit=0.5 * space.full_macs, num_candidates=12, seed=seed,
                           params=_params(name, space))


def _drive(core, space, queue, steps=None):
    """Ask/tell with up to two trials in flight (``queue``: their tokens, oldest first; left as
    they are after ``steps`` proposals). Every fifth proposal fails. Returns what was proposed."""
    out = []

    def tell_oldest():
        token = queue.pop(0)
        widths = core.pending[token].widths
        core.tell(token, None if token % 5 == 4 else objective(space, widths))

    while steps is None or len(out) < steps:
        proposal = core.ask()
        if proposal is None:  # waits for a result: one must be in flight
            assert queue, "None with nothing in flight is a stall"
            tell_oldest()
            continue
        if proposal == FINISHED:
            if not queue:
                break
            tell_oldest()
            continue
        out.append((proposal.token, proposal.widths, proposal.origin, proposal.searcher,
                    json.dumps(plain.encode(proposal.options), sort_keys=True)))
        queue.append(proposal.token)
        if len(queue) > 2:
            tell_oldest()
    return out


def _same(a, b) -> bool:
    """Deep equality of plain data (numpy arrays by dtype, shape and values; sets by members,
    whatever their iteration order)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _saved(core):
    """``core.state()`` after a trip through JSON."""
    return plain.decode(json.loads(json.dumps(plain.encode(core.state()))))


@pytest.mark.parametrize("name", searchers.names() + COMPOSITES)
def test_json_state_with_trials_in_flight_continues_identically(space, name):
    ref = _build(name, space, seed=4)
    queue = []
    first = _drive(ref, space, queue, steps=5)
    assert len(first) == 5 and queue, "trials are in flight when the state is saved"
    text = json.dumps(plain.encode(ref.state()))  # raises TypeError for anything not plain
    state = plain.decode(json.loads(text))

    fresh = _build(name, space, seed=99)
    fresh.load_state(state)
    assert json.dumps(plain.encode(state)) == text, "loading leaves the given state whole"
    assert _same(_saved(fresh), _saved(ref)), "the loaded core's state is the saved one"
    assert sorted(fresh.pending) == sorted(queue)

    rest_ref = _drive(ref, space, list(queue))
    rest = _drive(fresh, space, list(queue))
    assert rest == rest_ref  # may be empty: a schedule can end with the trials in flight
    assert fresh.history and fresh.history == ref.history and fresh.asked == ref.asked
    assert _same(_saved(fresh), _saved(ref))
    assert ref.ask() == FINISHED and fresh.ask() == FINISHED


@pytest.mark.parametrize("name", ["tpe", "nsga2"])
def test_optuna_state_holds_no_study(space, name):
    core = _build(name, space, seed=0)
    _drive(core, space, [], steps=3)
    state = core.state()
    assert "study" not in state and "_current" not in state
    assert all(isinstance(k, int) and isinstance(n, int) for k, n in state["trials"].items())
    assert state["log"][0][0] == "enqueue"  # the seeded proposal goes in first


def test_optuna_replay_refuses_a_log_that_does_not_reproduce(space):
    core = _build("tpe", space, seed=0)
    _drive(core, space, [], steps=6)
    state = plain.decode(json.loads(json.dumps(plain.encode(core.state()))))
    # Corrupt the last sampled trial's parameters: replay must notice, not continue silently.
    index = max(i for i, op in enumerate(state["log"]) if op[0] == "suggest")
    op = state["log"][index]
    op[2] = [(v + 1) % len(space.grid(i)) for i, v in enumerate(op[2])]
    with pytest.raises(ValueError, match="diverged"):
        _build("tpe", space, seed=99).load_state(state)
