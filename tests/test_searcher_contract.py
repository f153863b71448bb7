"""One contract over every searcher, against a synthetic objective on a real WidthSpace (no Ray)."""
import json

import numpy as np
import pytest

import searchers
from searchers import FINISHED, Proposal
from structsearch import models, plain
from structsearch.space import WidthSpace


@pytest.fixture(scope="module")
def space():
    return WidthSpace.from_model(models.build("cifar_resnet20"), (3, 32, 32), round_to=2)


def objective(space, widths):
    """Smooth synthetic fitness: prefers wide early layers, in [0, 1]."""
    w = np.asarray(widths) / np.asarray(space.full_widths)
    weights = np.linspace(2.0, 0.5, len(w))
    return float((weights * np.sqrt(w)).sum() / weights.sum())


# Every registered searcher (the registry is the one list of names) and two composites.
COMPOSITES = ["random+uniform", "abc+uniform"]
NAMES = searchers.names() + COMPOSITES
_CHAINS = {}
# Test-size settings for some searchers (optional: a new searcher needs no entry).
_SMALL = {"dropnet": {"kappa": 0.5}}


def provided(need, space):
    """What the pipeline would provide for ``need`` (seed vectors, channel scores, chains)."""
    if need.kind == "seed_proposals":
        ratios = (0.9, 0.7, 0.6, 0.5, 0.4, 0.3) if need.default else (0.6,)
        return [{"origin": f"uniform{r}", "widths": list(space.uniform(r))} for r in ratios]
    if need.kind == "channel_scores":
        rng = np.random.default_rng(0)
        return [rng.random(g.width) for g in space.groups]
    if need.kind == "dmcp_chains":
        if id(space) not in _CHAINS:
            from structsearch.dmcp import DMCPSupernet
            supernet = DMCPSupernet(models.build("cifar_resnet20"), space)
            _CHAINS[id(space)] = supernet.export(target_macs=0.5 * space.full_macs)
        return _CHAINS[id(space)]
    raise AssertionError(f"no test stand-in for need kind {need.kind!r}")


def params_for(name, space):
    """Searcher parameters a pipeline would pass: what its needs provide."""
    params = {need.param: provided(need, space) for need in searchers.get(name).needs}
    params.update(_SMALL.get(name, {}))
    return params or None


def build(name, space, **kw):
    if "+" in name:
        return searchers.build(name, space, **kw)
    return searchers.build(name, space, params=params_for(name, space), **kw)


def drive(core, space, n_max=200, fail_every=0):
    """Run the ask/tell loop sequentially; returns the proposals in order."""
    out = []
    for i in range(n_max):
        p = core.ask()
        if p == FINISHED:
            break
        assert p is not None, "a sequential driver always has results in, so None means a stall"
        out.append(p)
        fitness = None if fail_every and i % fail_every == 0 else objective(space, p.widths)
        core.tell(p.token, fitness)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_proposals_feasible_and_on_grid(space, name):
    budget = 0.5 * space.full_macs
    core = build(name, space, limit=budget, num_candidates=12, seed=3)
    props = drive(core, space)
    assert 1 <= len(props) <= 12
    for p in props:
        assert isinstance(p, Proposal) and p.origin
        w = space.validate(p.widths)  # raises if off grid or out of bounds
        assert space.macs(w) <= budget
    assert core.ask() == FINISHED


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_proposals(space, name):
    budget = 0.4 * space.full_macs
    a = [p.widths for p in drive(build(name, space, limit=budget, num_candidates=8, seed=1), space)]
    b = [p.widths for p in drive(build(name, space, limit=budget, num_candidates=8, seed=1), space)]
    assert a and a == b


@pytest.mark.parametrize("name", NAMES)
def test_save_restore_continues_identically(space, name):
    budget = 0.5 * space.full_macs
    ref = build(name, space, limit=budget, num_candidates=10, seed=7)
    first = drive(ref, space, n_max=4)
    state = ref.state()
    rest_ref = [p.widths for p in drive(ref, space)]
    clone = build(name, space, limit=budget, num_candidates=10, seed=99)
    clone.load_state(state)
    rest_clone = [p.widths for p in drive(clone, space)]
    assert len(first) == 4
    assert rest_clone == rest_ref


