"""The Candidate value (a width vector with where it came from) and its result row.

A candidate crosses into a Ray Tune trial config at one place (:meth:`Candidate.to_config`) and
back at one place (:meth:`Candidate.from_config`); its candidates.csv row is built once, when
its trial finishes (:func:`result_row`), with MACs, parameters and the budgeted cost computed
there. Plain Python only (no numpy, no torch): searchers build candidates too.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """One proposed width vector.

    ``token`` numbers the proposals of a search (0, 1, ...); ``origin`` says where the widths
    came from (``abc:employed``, ``seed:uniform``, ``dmcp:ds`` ...); ``searcher`` is the proposing
    searcher (the part of a composite); ``options`` are instructions to the trial beyond the
    widths, e.g. DropNet's explicit channels ``keep``, ``init: original`` and
    ``channel_scores: True`` (see ``trainables.candidate``).
    """

    token: int
    widths: tuple[int, ...]
    origin: str
    searcher: str = ""
    options: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "token", int(self.token))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "options", dict(self.options or {}))

    def to_config(self) -> dict:
        """The trial config (plain JSON data)."""
        return {"token": self.token, "widths": list(self.widths), "origin": self.origin,
                "searcher": self.searcher, "options": dict(self.options)}

    @classmethod
    def from_config(cls, config: dict) -> "Candidate":
        return cls(token=config.get("token", 0), widths=config["widths"],
                   origin=config.get("origin", ""), searcher=config.get("searcher", ""),
                   options=config.get("options") or {})


# The columns of candidates.csv, in order (``error``, ``cost``, ``reconstructed``, whether the
# least-squares reconstruction ran, ``node``, the Ray node the trial ran on, and ``from_run``,
# the finished run a known candidate was trained in (``--from``; empty: trained in this run),
# after the contract's columns).
COLUMNS = ("trial_id", "searcher", "origin", "widths", "macs", "params", "macs_ratio", "val_acc",
           "epochs", "seconds", "status", "error", "cost", "reconstructed", "node", "from_run")


def result_row(candidate: Candidate, *, trial_id: str, metrics: dict, error: str | None,
               macs: float, params: float, cost: float, baseline_macs: float,
               full_epochs: int | None) -> dict:
    """A finished trial's candidates.csv row. ``metrics`` is the trial's last report; a trial
    that ran fewer than ``full_epochs`` epochs (stopped early by the scheduler) is ``stopped``:
    its accuracy is not comparable. ``full_epochs=None`` skips that check (adaptive-BN fitness
    trains no epoch)."""
    status = "error" if error is not None or metrics.get("status") == "error" else "ok"
    epochs = metrics.get("epoch", 0)
    if status == "ok" and full_epochs is not None and epochs < full_epochs:
        status = "stopped"
    return {
        "trial_id": metrics.get("trial_id") or trial_id,
        "searcher": candidate.searcher, "origin": candidate.origin,
        "widths": list(candidate.widths), "macs": int(macs), "params": int(params),
        "macs_ratio": int(macs) / baseline_macs,
        "val_acc": metrics.get("val_acc") if status != "error" else None,
        "epochs": epochs, "seconds": round(float(metrics.get("time_total_s", 0.0)), 2),
        "status": status,
        "error": error if error is not None else metrics.get("error", ""),
        "cost": cost, "reconstructed": bool(metrics.get("reconstructed", False)),
        "node": str(metrics.get("node") or ""),
        "token": candidate.token,
    }


def pick_winner(rows: list[dict], limit: float) -> dict | None:
    """The best ``ok`` row whose budgeted cost is within ``limit``; ties go to fewer MACs."""
    ok = [r for r in rows if r["status"] == "ok" and r["val_acc"] is not None
          and r["cost"] <= limit * (1 + 1e-9)]
    if not ok:
        return None
    return max(ok, key=lambda r: (r["val_acc"], -r["macs"]))
