"""Plain data <-> JSON-safe data, for run-directory state (the search journal, searcher states).

``encode`` turns numbers, strings, lists, dicts (any hashable plain keys), tuples, sets, numpy
arrays and scalars, and :class:`~structsearch.candidate.Candidate` values into JSON-safe data
(non-finite floats included); ``decode`` rebuilds them. Decoding only ever builds those types:
nothing read from disk can name a class or run code (unlike pickle).
"""
from __future__ import annotations

import math

import numpy as np

from .candidate import Candidate

_TAG = "__plain__"


def encode(obj):
    """``obj`` as JSON-safe data; raises TypeError for anything that is not plain data."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, tuple):
        return {_TAG: "tuple", "v": [encode(v) for v in obj]}
    if isinstance(obj, (set, frozenset)):
        items = [encode(v) for v in obj]
        return {_TAG: "set", "v": items}
    if isinstance(obj, np.ndarray):
        return {_TAG: "ndarray", "dtype": obj.dtype.str, "shape": list(obj.shape),
                "v": [encode(v) for v in obj.ravel().tolist()]}
    if isinstance(obj, Candidate):
        return {_TAG: "candidate", "v": encode(obj.to_config())}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and _TAG not in obj:
            return {k: encode(v) for k, v in obj.items()}
        return {_TAG: "dict", "v": [[encode(k), encode(v)] for k, v in obj.items()]}
    raise TypeError(f"{type(obj).__name__} is not plain data (cannot be stored as JSON)")


def decode(data):
    """The value :func:`encode` turned into ``data``."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    kind = data.get(_TAG)
    if kind is None:
        return {k: decode(v) for k, v in data.items()}
    if kind == "float":
        return float(data["v"])
    if kind == "tuple":
        return tuple(decode(v) for v in data["v"])
    if kind == "set":
        return {decode(v) for v in data["v"]}
    if kind == "ndarray":
        values = [decode(v) for v in data["v"]]
        return np.array(values, dtype=np.dtype(data["dtype"])).reshape(data["shape"])
    if kind == "candidate":
        return Candidate.from_config(decode(data["v"]))
    if kind == "dict":
        return {decode(k): decode(v) for k, v in data["v"]}
    raise ValueError(f"unknown plain-data tag {kind!r}")
