"""ABCPruner's bee colony on a synthetic fitness over a real WidthSpace (no Ray, no training)."""
import numpy as np
import pytest

import searchers
from searchers import FINISHED, ArtificialBeeColony
from structsearch import models
from structsearch.space import WidthSpace


@pytest.fixture(scope="module")
def space():
    return WidthSpace.from_model(models.build("cifar_resnet20"), (3, 32, 32))


def smooth(space, widths):
    w = np.asarray(widths) / np.asarray(space.full_widths)
    weights = np.linspace(3.0, 0.2, len(w))
    return float((weights * np.sqrt(w)).sum() / weights.sum())


def run_batches(core, space, fitness=smooth, reverse=False):
    """Drive like Tune: ask until None/FINISHED, then report the whole batch (in reverse order
    with ``reverse``, as parallel trials may finish)."""
    batches = []
    while True:
        batch = []
        while True:
            p = core.ask()
            if p is None or p == FINISHED:
                break
            batch.append(p)
        if batch:
            batches.append(batch)
            for p in (reversed(batch) if reverse else batch):
                core.tell(p.token, fitness(space, p.widths))
        if p == FINISHED:
            return batches


def test_phases_in_order_with_counts(space):
    core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=10_000, seed=0,
                               food_number=6, food_limit=2, max_cycle=4)
    run_batches(core, space)
    log = core.phase_log
    assert log[0] == (0, "init", 6)
    for cycle in range(4):
        phases = [(p, n) for c, p, n in log if c == cycle and p != "init"]
        assert phases[0] == ("employed", 6) and phases[1] == ("onlooker", 6)
        assert [p for p, _ in phases[2:]] in ([], ["scout"])
        assert all(n == 1 for p, n in phases[2:])
    # With food_limit 2 and 4 cycles some source stalls long enough to be scouted.
    assert any(p == "scout" for _, p, _ in log)


@pytest.mark.parametrize("n,says", [
    (6, "6 candidates are only its initial sources (food_number 6)"),
    (18, "18 candidates are 6 initial sources and 1.0 of its 4 cycles"),
    (30, "30 candidates are 6 initial sources and 2.0 of its 4 cycles of employed and onlooker "
         "moves (all of them: 54+ candidates)"),
    (54, "")])
def test_plan_says_how_much_of_the_schedule_the_candidates_buy(space, n, says):
    """The search's first line says when search.candidates stops the colony before its
    max_cycle cycles; the counts are those the colony really runs (phase_log)."""
    core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=n, seed=0,
                               food_number=6, food_limit=100, max_cycle=4)
    assert (says in core.plan) if says else core.plan == ""
    run_batches(core, space)
    moves = [m for _, phase, m in core.phase_log if phase in ("employed", "onlooker")]
    assert 6 + min(sum(moves), n - 6) == n and len(moves) >= min((n - 6) // 6, 8)


def test_scout_only_when_trail_reaches_limit(space):
    core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=10_000, seed=1,
                               food_number=4, food_limit=1000, max_cycle=3)
    run_batches(core, space)
    assert not any(p == "scout" for _, p, _ in core.phase_log)


def test_greedy_keeps_the_better_source(space):
    core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=10_000, seed=2,
                               food_number=5, max_cycle=1)
    seen_fitness = []
    while True:
        p = core.ask()
        assert p is not None  # results are told at once, so the colony never waits here
        if p == FINISHED:
            break
        seen_fitness.append(smooth(space, p.widths))
        core.tell(p.token, seen_fitness[-1])
    # Every source's fitness is the best fitness it ever had (never replaced by a worse one).
    for i, src in enumerate(core.sources):
        assert core.fitness[i] == pytest.approx(smooth(space, core.widths_of(src)))
    assert core.best[1] == pytest.approx(max(seen_fitness))


def test_last_dimension_and_top_level_reachable(space):
    core = ArtificialBeeColony(space, limit=space.full_macs, num_candidates=10_000, seed=3,
                               food_number=8, max_cycle=6)
    props = [p for batch in run_batches(core, space) for p in batch]
    last = {p.widths[-1] for p in props}
    assert len(last) > 2, "the last group must be mutated"
    top_hits = [g for g in range(len(space))
                if any(p.widths[g] == core.levels[g][-1] for p in props)]
    assert len(top_hits) >= len(space) // 2, "the top level (90% width) must be reachable"


def test_suggestions_within_budget_and_on_grid(space):
    budget = 0.4 * space.full_macs
    core = ArtificialBeeColony(space, limit=budget, num_candidates=200, seed=4, food_number=5, max_cycle=5)
    proposals = [p for batch in run_batches(core, space) for p in batch]
    assert len(proposals) >= 5, "the initial sources at least"
    for p in proposals:
        space.validate(p.widths)
        assert space.macs(p.widths) <= budget


def test_duplicates_reuse_fitness(space):
    core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=10_000, seed=5,
                               food_number=4, max_cycle=8)
    props = [p for batch in run_batches(core, space) for p in batch]
    assert len({p.widths for p in props}) == len(props)


def test_phase_batch_waits_for_results(space):
    core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=100, seed=6, food_number=4)
    first = [core.ask() for _ in range(4)]
    assert all(p is not None and p != FINISHED for p in first)
    assert core.ask() is None  # the employed phase needs every initial fitness first
    for p in first:
        core.tell(p.token, 0.5)
    employed = core.ask()
    assert employed is not None and employed != FINISHED and employed.token not in {
        p.token for p in first}


