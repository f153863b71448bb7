"""Exact MACs and parameter counts of a width vector, in closed form and vectorised.

Every conv/linear MAC count and every parameter tensor's size is a product of two factors, each
affine in the width vector: ``count = coef * (a0 + A @ w) * (b0 + B @ w)``. The shapes (kernel
size, output resolution, how many times a module runs) are recorded once by one forward pass
(:func:`structsearch.tracing.record_shapes`), so evaluating thousands of width vectors is two
small matrix products. This module is numpy only: searchers evaluate costs without torch.

MACs are those of conv and linear layers, bias excluded (the convention of Li et al., HRank,
DMCP); parameters are every trainable tensor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Affine:
    """``const + coef . widths``: a channel count as a function of the width vector."""

    const: float
    coef: np.ndarray  # (G,)


class CostModel:
    """Sum of ``coef_t * (a0_t + A_t w) * (b0_t + B_t w)`` over terms t."""

    def __init__(self, num_groups: int):
        self.num_groups = num_groups
        self._terms: list[tuple[float, Affine, Affine, str]] = []
        self._frozen = False

    def add(self, coef: float, a: Affine, b: Affine, label: str = "") -> None:
        if coef:
            self._terms.append((float(coef), a, b, label))
            self._frozen = False

    def _freeze(self) -> None:
        g = self.num_groups
        t = len(self._terms)
        self.coef = np.array([c for c, _, _, _ in self._terms], dtype=np.float64)
        self.a0 = np.array([a.const for _, a, _, _ in self._terms], dtype=np.float64)
        self.b0 = np.array([b.const for _, _, b, _ in self._terms], dtype=np.float64)
        self.A = np.zeros((t, g)) if t else np.zeros((0, g))
        self.B = np.zeros((t, g)) if t else np.zeros((0, g))
        for i, (_, a, b, _) in enumerate(self._terms):
            self.A[i] = a.coef
            self.B[i] = b.coef
        # The total is a quadratic form in w: const + lin . w + w^T quad w. Evaluating that is
        # one G x G product instead of two T x G ones (T terms >> G groups), and every entry is
        # an integer-valued float, so the rounded result stays exact.
        self._const = float(np.sum(self.coef * self.a0 * self.b0))
        self._lin = (self.coef * self.b0) @ self.A + (self.coef * self.a0) @ self.B
        self._quad = self.A.T @ (self.coef[:, None] * self.B)
        self.labels = [lab for _, _, _, lab in self._terms]
        self._frozen = True

    def __call__(self, widths) -> np.ndarray | int:
        """Cost of one width vector (returns an int) or of rows of a 2-D array (returns floats)."""
        if not self._frozen:
            self._freeze()
        w = np.asarray(widths, dtype=np.float64)
        if w.ndim == 1:
            return int(round(self._const + float(w @ (self._lin + self._quad @ w))))
        return np.rint(self._const + w @ self._lin + np.einsum("ij,ij->i", w @ self._quad, w))

    def terms(self) -> list[tuple[float, Affine, Affine, str]]:
        """Every term as ``(coef, a, b, label)``: its cost is ``coef * a(w) * b(w)``."""
        return list(self._terms)

    def per_term(self, widths) -> dict[str, float]:
        """Cost of each labelled term (e.g. per layer) at one width vector."""
        if not self._frozen:
            self._freeze()
        w = np.asarray(widths, dtype=np.float64)
        vals = self.coef * (self.a0 + self.A @ w) * (self.b0 + self.B @ w)
        out: dict[str, float] = {}
        for lab, v in zip(self.labels, vals):
            out[lab] = out.get(lab, 0.0) + float(v)
        return out
