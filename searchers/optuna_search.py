"""Optuna TPE (accuracy under the budget) and NSGA-II (accuracy vs MACs Pareto front).

The space is define-by-run: one integer per group, the index into that group's width grid.
Infeasible samples are rejected before any training: they are told to the study at once as
violating the MACs constraint (so the sampler learns where the budget lies) and a new sample is
drawn; after ``max_rejections`` in a row the last one is projected into the budget and enqueued.
TPE (one objective under the budget) also widens a feasible sample that spends less than
``fill`` (0.97) of the budget and evaluates the widened vector in its place; NSGA-II, whose
second objective is the cost itself, evaluates what it samples.
Seeded proposals go in as the first trials.

State without pickle: every operation on the study (enqueue, ask, the suggested parameters, the
constraint, tell) is appended to ``self.log`` as plain data. ``state()`` keeps that log and the
numbers of the trials in flight; ``load_state()`` builds a fresh study with the same seeded
sampler and replays the log (the samplers are deterministic given their seed and the same
sequence of calls), checking that every replayed trial gets the parameters it was logged with.
Replaying costs what the sampler cost during the search (TPE's asks grow with the trials: about
4 s for 1,000 logged operations and 20 s for 3,000 on a shared 2-core machine; NSGA-II about 1 s
for 3,000), once per resume.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .core import Need, SearchCore


class _OptunaSearch(SearchCore, ABC):
    directions: list[str] = ["maximize"]

    needs = (Need("seed_proposals", "initial"),)
    # The study and its Trial objects are rebuilt from ``log`` (see ``load_state``).
    _static = SearchCore._static | {"study", "trials", "_current"}

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None,
                 initial: list | None = None, max_rejections: int = 20,
                 n_startup_trials: int = 10):
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view)
        self.max_rejections = int(max_rejections)
        self.sampler_seed = int(seed)
        self.n_startup_trials = int(n_startup_trials)
        # Every operation on the study, in order, as plain data: ["enqueue", indices],
        # ["ask", number], ["suggest", number, indices], ["constrain", number, excess],
        # ["tell", number, values]; ``indices`` are the grid indices of the groups in order (the
        # parameters g0, g1, ...).
        self.log: list[list] = []
        self.study = self._new_study()
        self.trials: dict[int, object] = {}
        self._current = None
        self.origins: list[str] = []
        for item in initial or []:
            widths = self.feasible(item["widths"])
            self._enqueue(self._params(widths))
            self.origins.append(f"seed:{item.get('origin', 'given')}")

    @abstractmethod
    def _sampler(self, optuna, seed, n_startup):
        """The Optuna sampler of this strategy."""

    def _new_study(self):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.create_study(directions=self.directions,
                                   sampler=self._sampler(optuna, self.sampler_seed,
                                                         self.n_startup_trials))

    # -- the study operations (each logged) ------------------------------------------------
    def _enqueue(self, params: dict) -> None:
        self.study.enqueue_trial(params)
        self.log.append(["enqueue", self._indices(params)])

    def _ask(self):
        trial = self.study.ask()
        self.log.append(["ask", trial.number])
        return trial

    def _widths(self, trial) -> tuple[int, ...]:
        params = self._suggest(trial)
        self.log.append(["suggest", trial.number, self._indices(params)])
        return tuple(int(self.space.grid(i)[params[f"g{i}"]]) for i in range(len(self.space)))

    def _indices(self, params: dict) -> list[int]:
        return [int(params[f"g{i}"]) for i in range(len(self.space))]

    @staticmethod
    def _named(indices) -> dict:
        return {f"g{i}": int(v) for i, v in enumerate(indices)}

    def _suggest(self, trial) -> dict:
        return {f"g{i}": int(trial.suggest_int(f"g{i}", 0, len(self.space.grid(i)) - 1))
                for i in range(len(self.space))}

    def _constrain(self, trial, excess: float) -> None:
        excess = float(max(excess, 0.0))
        self._set_constraint(trial, excess)
        self.log.append(["constrain", trial.number, excess])

    @staticmethod
    def _set_constraint(trial, excess: float) -> None:
        # Feasible when <= 0: the samplers rank infeasible trials behind every feasible one.
        if hasattr(trial, "set_constraint"):
            trial.set_constraint("macs_excess", excess)
        else:  # optuna < 5 reads constraints through constraints_func
            trial.set_user_attr("macs_excess", excess)

    def _fail(self, trial) -> None:
        self._withdraw(self.study, trial)
        self.log.append(["fail", trial.number])

    @staticmethod
    def _withdraw(study, trial) -> None:
        """End an asked trial as failed: the samplers learn nothing from it."""
        import optuna
        study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def _spend(self, trial, widths):
        """Hook: the trial to evaluate for the feasible sample ``widths`` (TPE widens it)."""
        return trial, widths, ""

    def _tell(self, trial, values) -> None:
        values = float(values) if np.isscalar(values) else [float(v) for v in values]
        self.study.tell(trial, values)
        self.log.append(["tell", trial.number, values])

    @staticmethod
    def _constraints(frozen) -> list[float]:
        return [float(frozen.user_attrs.get("macs_excess", 0.0))]

    @staticmethod
    def _constraint_kwargs(optuna) -> dict:
        major = int(optuna.__version__.split(".")[0])
        return {} if major >= 5 else {"constraints_func": _OptunaSearch._constraints}

    def _params(self, widths) -> dict:
        return {f"g{i}": int(np.searchsorted(self.space.grid(i), w)) for i, w in enumerate(widths)}

    def _worst(self):
        return 0.0 if len(self.directions) == 1 else [0.0, float(self.view.full)]

    # -- SearchCore hooks ------------------------------------------------------------------
    def _next(self):
        origin = self.origins.pop(0) if self.origins else self.name
        for attempt in range(self.max_rejections + 1):
            trial = self._ask()
            widths = self._widths(trial)
            excess = self.cost(widths) - self.limit
            self._constrain(trial, excess)
            if excess <= 0:
                trial, widths, how = self._spend(trial, widths)
                self._current = trial
                return widths, origin + how
            self._tell(trial, self._worst())
        # The sampler keeps drawing over-budget points: repair the last one and evaluate that.
        repaired = self.feasible(widths)
        self._enqueue(self._params(repaired))
        trial = self._ask()
        self._constrain(trial, 0.0)
        self._current = trial
        return self._widths(trial), f"{origin}:projected"

    def _warm(self, known):
        """Known results on the grid become completed trials of the study (over-budget ones
        with their excess as the constraint), ahead of the seeds still queued."""
        queued = [op[1] for op in self.log if op[0] == "enqueue"]
        if len(queued) != len(self.log):
            raise RuntimeError("warm() must come before the study is asked")
        self.log, self.study = [], self._new_study()
        for widths, fitness in known.items():
            if not all(w in self.space.grid(i) for i, w in enumerate(widths)):
                continue  # off this space's grid: answered if proposed, not taught
            self._enqueue(self._params(widths))
            trial = self._ask()
            self._widths(trial)
            self._constrain(trial, self.cost(widths) - self.limit)
            value = 0.0 if not np.isfinite(fitness) else float(fitness)
            self._tell(trial, value if len(self.directions) == 1
                       else [value, float(self.cost(widths))])
        for indices in queued:
            self._enqueue(self._named(indices))

    def _proposed(self, candidate):
        self.trials[candidate.token] = self._current
        self._current = None

    def _observe(self, candidate, fitness, info):
        trial = self.trials.pop(candidate.token, None)
        if trial is None:
            return
        value = 0.0 if not np.isfinite(fitness) else fitness
        if len(self.directions) == 1:
            self._tell(trial, value)
        else:
            self._tell(trial, [value, float(self.cost(candidate.widths))])

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        state = super().state()  # the log, origins and settings; no study or Trial objects
        state["trials"] = {int(k): int(t.number) for k, t in self.trials.items()}
        return state

    def load_state(self, state: dict) -> None:
        state = dict(state)  # the caller's state (e.g. the search journal's) stays whole
        numbers = state.pop("trials", {})
        if "log" not in state:
            raise ValueError(f"{self.name} state has no study log (written by an older version?)")
        super().load_state(state)
        self.study = self._new_study()
        self._replay(self.study, self.log)
        self._current = None
        self.trials = {int(k): self._trial(int(n)) for k, n in numbers.items()}

    def _trial(self, number: int):
        from optuna.trial import Trial

        storage, study_id = self.study._storage, self.study._study_id
        return Trial(self.study, storage.get_trial_id_from_study_id_trial_number(study_id, number))

    def _replay(self, study, log) -> None:
        """Apply ``log`` to the fresh ``study``, checking that it reproduces the logged trials."""
        live = {}  # trial number -> Trial asked and not yet told
        for index, op in enumerate(log):
            kind = op[0]
            if kind == "enqueue":
                study.enqueue_trial(self._named(op[1]))
                continue
            number = int(op[1])
            if kind == "ask":
                trial = study.ask()
                if trial.number != number:
                    raise ValueError(f"{self.name} state replay diverged at operation {index}: "
                                     f"asked trial {trial.number}, the log has {number}")
                live[number] = trial
                continue
            trial = live.get(number)
            if trial is None:
                raise ValueError(f"{self.name} state replay: operation {index} ({kind}) names "
                                 f"trial {number}, which is not running")
            if kind == "suggest":
                params = self._suggest(trial)
                logged = self._named(op[2])
                if params != logged:
                    raise ValueError(
                        f"{self.name} state replay diverged at operation {index}: trial {number} "
                        f"drew {params}, the log has {logged} (different width space, Optuna "
                        f"version or sampler settings than the saved search?)")
            elif kind == "constrain":
                self._set_constraint(trial, float(op[2]))
            elif kind == "tell":
                study.tell(trial, op[2])
                del live[number]
            elif kind == "fail":
                self._withdraw(study, trial)
                del live[number]
            else:
                raise ValueError(f"{self.name} state replay: unknown operation {kind!r}")


class TPESearch(_OptunaSearch):
    """Tree-structured Parzen estimator: maximise validation accuracy under the MACs budget."""

    name = "tpe"
    directions = ["maximize"]

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None,
                 initial: list | None = None, max_rejections: int = 20,
                 n_startup_trials: int = 10, fill: float = 0.97):
        if not 0 <= fill <= 1:
            raise ValueError("tpe.fill must be in [0, 1] (the share of the budget samples spend)")
        self.fill_fraction = float(fill)
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view,
                         initial=initial, max_rejections=max_rejections,
                         n_startup_trials=n_startup_trials)

    def _spend(self, trial, widths):
        """A sample that leaves more than ``1 - fill`` of the budget unspent is withdrawn and
        the same vector widened one grid step at a time (random groups) to spend at least
        ``fill`` of it is evaluated instead: accuracy grows with width, so under one budget
        an under-spent structure only wastes a candidate. The sampler learns from the widened
        vectors alone."""
        if self.cost(widths) >= self.fill_fraction * self.limit:
            return trial, widths, ""
        wider = tuple(int(v) for v in self.fill(widths, self.fill_fraction))
        if wider == tuple(widths):  # no grid step fits the budget
            return trial, widths, ""
        self._fail(trial)
        self._enqueue(self._params(wider))
        filled = self._ask()
        wider = self._widths(filled)
        self._constrain(filled, 0.0)
        return filled, wider, ":filled"

    def _sampler(self, optuna, seed, n_startup):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                          **self._constraint_kwargs(optuna))


class NSGA2Search(_OptunaSearch):
    """NSGA-II on (validation accuracy, MACs): a Pareto front under the budget."""

    name = "nsga2"
    directions = ["maximize", "minimize"]

    def __init__(self, space, *, limit, num_candidates, seed=0, view=None,
                 initial: list | None = None, max_rejections: int = 20, population_size: int = 10):
        self.population_size = int(population_size)
        super().__init__(space, limit=limit, num_candidates=num_candidates, seed=seed, view=view,
                         initial=initial, max_rejections=max_rejections)

    def _sampler(self, optuna, seed, n_startup):
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size,
                                             **self._constraint_kwargs(optuna))
