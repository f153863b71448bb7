"""Layers that need their own channel surgery.

A layer here is a leaf for the dependency tracer: its input and output channels belong to
different prunable groups, and it knows how to shrink itself (``prune_channels``).
"""
from __future__ import annotations

import torch
from torch import nn


class PadShortcut(nn.Module):
    """Option-A (parameter-free) ResNet shortcut: subsample by ``stride`` and place the input
    channels at fixed positions of a wider, otherwise zero, output.

    The destination of every input channel is a buffer, so after pruning either side the layer
    still computes exactly the original function restricted to the kept channels, and the input
    and output widths can be searched independently.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("PadShortcut widens: out_channels must be >= in_channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        offset = (out_channels - in_channels) // 2
        # -1 marks an input channel whose destination was pruned away.
        self.register_buffer("dest", torch.arange(in_channels) + offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        out = x.new_zeros(x.shape[0], self.out_channels, x.shape[2], x.shape[3])
        valid = self.dest >= 0
        return out.index_copy(1, self.dest[valid], x[:, valid])

    @torch.no_grad()
    def prune_channels(self, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> None:
        """Keep input channels ``in_keep`` and output channels ``out_keep`` (sorted indices)."""
        dest = self.dest.clone()
        if out_keep is not None:
            out_keep = out_keep.to(dest.device)
            new_pos = torch.full((self.out_channels,), -1, dtype=torch.long, device=dest.device)
            new_pos[out_keep] = torch.arange(len(out_keep), device=dest.device)
            dest = torch.where(dest >= 0, new_pos[dest.clamp(min=0)], dest)
            self.out_channels = len(out_keep)
        if in_keep is not None:
            dest = dest[in_keep.to(dest.device)]
            self.in_channels = len(in_keep)
        self.dest = dest

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


#: Leaf layers with their own ``prune_channels``; the dependency tracer treats them as layers.
CUSTOM_LEAVES: tuple[type[nn.Module], ...] = (PadShortcut,)
