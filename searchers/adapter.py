"""Adapter from a numpy :class:`~searchers.core.SearchCore` to ``ray.tune.search.Searcher``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ray.tune.search import Searcher

from structsearch import plain
from structsearch.candidate import Candidate

from .core import FINISHED, SearchCore


class TuneSearcher(Searcher):
    """``suggest`` returns a candidate's trial config (``Candidate.to_config``), ``None`` while
    the core waits for results, or ``Searcher.FINISHED``; errored trials count as the worst
    fitness."""

    def __init__(self, core: SearchCore, *, metric: str = "val_acc", requeue=()):
        super().__init__(metric=metric, mode="max")
        self.core = core
        self.tokens: dict[str, int] = {}
        # Configs handed out whose results have not come back, by token.
        self.configs: dict[int, dict] = {}
        # An interrupted search's unfinished proposals: handed out again, first, unchanged.
        self.requeue: list[dict] = [dict(c) for c in sorted(requeue, key=lambda c: c["token"])]
        self.finished = False  # the core has answered FINISHED: it proposes nothing more

    def suggest(self, trial_id: str):
        if self.requeue:
            config = self.requeue.pop(0)
        else:
            proposal = self.core.ask()
            if proposal == FINISHED:
                self.finished = True
                return Searcher.FINISHED
            if proposal is None:
                return None
            assert isinstance(proposal, Candidate)
            config = proposal.to_config()
        self.tokens[trial_id] = config["token"]
        self.configs[config["token"]] = config
        return dict(config)

    def unfinished(self) -> list[dict]:
        """The configs of proposals handed out (or waiting to be handed out again) whose
        results the core has not been told: what a resumed search must train again."""
        return [dict(c) for c in sorted([*self.configs.values(), *self.requeue],
                                        key=lambda c: c["token"])]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        token = self.tokens.pop(trial_id, None)
        if token is None:
            return
        self.configs.pop(token, None)
        fitness = None
        if not error and result and self.metric in result and result.get("status", "ok") == "ok":
            fitness = float(result[self.metric])
        self.core.tell(token, fitness, dict(result or {}) if not error else {})

    def save(self, checkpoint_path: str) -> None:
        # Plain JSON, written then renamed: an interrupted save never leaves a half-written state.
        data = {"core": self.core.state(), "tokens": dict(self.tokens),
                "configs": dict(self.configs), "requeue": list(self.requeue)}
        tmp = Path(str(checkpoint_path) + ".tmp")
        tmp.write_text(json.dumps(plain.encode(data)))
        os.replace(tmp, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        data = plain.decode(json.loads(Path(checkpoint_path).read_text()))
        self.core.load_state(data["core"])
        self.tokens = data["tokens"]
        self.configs = data["configs"]
        self.requeue = data["requeue"]