def test_save_restore_mid_phase_identical(space):
    kwargs = dict(limit=0.5 * space.full_macs, num_candidates=60, food_number=4, max_cycle=5)
    ref = ArtificialBeeColony(space, seed=7, **kwargs)
    pending = [ref.ask() for _ in range(4)]
    for p in pending[:2]:
        ref.tell(p.token, smooth(space, p.widths))
    state = ref.state()
    for p in pending[2:]:
        ref.tell(p.token, smooth(space, p.widths))
    tail_ref = [p.widths for b in run_batches(ref, space) for p in b]
    clone = ArtificialBeeColony(space, seed=123, **kwargs)
    clone.load_state(state)
    for p in pending[2:]:
        clone.tell(p.token, smooth(space, p.widths))
    tail_clone = [p.widths for b in run_batches(clone, space) for p in b]
    assert tail_clone == tail_ref and len(tail_ref) > 10


def test_seeded_initial_sources(space):
    seed_w = list(space.uniform(0.6))
    core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=100, seed=8,
                               food_number=4, initial=[{"origin": "uniform", "widths": seed_w}])
    first = core.ask()
    assert first.origin == "seed:uniform"
    assert space.macs(first.widths) <= 0.5 * space.full_macs
    assert [core.ask().origin for _ in range(3)] == ["abc:init"] * 3


def test_abc_beats_random_on_smooth_objective(space):
    """A smooth objective peaked at an allocation just under the budget (accuracy-like: every
    group has a best width). Equal evaluation counts, the default grid encoding, 5 seeds."""
    budget = 0.5 * space.full_macs
    full = np.asarray(space.full_widths)
    target = space.sample(np.random.default_rng(2024), 1, (0.9 * budget, 0.95 * budget))[0] / full

    def peaked(space, widths):
        return float(1 - 4 * np.mean((np.asarray(widths) / full - target) ** 2))

    abc_best, rnd_best = [], []
    for seed in range(5):
        abc = ArtificialBeeColony(space, limit=budget, num_candidates=150, seed=seed, food_number=6,
                                  max_cycle=100)
        run_batches(abc, space, peaked)
        rnd = searchers.build("random", space, limit=budget, num_candidates=abc.asked, seed=seed)
        run_batches(rnd, space, peaked)
        abc_best.append(abc.best[1])
        rnd_best.append(rnd.best[1])
    wins = sum(a > r for a, r in zip(abc_best, rnd_best))
    assert np.mean(abc_best) > np.mean(rnd_best) + 0.02, (abc_best, rnd_best)
    assert wins >= 3, (abc_best, rnd_best)


def test_result_arrival_order_does_not_change_the_colony(space):
    """Parallel trials finish in any order; the proposals must only depend on the seed."""
    def run(reverse):
        core = ArtificialBeeColony(space, limit=0.5 * space.full_macs, num_candidates=80, seed=11,
                                   food_number=5, food_limit=2, max_cycle=6)
        return [p.widths for batch in run_batches(core, space, reverse=reverse) for p in batch]
    assert run(False) == run(True)


def test_budget_below_the_ten_percent_code_stays_feasible():
    space = WidthSpace.from_model(models.build("cifar_resnet20"), (3, 32, 32), min_ratio=0.05)
    budget = 1.02 * space.min_macs  # below every 10%-code network, above the 5% floor
    core = ArtificialBeeColony(space, limit=budget, num_candidates=30, seed=0, food_number=4)
    proposals = [p for batch in run_batches(core, space) for p in batch]
    assert proposals, "the few vectors so near the floor are still proposed"
    assert all(space.macs(p.widths) <= budget for p in proposals)


@pytest.mark.parametrize("ratio", [0.15, 0.5])
def test_sources_spend_the_budget_on_the_grid_and_tenths_stay_available(space, ratio):
    """Every proposal of the default (grid) colony costs within [0.97, 1.0] of the budget;
    ABCPruner's tenths are coarser and leave budget unspent, which is why grid is the default."""
    budget = ratio * space.full_macs
    grid = ArtificialBeeColony(space, limit=budget, num_candidates=60, seed=5, food_number=5)
    spent = [space.macs(p.widths) / budget for b in run_batches(grid, space) for p in b]
    assert len(spent) == 60 and min(spent) >= 0.97 and max(spent) <= 1.0
    tenths = ArtificialBeeColony(space, limit=budget, num_candidates=60, seed=5, food_number=5,
                                 encoding="tenths", fill=0.0)
    coarse = [space.macs(p.widths) / budget for b in run_batches(tenths, space) for p in b]
    assert max(coarse) <= 1.0 and np.mean(coarse) < np.mean(spent) - 0.02
    assert all(len(lv) <= 10 for lv in tenths.levels)
    assert max(len(lv) for lv in grid.levels) > 10


def test_random_search_spends_the_budget(space):
    budget = 0.3 * space.full_macs
    core = searchers.build("random", space, limit=budget, num_candidates=40, seed=1)
    spent = [space.macs(p.widths) / budget for b in run_batches(core, space) for p in b]
    assert len(spent) == 40 and min(spent) >= 0.97 and max(spent) <= 1.0


def test_abc_seeds_its_colony_with_the_one_shot_baselines_by_default():
    need = ArtificialBeeColony.needs[0]
    assert need.kind == "seed_proposals" and need.default
    assert tuple(need.options["seeds"]) == ("uniform", "global")
