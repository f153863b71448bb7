"""Name -> factory registry for models, plus small helpers shared by the model families.

Models are chosen by registry name only (never by importing a module named in a config), so a
config can name exactly the registered models, and ``torchvision:<name>`` for any
torchvision classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..registry import Registry

TORCHVISION_PREFIX = "torchvision:"
TORCHVISION_INPUT_SIZE = 224

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered factory and the spatial input size (pixels, square) its family expects."""

    factory: Factory
    input_size: int


_REGISTRY: Registry[ModelEntry] = Registry(
    "model", hint=f", or {TORCHVISION_PREFIX}<name> for any torchvision classification model "
                  f"(e.g. {TORCHVISION_PREFIX}resnet18)")


def register(name: str, *, input_size: int = 32) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(*, num_classes, in_channels, **kwargs)`` under ``name``.

    ``input_size`` is the square input side in pixels that the family is designed for.
    """
    if name.startswith(TORCHVISION_PREFIX):
        raise ValueError(f"names starting with {TORCHVISION_PREFIX!r} are reserved")

    def decorator(factory: Factory) -> Factory:
        _REGISTRY.add(name, ModelEntry(factory=factory, input_size=input_size))
        return factory

    return decorator


def names() -> list[str]:
    """Registered model names, sorted (the open-ended ``torchvision:<name>`` ones excluded)."""
    return _REGISTRY.names()


def build(name: str, *, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a freshly initialised model by registry name; extra kwargs go to its factory.

    Raises ``KeyError`` listing the valid names when ``name`` is unknown.
    """
    if name.startswith(TORCHVISION_PREFIX):
        # Imported here so that torchvision's model zoo is only loaded when asked for.
        from .torchvision_models import build_torchvision

        tv_name = name[len(TORCHVISION_PREFIX):]
        return build_torchvision(
            tv_name, num_classes=num_classes, in_channels=in_channels, **kwargs
        )
    return _REGISTRY.get(name).factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


def default_input_size(name: str) -> int:
    """Square input side in pixels for a model name (32 for cifar_*, 28 for small_cnn, ...)."""
    if name.startswith(TORCHVISION_PREFIX):
        # Inception v3's auxiliary head needs 299 px; every other torchvision classifier is 224.
        return 299 if name[len(TORCHVISION_PREFIX):] == "inception_v3" else TORCHVISION_INPUT_SIZE
    return _REGISTRY.get(name).input_size


# ---- helpers shared by the model families -------------------------------------------------


def scale_channels(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded to an int, at least 1."""
    if width_mult <= 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    return max(1, int(round(channels * width_mult)))


def init_weights(model: nn.Module) -> None:
    """He-normal convs (fan_out, as in He et al. 2015), unit-scale zero-shift BN, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
