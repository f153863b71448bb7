"""Any torchvision classification model by name, randomly initialised (weights are never
downloaded), optionally with a first conv for a different number of input channels."""

from __future__ import annotations

import torchvision
from torch import nn

from .registry import TORCHVISION_PREFIX


def torchvision_names() -> list[str]:
    """Classification model names torchvision provides (use as ``torchvision:<name>``)."""
    # Restricting to the top-level module excludes detection/segmentation/video/quantized models.
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision(
    name: str, *, num_classes: int = 10, in_channels: int = 3, **kwargs
) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=...)``; extra kwargs go to it.

    When ``in_channels != 3`` the first ``nn.Conv2d`` (in registration order, which is the stem
    for every torchvision classifier) is replaced by a fresh one taking ``in_channels`` inputs.
    """
    available = torchvision_names()
    if name not in available:
        raise KeyError(
            f"unknown torchvision model {TORCHVISION_PREFIX}{name}; "
            f"torchvision classifiers: {', '.join(available)}"
        )
    if kwargs.get("weights") is not None:
        raise ValueError("pretrained weights are not supported (nothing is downloaded)")
    kwargs.pop("weights", None)
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    for path, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            break
    else:
        raise ValueError(f"{type(model).__name__} has no Conv2d whose input channels to change")
    if module.groups != 1:
        raise ValueError(f"first conv {path!r} is grouped; cannot change its input channels")
    conv = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
    # Keep the model's own init scheme family for the stem (torchvision stems are He-normal).
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, conv)
