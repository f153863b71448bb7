"""The search journal: atomic rewrite, round trip, and one clear error for an unusable file."""
import pickle

import numpy as np
import pytest

from structsearch.journal import Journal, JournalError, journal_path, load_journal, save_journal


def test_round_trip_and_no_leftovers(tmp_path):
    path = journal_path(tmp_path)
    assert load_journal(path) is None  # nothing finished yet
    core = {"asked": 3, "rng": {"state": 7}, "history": [((4, 8), 0.5, "random")],
            "array": np.arange(4)}
    trials = [{"trial_id": "a1", "config": {"widths": [4, 8], "token": 0},
               "metrics": {"val_acc": 0.5}, "error": None, "checkpoint": None}]
    save_journal(path, Journal(core=core, unfinished=[{"widths": [2, 8], "token": 1}], trials=trials))
    save_journal(path, Journal(core=core, unfinished=[], trials=trials * 2))  # rewritten in place
    got = load_journal(path)
    assert got.trials == trials * 2 and got.unfinished == []
    assert got.core["asked"] == 3 and np.array_equal(got.core["array"], np.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["search_journal.pkl"]


@pytest.mark.parametrize("content", [b"", b"\x80\x05 torn", pickle.dumps({"version": 99}),
                                     pickle.dumps([1, 2])])
def test_unusable_journal_names_file_and_fix(tmp_path, content):
    path = journal_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(JournalError, match=r"search_journal\.pkl is unreadable .*delete it"):
        load_journal(path)
