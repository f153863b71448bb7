"""A search reused at other budgets: ``structsearch search CONFIG --from RUN_DIR``.

A finished run's candidates were trained exactly as this run would train them (same baseline,
data, validation split, seed, criterion and candidate training), so their fitness answers this
run's searcher without training them again: the searcher starts from every known candidate
(:meth:`searchers.core.SearchCore.warm`: ABC's first sources, Optuna's completed trials) and a
proposal of a known width vector is told its known fitness at once, without a trial. The known
candidates join this run's candidates.csv (column ``from_run``), so the winner is the best of
all of them within the new budget, and the report shows the best candidate per budget level
(the accuracy-vs-MACs front over the runs).

Everything is checked before Ray starts; ``RUN_DIR/warm_start.json`` keeps what was read, so
``--resume`` needs no ``--from``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import config as config_mod
from . import report
from .config import Config, ConfigError
from .rundir import RunDirError
from .surgery import WEIGHTS_FILE

FILE = "warm_start.json"

# Config keys that may differ from a source run: they choose which candidates are proposed and
# what happens to the winner, not how a candidate is trained and scored.
MAY_DIFFER = ("budget.", "final.", "search.searcher", "search.candidates", "search.concurrent",
              "search.resources.", "search.params.", "search.abc.", "search.seeds",
              "search.reevaluate", "search.reevaluate_seeds", "search.reevaluate_by",
              "search.max_failures",
              "search.scheduler", "search.storage_path", "space.round_to", "space.min_ratio",
              "space.check", "space.trace_timeout_s", "data.root", "data.download")


@dataclass
class WarmStart:
    """What the source runs hold: their candidates (each width vector once, first source
    first) and the budget levels they searched."""

    sources: list[str]
    rows: list[dict] = field(default_factory=list)
    levels: list[dict] = field(default_factory=list)  # {"run", "kind", "limit"}

    def known(self, space) -> dict[tuple[int, ...], float]:
        """Width vector -> fitness of every finished candidate valid in ``space``."""
        return {tuple(r["widths"]): float(r["val_acc"]) for r in self.rows
                if r["status"] == "ok" and r["val_acc"] is not None and _valid(space, r["widths"])}

    def rows_for(self, p, baseline: dict) -> list[dict]:
        """The known candidates as this run's candidates.csv rows: costs under this run's
        budget view; a source's winner points to its kept weights (``known_weights``; never
        ``checkpoint``, whose directories this run cleans up)."""
        out = []
        usable = [r for r in self.rows if r["status"] == "ok" and _valid(p.space, r["widths"])]
        for index, row in enumerate(usable):
            w = list(row["widths"])
            out.append(dict(row, macs=int(p.space.macs(w)), params=int(p.space.params(w)),
                            cost=float(p.view.cost(w)),
                            macs_ratio=float(p.space.macs(w)) / baseline["macs"],
                            token=-1 - index, checkpoint=None,
                            known_weights=_winner_weights(row)))
        return out


def _valid(space, widths) -> bool:
    return len(widths) == len(space) and all(
        1 <= int(w) <= g.width for w, g in zip(widths, space.groups))


def _winner_weights(row: dict) -> str | None:
    """A source run keeps only its winner's trained weights (RUN/winner)."""
    winner = Path(row["from_run"]) / "winner"
    try:
        arch = json.loads((winner / "arch.json").read_text())
    except (OSError, ValueError):
        return None
    same = arch.get("trial_id") == row["trial_id"]
    return str(winner) if same and (winner / WEIGHTS_FILE).is_file() else None


def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): data}


def check_compatible(cfg: Config, source: Path) -> dict:
    """The source's resolved budget; raises ConfigError naming the first key whose value makes
    the source's candidates incomparable with this run's."""
    saved = config_mod.read_yaml(source / "config.yaml")
    resolved = saved.pop("_resolved", {}) or {}
    theirs, ours = _flat(config_mod.from_dict(saved).to_dict()), _flat(cfg.to_dict())
    for key in sorted(set(theirs) | set(ours)):
        if theirs.get(key) != ours.get(key) and not (key + ".").startswith(MAY_DIFFER):
            raise ConfigError(
                f"--from {source}: {key} is {theirs.get(key)!r} there and {ours.get(key)!r} here; "
                f"its candidates' fitness compares only under the same {key}: use the same value "
                f"or drop --from")
    return resolved.get("budget") or {}


def _digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _read_source(cfg: Config, src: Path) -> tuple[list[dict], list[dict]]:
    if not (src / "config.yaml").is_file() or not (src / "candidates.csv").is_file():
        raise RunDirError(f"--from {src}: not a finished structsearch run (no config.yaml or "
                          f"candidates.csv); finish it with --resume or pass another run directory")
    if not (src / "baseline" / WEIGHTS_FILE).is_file():
        raise RunDirError(f"--from {src}: its baseline weights ({src / 'baseline' / WEIGHTS_FILE}) "
                          f"are missing; the candidates were trained from them")
    budget = check_compatible(cfg, src)
    try:
        rows = report.read_candidates(src / "candidates.csv")
    except (OSError, ValueError, KeyError) as exc:
        raise RunDirError(f"--from {src}: candidates.csv cannot be read ({exc}); pass another "
                          f"run directory") from None
    for row in rows:
        row["from_run"] = row.get("from_run") or str(src)
    levels = [{"run": str(src), "kind": budget.get("kind"), "limit": budget.get("limit")}]
    earlier = src / FILE
    if earlier.is_file():
        levels = json.loads(earlier.read_text()).get("levels", []) + levels
    return rows, levels


