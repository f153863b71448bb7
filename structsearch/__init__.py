"""structsearch: search per-layer channel widths of a CNN under a compute budget."""
from __future__ import annotations

__version__ = "0.1.0"

from .space import Group, Member, WidthError, WidthSpace  # noqa: E402
from .surgery import (CheckpointError, export_onnx, load_pruned, prune,  # noqa: E402
                      save_pruned)

__all__ = ["WidthSpace", "Group", "Member", "WidthError", "prune", "save_pruned", "load_pruned",
           "export_onnx", "CheckpointError", "__version__"]
