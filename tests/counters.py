"""Independent reference counts for the tests: fvcore's MACs and plain parameter sums."""
from __future__ import annotations

import warnings

import torch
from torch import nn

# fvcore counts one "flop" per multiply-accumulate for these ops (conv and linear layers).
MAC_OPS = {"conv", "linear", "addmm", "matmul", "bmm"}


def count_macs(model: nn.Module, input_shape) -> int:
    """Conv + linear MACs (bias excluded) of one input of ``input_shape`` (C, H, W), by fvcore."""
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fvcore uses torch.jit, which newer torch deprecates
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, torch.zeros(1, *input_shape))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        by_operator = analysis.by_operator()
    return sum(count for op, count in by_operator.items() if op in MAC_OPS)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
