"""Models and datasets named by where their code lives: ``package.module:factory`` entry points
and in-process Python objects (``object:<token>``, what :func:`structsearch.search` registers).

An entry point is imported when it is used, in the driver and in every Ray worker, so its
package must be importable on every node (pip-installed, or a directory on the driver's
``sys.path``, which local Ray workers inherit). Importing user code is the point of an entry
point; nothing read from a run directory is ever imported or unpickled.

In-process objects travel to Ray workers by value (cloudpickle, inside the experiment's shared
parameters): :func:`exported` lists what a worker must :func:`adopt` before building.
"""
from __future__ import annotations

import hashlib
import importlib
import re

from .config import ConfigError

OBJECT_PREFIX = "object:"
_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_OBJECTS: dict[str, dict[str, object]] = {"model": {}, "data": {}}


class EntryPointError(ConfigError):
    """An entry point that cannot be imported or called: one line naming it and the fix."""


def is_entry_point(name: str) -> bool:
    """``package.module:attribute`` (the attribute may be dotted: ``module:Class.create``)."""
    return bool(_ENTRY.match(name)) and not name.startswith(("torchvision:", "timm:"))


def resolve(name: str, key: str):
    """The object an entry point names; ``key`` is the config key for the error message."""
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EntryPointError(
            f"{key}: cannot import module '{module_name}' of entry point '{name}' ({exc}); install "
            f"its package or run from the directory that holds it (on a cluster, on every node)"
        ) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EntryPointError(f"{key}: module '{module_name}' has no attribute '{attr}' "
                                  f"(entry point '{name}')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EntryPointError(f"{key}: entry point '{name}' is not callable; name a factory "
                              f"function or class")
    return obj


def importable_name(fn) -> str | None:
    """``module:qualname`` of a function or class a worker can import by name, else None
    (defined in ``__main__``, in a notebook, or inside a function)."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname or not qualname:
        return None
    name = f"{module}:{qualname}"
    try:
        return name if resolve(name, "entry point") is fn else None
    except EntryPointError:
        return None


def register_object(kind: str, obj, payload: bytes) -> str:
    """Register ``obj`` (a model or a dataset holder) in this process under a token derived from
    its serialised ``payload``; returns ``object:<token>``."""
    token = f"{type(obj).__name__}-{hashlib.sha1(payload).hexdigest()[:12]}"
    _OBJECTS[kind][token] = obj
    return OBJECT_PREFIX + token


def get_object(kind: str, name: str):
    token = name[len(OBJECT_PREFIX):]
    if token not in _OBJECTS[kind]:
        raise EntryPointError(
            f"{kind} '{name}' was a Python object of another process; pass it again "
            f"(structsearch.search(...), or structsearch.load_pruned(path, model=<the unpruned "
            f"model>) to rebuild a saved winner)")
    return _OBJECTS[kind][token]


def exported(*names: str) -> dict:
    """The registered objects among ``names`` (``object:`` names), for :func:`adopt`."""
    out: dict[str, dict] = {"model": {}, "data": {}}
    for name in names:
        if isinstance(name, str) and name.startswith(OBJECT_PREFIX):
            token = name[len(OBJECT_PREFIX):]
            for kind, objects in _OBJECTS.items():
                if token in objects:
                    out[kind][token] = objects[token]
    return out


def shipped(*names: str) -> bytes:
    """:func:`exported` as one cloudpickle blob (empty when nothing is an object)."""
    objects = exported(*names)
    if not any(objects.values()):
        return b""
    import cloudpickle
    return cloudpickle.dumps(objects)


def adopt(objects: dict | None) -> None:
    """Register objects :func:`exported` in another process (a Ray worker)."""
    for kind, items in (objects or {}).items():
        _OBJECTS[kind].update(items)
