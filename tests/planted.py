"""A pickle that runs code when loaded: what a planted run-directory file could hold."""
import pickle


class _Planted:
    """Unpickling this creates the file ``marker`` (``open(marker, "w")`` runs)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_journal(marker) -> bytes:
    """Bytes of a version-1 (pickled) search journal whose loading would create ``marker``."""
    return pickle.dumps({"version": 1, "core": _Planted(marker)})
