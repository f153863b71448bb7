"""The budget a search must meet and the cost view it is measured in (numpy only).

A :class:`Budget` is what the config asks for (``budget.macs_ratio`` / ``macs`` / ``params`` /
``latency_ms``) resolved against the baseline into one number with its unit. A cost view gives
the same quantity for any width vector: ``cost(widths)`` is vectorised like
``WidthSpace.macs`` (one vector -> a number, a 2-D array -> one number per row). Searchers see
only a cost view and a limit, so every searcher works under every kind of budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Budget:
    """``kind`` is ``macs``, ``params`` or ``latency``; ``limit`` is in ``unit``."""

    kind: str
    limit: float
    unit: str

    def text(self) -> str:
        if self.kind == "latency":
            return f"{self.limit:.3f} ms predicted latency"
        if self.kind == "params":
            return f"{self.limit / 1e6:.4f} M parameters"
        return f"{self.limit / 1e6:.3f} M MACs"


class CostView:
    """The cost of width vectors over ``space`` in one unit (see the module docstring)."""

    kind = "macs"
    unit = "MACs"

    def __init__(self, space):
        self.space = space

    def cost(self, widths):
        return self.space.macs(widths)

    @property
    def full(self) -> float:
        """The cost of the unpruned network."""
        return self.cost(self.space.full_widths)

    @property
    def floor(self) -> float:
        """The cost of the smallest network of the space."""
        return self.cost(self.space.lower)


class MacsCost(CostView):
    """MACs of conv + linear layers, bias excluded."""


class ParamsCost(CostView):
    """Parameter count (every trainable tensor)."""

    kind = "params"
    unit = "parameters"

    def cost(self, widths):
        return self.space.params(widths)


class LatencyCost(CostView):
    """Predicted forward latency in ms from a measured per-layer model
    (:class:`structsearch.latency.LatencyTable`)."""

    kind = "latency"
    unit = "ms (predicted latency)"

    def __init__(self, space, table):
        super().__init__(space)
        self.table = table

    def cost(self, widths):
        return self.table.predict(np.asarray(widths))


VIEWS = {"macs": MacsCost, "params": ParamsCost, "latency": LatencyCost}


class BudgetError(ValueError):
    """A budget the space cannot meet or that prunes nothing (one line: what and the fix)."""


def resolve(view: CostView, *, target: float, key: str) -> Budget:
    """The budget ``target`` (in ``view``'s unit, from config key ``key``), checked against the
    baseline's cost and the smallest network of the space."""
    full, floor, unit = view.full, view.floor, view.unit
    if target > full:
        raise BudgetError(f"{key}: budget {target:.4g} {unit} is above the baseline's {full:.4g} "
                          f"{unit}; nothing to prune")
    if target < floor:
        raise BudgetError(f"{key}: budget {target:.4g} {unit} is below the smallest network in the "
                          f"space ({floor:.4g} {unit}, {100 * floor / full:.1f}% of the baseline); "
                          f"raise the budget or lower space.min_ratio")
    return Budget(view.kind, float(target), unit)
