"""One registry type for every named, pluggable piece: models, datasets, criteria, searchers.

Each kind keeps one :class:`Registry`; entries are added in one way (``add``, or the
``register`` decorator), listed in one way (``names``) and looked up in one way (``get``, whose
KeyError names the kind and lists the valid names). Plain Python: searchers use it too.
"""
from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> entry for one ``kind`` of thing; ``hint`` ends the unknown-name message (e.g.
    open-ended names such as ``torchvision:<name>``)."""

    def __init__(self, kind: str, *, hint: str = ""):
        self.kind, self.hint = kind, hint
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T, *, replace: bool = False) -> T:
        if not replace and name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda entry: self.add(name, entry, replace=replace)

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}; {guess}choose one of "
                           f"{', '.join(self.names())}{self.hint}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self):
        return sorted(self._entries.items())
