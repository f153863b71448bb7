"""Name -> factory registry for models, plus small helpers shared by the model families.

A model name is one of: a registered name (``cifar_resnet56``), ``torchvision:<name>`` for any
torchvision classifier, ``timm:<name>`` for any timm model (the ``timm`` extra; never downloads
weights: they come from ``model.checkpoint``), a ``package.module:factory`` entry point (your
own model; see :mod:`structsearch.entrypoints`), or ``object:<token>`` for a model passed to
:func:`structsearch.search` as a Python object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..registry import Registry

TORCHVISION_PREFIX = "torchvision:"
TIMM_PREFIX = "timm:"
TORCHVISION_INPUT_SIZE = 224

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered factory and the spatial input size (pixels, square) its family expects."""

    factory: Factory
    input_size: int


_REGISTRY: Registry[ModelEntry] = Registry(
    "model", hint=f", {TORCHVISION_PREFIX}<name> (any torchvision classifier, e.g. "
                  f"{TORCHVISION_PREFIX}resnet18), {TIMM_PREFIX}<name> (any timm model) or "
                  f"package.module:factory (your own model)")


def register(name: str, *, input_size: int = 32) -> Callable[[Factory], Factory]:
    """Decorator registering ``factory(*, num_classes, in_channels, **kwargs)`` under ``name``.

    ``input_size`` is the square input side in pixels that the family is designed for.
    """
    if name.startswith(TORCHVISION_PREFIX) or ":" in name:
        raise ValueError(f"registered names may not contain ':' (reserved for torchvision:, "
                         f"timm:, entry points and objects)")

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
    if name.startswith(TIMM_PREFIX):
        return _build_timm(name[len(TIMM_PREFIX):], num_classes=num_classes,
                           in_channels=in_channels, **kwargs)
    from .. import entrypoints
    if name.startswith(entrypoints.OBJECT_PREFIX):
        import copy
        return copy.deepcopy(entrypoints.get_object("model", name))
    if entrypoints.is_entry_point(name):
        return _call_factory(entrypoints.resolve(name, "model.name"), name,
                             num_classes=num_classes, in_channels=in_channels, **kwargs)
    if name.startswith(TORCHVISION_PREFIX):
        # Imported here so that torchvision's model zoo is only loaded when asked for.
        from .torchvision_models import build_torchvision

        tv_name = name[len(TORCHVISION_PREFIX):]
        return build_torchvision(
            tv_name, num_classes=num_classes, in_channels=in_channels, **kwargs
        )
    return _REGISTRY.get(name).factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


def _call_factory(factory, name: str, *, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """Call a user factory with ``kwargs``, adding ``num_classes`` / ``in_channels`` only where
    its signature takes them."""
    import inspect
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    open_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key not in kwargs and (key in params or open_kwargs):
            kwargs[key] = value
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"entry point '{name}' returned {type(model).__name__}, not an nn.Module")
    return model


def _build_timm(name: str, *, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise KeyError(f"timm:{name} needs timm: pip install 'structsearch[timm]'") from None
    if kwargs.pop("pretrained", False):
        raise TypeError("timm models are built without downloading weights; give trained "
                        "weights as model.checkpoint")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes,
                                 in_chans=in_channels, **kwargs)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise KeyError(f"timm:{name}: {exc}") from None


def default_input_size(name: str) -> int:
    """Square input side in pixels for a model name (32 for cifar_*, 28 for small_cnn, ...)."""
    if name.startswith(TORCHVISION_PREFIX):
        # Inception v3's auxiliary head needs 299 px; every other torchvision classifier is 224.
        return 299 if name[len(TORCHVISION_PREFIX):] == "inception_v3" else TORCHVISION_INPUT_SIZE
    if name.startswith(TIMM_PREFIX):
        return 224
    if ":" in name:  # an entry point or an object: its size comes from the data
        return 32
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
