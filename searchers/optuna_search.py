"""Optuna TPE (accuracy under the budget) and NSGA-II (accuracy vs MACs Pareto front).

The space is define-by-run: one integer per group, the index into that group's width grid.
Infeasible samples are rejected before any training: they are told to the study at once as
violating the MACs constraint (so the sampler learns where the budget lies) and a new sample is
drawn; after ``max_rejections`` in a row the last one is projected into the budget and enqueued.
Seeded proposals go in as the first trials.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
import numpy as np

from .core import SearchCore


class _OptunaSearch(SearchCore, ABC):
    directions: list[str] = ["maximize"]

    def __init__(self, space, *, max_macs, num_candidates, seed=0, initial: list | None = None,
                 max_rejections: int = 20, n_startup_trials: int = 10):
        super().__init__(space, max_macs=max_macs, num_candidates=num_candidates, seed=seed)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.max_rejections = int(max_rejections)
        self.study = optuna.create_study(directions=self.directions,
                                         sampler=self._sampler(optuna, seed, n_startup_trials))
        self.trials: dict[int, object] = {}
        self.origins: list[str] = []
        for item in initial or []:
            widths = self.feasible(item["widths"])
            self.study.enqueue_trial(self._params(widths))
            self.origins.append(f"seed:{item.get('origin', 'given')}")

    @abstractmethod
    def _sampler(self, optuna, seed, n_startup):
        """The Optuna sampler of this strategy."""

    @staticmethod
    def _constrain(trial, excess: float) -> None:
        # Feasible when <= 0: the samplers rank infeasible trials behind every feasible one.
        if hasattr(trial, "set_constraint"):
            trial.set_constraint("macs_excess", float(max(excess, 0.0)))
        else:  # optuna < 5 reads constraints through constraints_func
            trial.set_user_attr("macs_excess", float(max(excess, 0.0)))

    @staticmethod
    def _constraints(frozen) -> list[float]:
        return [float(frozen.user_attrs.get("macs_excess", 0.0))]

    @staticmethod
    def _constraint_kwargs(optuna) -> dict:
        major = int(optuna.__version__.split(".")[0])
        return {} if major >= 5 else {"constraints_func": _OptunaSearch._constraints}

    def _params(self, widths) -> dict:
        return {f"g{i}": int(np.searchsorted(self.space.grid(i), w)) for i, w in enumerate(widths)}

    def _widths(self, trial) -> tuple[int, ...]:
        return tuple(int(self.space.grid(i)[trial.suggest_int(f"g{i}", 0, len(self.space.grid(i)) - 1)])
                     for i in range(len(self.space)))

    def _worst(self):
        return 0.0 if len(self.directions) == 1 else [0.0, float(self.space.full_macs)]

    def _next(self):
        origin = self.origins.pop(0) if self.origins else self.name
        for attempt in range(self.max_rejections + 1):
            trial = self.study.ask()
            widths = self._widths(trial)
            excess = self.space.macs(widths) - self.max_macs
            self._constrain(trial, excess)
            if excess <= 0:
                self._current = trial
                return widths, origin
            self.study.tell(trial, self._worst())
        # The sampler keeps drawing over-budget points: repair the last one and evaluate that.
        repaired = self.feasible(widths)
        self.study.enqueue_trial(self._params(repaired))
        trial = self.study.ask()
        self._constrain(trial, 0.0)
        self._current = trial
        return self._widths(trial), f"{origin}:projected"

    def ask(self):
        proposal = super().ask()
        if hasattr(proposal, "token"):
            self.trials[proposal.token] = self._current
        return proposal

    def _observe(self, token, widths, fitness, info):
        trial = self.trials.pop(token, None)
        if trial is None:
            return
        value = 0.0 if not np.isfinite(fitness) else fitness
        if len(self.directions) == 1:
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, [value, float(self.space.macs(widths))])

    def state(self) -> dict:
        state = super().state()
        state.pop("_current", None)
        # Trials in flight are referenced by number; the study pickles with its sampler state.
        state["trials"] = {k: t.number for k, t in self.trials.items()}
        return state

    def load_state(self, state: dict) -> None:
        state = dict(state)  # the caller's state (e.g. the search journal's) stays whole
        numbers = state.pop("trials", {})
        super().load_state(state)
        from optuna.trial import Trial
        self.trials = {k: Trial(self.study, self.study._storage.get_trial_id_from_study_id_trial_number(
            self.study._study_id, n)) for k, n in numbers.items()}


class TPESearch(_OptunaSearch):
    """Tree-structured Parzen estimator: maximise validation accuracy under the MACs budget."""

    name = "tpe"
    directions = ["maximize"]

    def _sampler(self, optuna, seed, n_startup):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                          **self._constraint_kwargs(optuna))


class NSGA2Search(_OptunaSearch):
    """NSGA-II on (validation accuracy, MACs): a Pareto front under the budget."""

    name = "nsga2"
    directions = ["maximize", "minimize"]

    def __init__(self, space, *, max_macs, num_candidates, seed=0, initial=None, max_rejections=20,
                 population_size: int = 10):
        self.population_size = int(population_size)
        super().__init__(space, max_macs=max_macs, num_candidates=num_candidates, seed=seed,
                         initial=initial, max_rejections=max_rejections)

    def _sampler(self, optuna, seed, n_startup):
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size,
                                             **self._constraint_kwargs(optuna))