def open_sources(cfg: Config, run_dir: Path, sources: list[str], resume: bool) -> WarmStart | None:
    """Read and check ``--from`` runs before Ray starts, put their baseline into this run and
    keep what was read in RUN_DIR/warm_start.json (read back on ``--resume``)."""
    file = run_dir / FILE
    if resume and file.is_file():
        data = json.loads(file.read_text())
        if sources and [str(Path(s).expanduser().resolve()) for s in sources] != data["sources"]:
            raise RunDirError(f"--resume: this run started from {', '.join(data['sources'])}; "
                              f"resume with the same --from or without it")
        return WarmStart(**data)
    if not sources:
        return None
    warm, seen, digest = WarmStart(sources=[]), set(), None
    for given in sources:
        src = Path(given).expanduser().resolve()
        if src == run_dir:
            raise RunDirError(f"--from {src} is this run's own directory; pass a finished run")
        rows, levels = _read_source(cfg, src)
        mine = _digest(src / "baseline" / WEIGHTS_FILE)
        if digest is not None and mine != digest:
            raise RunDirError(f"--from {src}: its baseline differs from {warm.sources[0]}'s; warm "
                              f"start from runs of one baseline")
        digest = digest or mine
        warm.sources.append(str(src))
        warm.levels += [lv for lv in levels if lv not in warm.levels]
        for row in rows:
            if tuple(row["widths"]) not in seen:
                seen.add(tuple(row["widths"]))
                warm.rows.append(row)
    baseline = run_dir / "baseline"
    if not (baseline / WEIGHTS_FILE).is_file():
        shutil.copytree(Path(warm.sources[0]) / "baseline", baseline, dirs_exist_ok=True)
    report.write_json({"sources": warm.sources, "rows": warm.rows, "levels": warm.levels}, file)
    return warm


def front(warm: WarmStart | None, rows: list[dict], budget) -> list[dict]:
    """The best candidate per budget level (the source runs' budgets of this run's kind and
    this run's), smallest level first."""
    if warm is None:
        return []
    limits = {float(lv["limit"]) for lv in warm.levels if lv["kind"] == budget.kind and lv["limit"]}
    limits.add(float(budget.limit))
    out = []
    for limit in sorted(limits):
        ok = [r for r in rows if r["status"] == "ok" and r["val_acc"] is not None
              and r["cost"] <= limit * (1 + 1e-9)]
        if not ok:
            continue
        best = max(ok, key=lambda r: (r["val_acc"], -r["macs"]))
        out.append({"kind": budget.kind, "limit": limit, "this_run": limit == float(budget.limit),
                    "val_acc": best["val_acc"], "macs_ratio": best["macs_ratio"],
                    "trial_id": best["trial_id"], "origin": best["origin"],
                    "from_run": best.get("from_run") or "", "candidates": len(ok)})
    return out


def check_searcher(name: str, warm: bool) -> None:
    """A searcher that cannot take known results is refused before Ray starts."""
    import searchers
    if not warm or not searchers.available(name):
        return
    for part in searchers.parts(name):
        if not searchers.get(part).reuses_results:
            raise ConfigError(f"--from: search.searcher {part} cannot start from known results "
                              f"(each of its steps needs what its own trial reports); choose "
                              f"another searcher or drop --from")


def retrain_winner(p, scores, baseline: dict, winner: dict) -> dict:
    """A known winner whose weights the source run did not keep, trained once more exactly as
    in its search (same seed: the same weights on the same hardware) for the final stage; or a
    one-shot structure that won the fine-tune re-evaluation without being a search candidate,
    trained as a candidate is."""
    from .candidate import Candidate
    from .preflight import say
    from .reevaluate import train_candidates
    from .summary import SearchFailed
    from .twostage import fitness_after_search
    if winner.get("checkpoint"):
        return winner
    if winner.get("known_weights"):
        return dict(winner, checkpoint=winner["known_weights"])
    say(f"winner: {winner['trial_id']} comes from {winner['from_run']}, which kept only its own "
        f"winner's weights; training it once more as in its search" if winner.get("from_run") else
        f"winner: {winner['trial_id']} is a one-shot structure the search did not train; training "
        f"it as a candidate for the final stage")
    c = Candidate(0, winner["widths"], winner["origin"], winner["searcher"], {"repeat": 0})
    results = train_candidates(p, scores, baseline, "winner_weights",
                               [{"candidate": c.to_config(), "trial_id": winner["trial_id"]}],
                               label="winner weights", concurrent=1,
                               fitness=fitness_after_search(p.cfg))
    result = results[0]
    if result.error is not None or result.checkpoint is None:
        raise SearchFailed(f"the winner {winner['trial_id']} could not be trained again: "
                          f"{str(result.error).splitlines()[-1][:200] if result.error else 'no weights'}")
    return dict(winner, checkpoint=result.checkpoint)
