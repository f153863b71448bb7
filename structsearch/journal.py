"""The search journal: what ``--resume`` continues from.

After every finished candidate the driver rewrites RUN_DIR/tune/search_journal.json in one
atomic step: each finished trial (its candidate config, its candidates.csv row, its checkpoint
path), the searcher's whole state, including the configs it handed out whose results had not
come back, and the trial scheduler's state (ASHA's rungs) when there is one. A resumed search
loads the searcher's state, trains those unfinished configs again (first, with their original
tokens), asks the searcher for the rest, and reports every candidate once.

The journal is JSON of plain data (:mod:`structsearch.plain`): loading it builds numbers,
strings, lists, dicts, tuples, sets and numpy arrays, never objects of a class named in the
file, so a run directory on shared storage cannot make ``--resume`` run code. A pickled journal
(an older structsearch, or a planted file) is refused, never unpickled.

Ray Tune's own experiment snapshot is not used for this: it is saved on a timer and copied to
storage file by file in a background thread, so a driver killed at the wrong moment can leave a
trial list and a searcher state from different moments. The journal is one file, written from
the callback that runs right after the searcher has been told a result, so the two always agree.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import plain

JOURNAL_VERSION = 2
JOURNAL_FILE = "search_journal.json"
_PICKLED_FILE = "search_journal.pkl"  # what structsearch before JSON journals wrote


class JournalError(RuntimeError):
    """The journal cannot be read or written; the message names the file and the fix."""


@dataclass
class Journal:
    core: dict | None = None          # SearchCore.state() after the last recorded result
    unfinished: list[dict] = field(default_factory=list)  # configs handed out, results not told
    trials: list[dict] = field(default_factory=list)      # finished trials, in finishing order
    finished: bool = False  # the searcher has said it proposes nothing more
    scheduler: dict | None = None  # the trial scheduler's state (ASHA's rungs), when one is used


def journal_path(run_dir: Path) -> Path:
    return Path(run_dir) / "tune" / JOURNAL_FILE


def save_journal(path: Path, journal: Journal) -> None:
    """Write to a private file, flush it to disk, then rename over the old journal: a kill at
    any moment leaves either the previous journal or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": JOURNAL_VERSION, "core": journal.core, "unfinished": journal.unfinished,
            "trials": journal.trials, "finished": journal.finished, "scheduler": journal.scheduler}
    text = json.dumps(plain.encode(data))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_journal(path: Path) -> Journal | None:
    """The journal at ``path``, or None when there is none (nothing had finished yet)."""
    pickled = path.with_name(_PICKLED_FILE)
    if pickled.is_file():
        raise JournalError(f"{pickled} is a pickled search journal (from an older structsearch, or "
                           f"planted); structsearch never unpickles run-directory state: delete it "
                           f"to restart the search from its first candidate, or finish the run with "
                           f"the version that wrote it")
    if not path.is_file():
        return None
    try:
        data = plain.decode(json.loads(path.read_text()))
        if not isinstance(data, dict) or data.get("version") != JOURNAL_VERSION:
            raise ValueError(f"not a version-{JOURNAL_VERSION} search journal")
        return Journal(core=data["core"], unfinished=list(data["unfinished"]),
                       trials=list(data["trials"]), finished=bool(data["finished"]),
                       scheduler=data["scheduler"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise JournalError(f"{path} is unreadable ({type(exc).__name__}: {str(exc)[:120]}); delete "
                           f"it to restart the search from its first candidate") from None
