"""structsearch: search per-layer channel widths of a CNN under a compute budget.

The public names load on first use (PEP 562), so importing a numpy-only part of the package
(``structsearch.space``, ``structsearch.ranking``; the searchers) does not import torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "WidthSpace": "space", "Group": "space", "Member": "space", "WidthError": "space",
    "prune": "surgery", "save_pruned": "surgery", "load_pruned": "surgery",
    "export_onnx": "surgery", "CheckpointError": "surgery",
    "search": "api", "SearchResult": "api", "load_result": "api",
}

__all__ = ["WidthSpace", "Group", "Member", "WidthError", "prune", "save_pruned", "load_pruned",
           "export_onnx", "CheckpointError", "search", "SearchResult", "load_result",
           "__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
