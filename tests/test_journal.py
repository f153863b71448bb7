"""The search journal: atomic rewrite, round trip as plain JSON, one clear error for an unusable
file, and a pickled journal refused without being unpickled."""
import json

import numpy as np
import pytest

from planted import planted_journal
from structsearch.candidate import Candidate
from structsearch.journal import Journal, JournalError, journal_path, load_journal, save_journal


def test_round_trip_and_no_leftovers(tmp_path):
    path = journal_path(tmp_path)
    assert load_journal(path) is None  # nothing finished yet
    core = {"asked": 3, "rng": {"state": 7}, "history": [((4, 8), float("-inf"), "random")],
            "array": np.arange(4), "known": {(4, 8): 0.5}, "seen": {(2, 8)},
            "pending": {1: Candidate(1, (2, 8), "random", "random")}}
    trials = [{"trial_id": "a1", "config": {"widths": [4, 8], "token": 0},
               "row": {"val_acc": 0.5, "status": "ok"}, "checkpoint": "/x/checkpoint_000000"}]
    save_journal(path, Journal(core=core, unfinished=[{"widths": [2, 8], "token": 1}], trials=trials))
    save_journal(path, Journal(core=core, unfinished=[], trials=trials * 2))  # rewritten in place
    got = load_journal(path)
    assert got.trials == trials * 2 and got.unfinished == []
    assert got.core["asked"] == 3 and np.array_equal(got.core["array"], np.arange(4))
    assert got.core["array"].dtype == np.arange(4).dtype
    assert got.core["history"] == [((4, 8), float("-inf"), "random")]
    assert got.core["known"] == {(4, 8): 0.5} and got.core["seen"] == {(2, 8)}
    assert got.core["pending"][1] == Candidate(1, (2, 8), "random", "random")
    assert sorted(p.name for p in path.parent.iterdir()) == ["search_journal.json"]
    json.loads(path.read_text())  # strict JSON (no NaN/Infinity literals)
    assert "Infinity" not in path.read_text()


@pytest.mark.parametrize("content", [b"", b"{torn", json.dumps({"version": 99}).encode(),
                                     b"[1, 2]", json.dumps({"__plain__": "object", "v": "os.system"}).encode()])
def test_unusable_journal_names_file_and_fix(tmp_path, content):
    path = journal_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(JournalError, match=r"search_journal\.json is unreadable .*delete it"):
        load_journal(path)


def test_a_pickled_journal_is_refused_without_unpickling(tmp_path):
    path = journal_path(tmp_path)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    planted = path.with_name("search_journal.pkl")
    planted.write_bytes(planted_journal(marker))
    with pytest.raises(JournalError, match=r"search_journal\.pkl is a pickled search journal.*never unpickles.*delete it"):
        load_journal(path)
    assert not marker.exists(), "the planted pickle must not have been loaded"
    # The plant is real, read without loading it: its opcodes call io.open on the marker.
    import pickletools
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(planted_journal(tmp_path / "x"))]
    strings = {arg for _, arg in ops if isinstance(arg, str)}
    assert {"io", "open", str(tmp_path / "x")} <= strings and any(name == "REDUCE" for name, _ in ops)
    assert planted.is_file(), "the file is left for the user to inspect"
