"""The ask/tell protocol every structsearch searcher implements (numpy only, no Ray, no torch).

A searcher proposes width vectors for a :class:`~structsearch.space.WidthSpace` under a budget:
a cost view (``view.cost(widths)``: MACs, parameters or predicted latency, see
:mod:`structsearch.budget`) and a ``limit`` in that view's unit. The pipeline drives it through
``ask`` / ``tell`` (see :class:`SearchCore`); ``state()`` returns plain data (numbers, strings,
lists, dicts, numpy arrays, tuples, sets, candidates) that :mod:`structsearch.plain` writes as
JSON, and ``load_state`` restores it, so a resumed search proposes exactly what the interrupted
one would have.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from structsearch.budget import CostView, MacsCost
from structsearch.candidate import Candidate

FINISHED = "FINISHED"
WORST = float("-inf")

Proposal = Candidate  # what ``ask`` returns (the name searchers used before Candidate existed)


@dataclass(frozen=True)
class Need:
    """Something a searcher cannot compute itself (it never touches a model) and the pipeline
    provides before building it, passed as constructor parameter ``param``.

    ``kind`` is one of the pipeline's providers: ``seed_proposals`` (width vectors of the
    config's ``search.seeds``; with ``default=True`` a default list when none are given:
    ``options["seeds"]`` if set (``global`` meaning the run's criterion), else the pipeline's;
    without ``default`` nothing is passed), ``channel_scores`` (one score array per group of the
    criterion ``options["criterion"]``, ``options["normalize"]`` as the criterion takes it) and
    ``dmcp_chains`` (Markov chains learned by a DMCP supernet trial under the budget).
    ``takes`` names entries of ``search.params.<searcher>`` that parametrise the provider (e.g.
    the DMCP supernet's epochs), not the searcher. A parameter the user gives under
    ``search.params.<searcher>`` is not overridden.
    """

    kind: str
    param: str
    default: bool = False
    options: dict = field(default_factory=dict, hash=False)
    takes: tuple[str, ...] = ()


class SearchCore(ABC):
    """Base class of every searcher: budget bookkeeping, proposal tokens, a seeded RNG and
    whole-state save. Subclass it, set ``name``, and implement :meth:`_next` (and, for an
    algorithm that learns, :meth:`_observe`; :meth:`_proposed` when a proposal must be
    remembered under its token). Never override ``ask`` or ``tell``.

    Class attributes a searcher declares (the pipeline reads them, never the name):

    - ``name``: the registry name (``search.searcher``).
    - ``needs``: :class:`Need` entries for what the pipeline must provide.
    - ``budget_kinds``: the budgets it works under (``macs``, ``params``, ``latency``).
    - ``early_stopping``: whether a trial scheduler (ASHA) may stop its trials early.
    - ``reuses_results``: whether it can be warm-started with known results (:meth:`warm`).

    Its parameters are the keyword arguments of its ``__init__`` after ``seed``, each typed and
    with a default; ``searchers.parameters(name)`` lists them and the config is checked against
    them before any training.
    """

    name: ClassVar[str] = "base"
    needs: ClassVar[tuple[Need, ...]] = ()
    budget_kinds: ClassVar[tuple[str, ...]] = ("macs", "params", "latency")
    early_stopping: ClassVar[bool] = True
    # Whether a known result (a finished run's candidate, ``warm``) may answer a proposal: False
    # for a searcher whose next step needs what its own trial reported (DropNet's scores).
    reuses_results: ClassVar[bool] = True
    # Attributes rebuilt by the constructor, not part of ``state()``.
    _static: ClassVar[frozenset] = frozenset({"space", "view"})

    def __init__(self, space, *, limit: float, num_candidates: int, seed: int = 0,
                 view: CostView | None = None):
        self.space = space
        self.view = view if view is not None else MacsCost(space)
        if limit < self.view.floor:
            raise ValueError(f"budget {limit:.4g} {self.view.unit} is below the smallest network "
                             f"({self.view.floor:.4g} {self.view.unit})")
        self.limit = float(limit)
        self.num_candidates = int(num_candidates)
        # Why the searcher proposes fewer than the candidates asked for (one line), if it does.
        self.shortfall = ""
        self.rng = np.random.default_rng(seed)
        self.asked = 0
        self.pending: dict[int, Candidate] = {}
        self.history: list[tuple[tuple[int, ...], float, str]] = []
        # Results known before the search began (finished runs' candidates, see ``warm``):
        # a proposal of one of these widths is answered at once, without a trial.
        self.reusable: dict[tuple[int, ...], float] = {}
        self.reused = 0  # proposals answered from ``reusable`` (they cost no candidate)
        # This search's own finished candidates (width vector -> fitness): a searcher that
        # proposes one of them again (Optuna's integer samplers do; a coarse grid makes
        # neighbours coincide) is answered from it instead of training the structure twice.
        self.finished: dict[tuple[int, ...], float] = {}
        # A proposal of widths still training under another token waits for that result:
        # token of the trained proposal -> tokens answered with its result when it comes.
        self.followers: dict[int, list[int]] = {}
        self.repeats = 0  # proposals answered from ``finished`` or by a trial in flight

    # -- hooks ---------------------------------------------------------------------------
    @abstractmethod
    def _next(self):
        """Called by ``ask`` while fewer than ``num_candidates`` proposals were made. Returns
        the next proposal as ``(widths, origin)`` or a :class:`Candidate` draft (see
        :meth:`draft`; its token is replaced), ``None`` to wait for results still training, or
        :data:`FINISHED` when the search has nothing more to propose. The widths are snapped to
        the grid and repaired into the budget afterwards."""

    def _proposed(self, candidate: Candidate) -> None:
        """Called by ``ask`` with the proposal just numbered (its ``token`` is final), before it
        is returned: remember what the proposal's result will be matched to."""

    def _warm(self, known: dict[tuple[int, ...], float]) -> None:
        """Called by ``warm`` with every known result (over the budget too) before the first
        ``ask``: start from them (ABC: its first sources; Optuna: completed trials). The
        default only answers proposals of known widths from them (see ``ask``)."""

    def _observe(self, candidate: Candidate, fitness: float, info: dict) -> None:
        """Called by ``tell`` once per proposal with its fitness (:data:`WORST` for a failed
        candidate) and ``info``, the rest of what its trial reported (e.g. DropNet's
        ``channel_scores``)."""

    # -- protocol (final) ----------------------------------------------------------------
    def ask(self):
        """The next :class:`Candidate`, ``None`` ("wait: results I need are still running") or
        :data:`FINISHED`. A proposal whose widths are already known (``warm``) is told its
        known fitness at once and the searcher is asked again: it costs no candidate."""
        for _ in range(self.num_candidates * 10 + 100):
            if self.asked >= self.num_candidates:
                return FINISHED
            nxt = self._next()
            if isinstance(nxt, str) and nxt == FINISHED and not self.shortfall:
                self.shortfall = (f"{self.reused} of its proposals were known from finished runs"
                                  if self.reused else f"{self.name} had no new width vector to "
                                  f"propose after {self.asked} (a small space within the budget)")
            if nxt is None or (isinstance(nxt, str) and nxt == FINISHED):
                return nxt
            draft = nxt if isinstance(nxt, Candidate) else self.draft(*nxt)
            candidate = Candidate(self.proposals, self.feasible(draft.widths),
                                  draft.origin, draft.searcher or self.name, draft.options)
            self.pending[candidate.token] = candidate
            self._proposed(candidate)
            if candidate.widths in self.reusable:
                self.reused += 1
                self.tell(candidate.token, self.reusable[candidate.widths], {"reused": True})
                continue
            if self.reuses_results and candidate.widths in self.finished:
                self.repeats += 1
                self.tell(candidate.token, self.finished[candidate.widths], {"repeated": True})
                continue
            leader = self._in_flight(candidate) if self.reuses_results else None
            if leader is not None:
                self.repeats += 1
                self.followers.setdefault(leader, []).append(candidate.token)
                continue
            self.asked += 1
            return candidate
        self.shortfall = (f"the searcher kept proposing known width vectors ({self.reused} "
                          f"answered from finished runs, {self.repeats} from this search)")
        return FINISHED

    def warm(self, known: dict) -> None:
        """Start from known results (width vector -> fitness, e.g. a finished run's
        candidates at another budget; call before the first ``ask``): the feasible ones enter
        ``history`` (so ``best`` sees them), and a proposal of any known vector is answered
        from it without a trial."""
        if self.asked or self.reused or self.pending:
            raise RuntimeError("warm() must be called before the first ask()")
        if not self.reuses_results:
            raise ValueError(f"searcher {self.name} cannot start from known results (each step "
                             f"needs what its own trial reports)")
        self.reusable = {tuple(int(v) for v in w): float(f) for w, f in known.items()}
        for widths, value in self.reusable.items():
            if self.cost(widths) <= self.limit * (1 + 1e-9):
                self.history.append((widths, value, "known"))
        self._warm(dict(self.reusable))

    def tell(self, token: int, fitness: float | None, info: dict | None = None) -> None:
        """Report proposal ``token``'s fitness (higher is better; ``None`` or non-finite for a
        failed candidate, which counts as the worst). Unknown tokens are ignored."""
        candidate = self.pending.pop(token, None)
        if candidate is None:
            return
        value = WORST if fitness is None or not np.isfinite(fitness) else float(fitness)
        self.history.append((candidate.widths, value, candidate.origin))
        if value > WORST and not (info or {}).get("reused"):
            # A failed candidate is not remembered: proposing it again retries it.
            self.finished.setdefault(candidate.widths, value)
        self._observe(candidate, value, info or {})
        for follower in self.followers.pop(token, []):  # the same widths, proposed meanwhile
            self.tell(follower, fitness, {"repeated": True})

    def _in_flight(self, candidate: Candidate) -> int | None:
        """The token of a trained proposal with ``candidate``'s widths still running."""
        waiting = {t for tokens in self.followers.values() for t in tokens}
        for token, other in self.pending.items():
            if (token != candidate.token and token not in waiting
                    and other.widths == candidate.widths):
                return token
        return None

    # -- helpers -------------------------------------------------------------------------
    @property
    def proposals(self) -> int:
        """Proposals made so far: trained, answered by known results or repeated (each one's
        token is its number)."""
        return self.asked + self.reused + self.repeats

    def draft(self, widths, origin: str, options: dict | None = None) -> Candidate:
        """A proposal for :meth:`_next` to return (numbered by ``ask``)."""
        return Candidate(-1, widths, origin, self.name, options or {})

    def cost(self, widths):
        """The budgeted cost (in ``self.view.unit``) of one width vector or each row."""
        return self.view.cost(widths)

    def project(self, widths) -> np.ndarray:
        """``widths`` snapped and repaired into the budget."""
        return self.space.project(widths, self.limit, cost=self.view)

    def sample(self, n: int, low: float) -> np.ndarray:
        """``n`` random grid vectors costing between ``low`` (a fraction of the limit, never
        below the floor) and the limit."""
        lo = max(low * self.limit, self.view.floor)
        return self.space.sample(self.rng, n, (lo, self.limit), cost=self.view)

    def sample_near(self, low: float) -> np.ndarray:
        """One random grid vector costing between ``low`` of the limit and the limit; a coarse
        grid (few widths per group) may have none there, and then the lower bound steps down
        (remembered in ``reachable``, so later draws skip what failed)."""
        for step in (low, 0.9, 0.8, 0.5, 0.0):
            if step > min(low, getattr(self, "reachable", 1.0)):
                continue
            try:
                return self.sample(1, step)[0]
            except ValueError:  # WidthError: nothing on the grid costs that much within budget
                self.reachable = step * 0.999
        return self.project(self.space.lower)

    def fill(self, widths, low: float = 0.97) -> np.ndarray:
        """``widths`` (within the budget) widened one grid step at a time in random groups,
        each step kept only if the vector stays within the budget, until it costs at least
        ``low`` of the limit or no step fits: a structure that leaves budget unspent is
        rarely the best one."""
        w = np.array(widths, dtype=np.int64)
        target = low * self.limit
        if self.cost(w) >= target:
            return w
        grids = [self.space.grid(g) for g in range(len(w))]
        pos = np.array([int(np.searchsorted(grid, v)) for grid, v in zip(grids, w)])
        while self.cost(w) < target:
            for g in self.rng.permutation(np.nonzero(pos < [len(gr) - 1 for gr in grids])[0]):
                trial = w.copy()
                trial[g] = grids[g][pos[g] + 1]
                if self.cost(trial) <= self.limit:
                    w, pos[g] = trial, pos[g] + 1
                    break
            else:
                break
        return w

    def feasible(self, widths) -> tuple[int, ...]:
        """Snap to the grid and repair into the budget."""
        return tuple(int(v) for v in self.project(self.space.snap(widths)))

    @property
    def best(self) -> tuple[tuple[int, ...], float] | None:
        done = [(w, f) for w, f, _ in self.history if f > WORST]
        return max(done, key=lambda t: t[1]) if done else None

    def state(self) -> dict:
        """Everything needed to continue, as plain data."""
        state = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in self._static}
        state["rng"] = self.rng.bit_generator.state
        return state

    def load_state(self, state: dict) -> None:
        state = dict(state)  # the caller's state (e.g. the search journal's) stays whole
        rng_state = state.pop("rng")
        self.__dict__.update(copy.deepcopy(state))
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = rng_state