@pytest.mark.parametrize("name", NAMES)
def test_failed_candidates_count_as_worst(space, name):
    core = build(name, space, limit=0.5 * space.full_macs, num_candidates=6, seed=0)
    drive(core, space, fail_every=2)
    fits = [f for _, f, _ in core.history]
    assert fits.count(searchers.WORST) == sum(1 for i in range(len(fits)) if i % 2 == 0)
    best = core.best
    assert best is not None and best[1] > searchers.WORST


def test_random_draws_spend_the_budget(space):
    budget = 0.5 * space.full_macs
    core = searchers.build("random", space, limit=budget, num_candidates=20, seed=0)
    macs = [space.macs(p.widths) for p in drive(core, space)]
    assert min(macs) >= 0.8 * budget and max(macs) <= budget
    assert len(set(macs)) > 10


def test_uniform_sweep_is_monotone_and_below_budget(space):
    budget = 0.5 * space.full_macs
    props = drive(searchers.build("uniform", space, limit=budget, num_candidates=6, seed=0), space)
    macs = [space.macs(p.widths) for p in props]
    assert macs == sorted(macs, reverse=True)
    assert macs[0] <= budget and macs[0] >= 0.85 * budget


def test_a_searcher_that_runs_out_of_proposals_says_why(space):
    budget = 0.5 * space.full_macs
    core = searchers.build("uniform", space, limit=budget, num_candidates=500, seed=0)
    props = drive(core, space)
    assert len(props) == core.num_candidates < 500
    assert core.shortfall.startswith(f"only {core.num_candidates} distinct uniform width vectors")
    both = searchers.build("random+uniform", space, limit=budget, num_candidates=1000, seed=0)
    assert both.shortfall.startswith("uniform: only ")
    full = searchers.build("uniform", space, limit=budget, num_candidates=3, seed=0)
    assert full.num_candidates == 3 and full.shortfall == ""


def test_ray_adapter_suggest_and_complete(space):
    from ray.tune.search import Searcher
    from searchers.adapter import TuneSearcher

    core = searchers.build("uniform", space, limit=0.5 * space.full_macs, num_candidates=2, seed=0)
    adapter = TuneSearcher(core)
    c1 = adapter.suggest("t1")
    assert adapter.suggest("t2")["origin"] == "uniform"
    assert c1["searcher"] == "uniform" and len(c1["widths"]) == len(space)
    assert adapter.suggest("t3") == Searcher.FINISHED
    adapter.on_trial_complete("t1", {"val_acc": 0.5, "status": "ok"})
    adapter.on_trial_complete("t2", None, error=True)
    assert [f for _, f, _ in core.history] == [0.5, searchers.WORST]


def test_adapter_save_restore(tmp_path, space):
    from searchers.adapter import TuneSearcher

    a = TuneSearcher(searchers.build("random", space, limit=0.5 * space.full_macs, num_candidates=6, seed=0))
    a.suggest("t1")
    a.save(str(tmp_path / "s.json"))
    assert json.loads((tmp_path / "s.json").read_text())["core"]["asked"] == 1, "plain JSON"
    expected = a.suggest("t2")
    b = TuneSearcher(searchers.build("random", space, limit=0.5 * space.full_macs, num_candidates=6, seed=5))
    b.restore(str(tmp_path / "s.json"))
    assert b.suggest("t2")["widths"] == expected["widths"]


def _two_at_a_time(adapter, space, keys, running=None):
    from ray.tune.search import Searcher

    """Drive a Tune adapter as Tune does with two trials at a time: whenever two run, the older
    one's result comes in before the next config is asked for (or when the searcher waits for
    one). ``running`` ({key: config}) are
    trials already training. Returns {key: config} of every config handed out."""
    issued = dict(running or {})
    queue = list(issued)

    def finish(key):
        adapter.on_trial_complete(f"trial-{key}", {"val_acc": objective(space, issued[key]["widths"]),
                                                   "status": "ok"})

    for key in keys:
        config = adapter.suggest(f"trial-{key}")
        while config is None:  # the searcher waits for a result: Tune asks again after one
            assert queue, "None with nothing running is a stall"
            finish(queue.pop(0))
            config = adapter.suggest(f"trial-{key}")
        if config == Searcher.FINISHED:
            break
        issued[key] = config
        queue.append(key)
        if len(queue) == 2:
            finish(queue.pop(0))
    for key in queue:
        finish(key)
    return issued


# Small start-up phases so that 8 candidates reach each algorithm's model-based phase.
_RESUME_PARAMS = {"abc": {"food_number": 3, "max_cycle": 3}, "tpe": {"n_startup_trials": 3},
                  "nsga2": {"population_size": 4}}


@pytest.mark.parametrize("name", NAMES)
def test_adapter_resumes_from_journal_state_with_trials_in_flight(space, name):
    """What the search journal holds after a result (the core's state and the configs still
    training) lets a fresh adapter hand out exactly what the uninterrupted one would."""
    from searchers.adapter import TuneSearcher

    def core(seed):
        kw = dict(limit=0.5 * space.full_macs, num_candidates=8, seed=seed)
        if "+" not in name:
            return searchers.build(name, space, params={**(params_for(name, space) or {}),
                                                        **_RESUME_PARAMS.get(name, {})}, **kw)
        return build(name, space, **kw)

    ref = TuneSearcher(core(4))
    c0, c1 = ref.suggest("trial-0"), ref.suggest("trial-1")  # c1 None: a sequential searcher
    ref.on_trial_complete("trial-0", {"val_acc": objective(space, c0["widths"]), "status": "ok"})
    core_state, unfinished = ref.core.state(), ref.unfinished()  # what the journal saves
    saved = json.dumps(plain.encode(core_state), sort_keys=True)
    assert unfinished == ([c1] if c1 else [])
    rest_ref = _two_at_a_time(ref, space, range(2 if c1 else 1, 8), running={1: c1} if c1 else {})

    fresh = core(99)
    fresh.load_state(core_state)
    assert json.dumps(plain.encode(core_state), sort_keys=True) == saved, \
        "loading leaves the journal's state as it was"
    resumed = TuneSearcher(fresh, requeue=unfinished)
    rest = _two_at_a_time(resumed, space, range(1, 8))
    if c1:
        assert rest[1] == c1, "the unfinished config is handed out again unchanged, token included"
    assert {k: c["widths"] for k, c in rest.items()} == {k: c["widths"] for k, c in rest_ref.items()}
    assert {k: c["options"] for k, c in rest.items()} == {k: c["options"] for k, c in rest_ref.items()}
    assert resumed.unfinished() == [] and resumed.core.history == ref.core.history
    assert len(ref.core.history) == ref.core.asked >= 3


# Searchers declaring parameter budgets; the others (DMCP: its cost is differentiable MACs)
# are refused a parameter budget before training (tests/test_bad_input.py, params-with-dmcp).
PARAMS_NAMES = [n for n in NAMES if "params" in searchers.budget_kinds(n)]


def test_only_dmcp_declares_macs_budgets_only():
    assert set(NAMES) - set(PARAMS_NAMES) == {"dmcp"}


@pytest.mark.parametrize("name", PARAMS_NAMES)
def test_every_searcher_meets_a_parameter_budget(space, name):
    """A budget in another unit (parameters): every searcher that declares it works under it
    proposes within the limit, through the same cost view."""
    from structsearch.budget import ParamsCost
    view = ParamsCost(space)
    limit = 0.4 * view.full
    core = build(name, space, limit=limit, view=view, num_candidates=8, seed=2)
    props = drive(core, space)
    assert props and all(space.params(p.widths) <= limit for p in props)
    for p in props:
        space.validate(p.widths)


@pytest.mark.parametrize("name", searchers.names())
def test_declarations_are_valid(name):
    """What a searcher declares is what the pipeline can use: a known need kind filling a real
    parameter, known budget kinds, typed parameters with defaults."""
    cls = searchers.get(name)
    declared = searchers.parameters(name)
    for need in cls.needs:
        assert need.kind in ("seed_proposals", "channel_scores", "dmcp_chains")
        assert need.param in declared
    assert cls.budget_kinds and set(cls.budget_kinds) <= {"macs", "params", "latency"}
    for key, param in declared.items():
        assert param.default is not param.empty, f"{name}.{key} needs a default"
        assert param.annotation is not param.empty, f"{name}.{key} needs a type"
    with pytest.raises(ValueError, match="unknown parameter 'no_such_param'"):
        searchers.check_params(name, {"no_such_param": 1})
