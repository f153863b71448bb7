"""Your own data: torch Datasets or (images, labels) tensors as train / val / test splits.

Data reaches a run in two ways: ``data.name: package.module:factory`` (called with
``data.kwargs``; it returns ``(train, test)``, ``(train, test, val)`` or a mapping with keys
``train``, ``test`` and optionally ``val`` and ``num_classes``), or the Python API
(:func:`structsearch.search`), which registers the objects in-process. Each split is a map-style
``torch.utils.data.Dataset`` of ``(image, label)`` pairs or an ``(images, labels)`` pair of
tensors / arrays, held in memory:

- images ``(N, C, H, W)`` (``(N, H, W)`` gets one channel); uint8 images are normalised with the
  training split's per-channel mean and std, float images are used as they are (normalise them
  yourself, as your training code does);
- labels are class indices ``0 .. num_classes - 1``.

Without ``val`` the validation split is carved from ``train`` (stratified, seeded by the run's
seed, ``data.val_fraction``); without ``test``, 20% of ``train`` is held out as the test split
(fixed seed), and the run says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from . import entrypoints
from .config import ConfigError
from .data import DataSpec, Split, Splits, _stratified_split

TEST_FRACTION = 0.2


class DataError(ConfigError):
    """User data that cannot become splits: one line naming the problem and the fix."""


@dataclass(frozen=True, eq=False)
class UserData:
    """Splits as tensors: ``train`` always, ``val`` / ``test`` when given."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor] | None
    num_classes: int


def _as_tensor(value, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    try:
        from PIL import Image
        if isinstance(value, Image.Image):
            from torchvision.transforms.functional import pil_to_tensor
            return pil_to_tensor(value)
    except ImportError:
        pass
    if isinstance(value, (int, np.integer)):
        return torch.tensor(int(value))
    raise DataError(f"{what}: expected tensors, arrays or PIL images, got {type(value).__name__}")


def _is_pair(split) -> bool:
    """An ``(images, labels)`` pair: a batch of images (3+ dims) and one label per image."""
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        return False
    x, y = split
    arrays = (torch.Tensor, np.ndarray)
    return isinstance(x, arrays) and isinstance(y, arrays) and x.ndim >= 3 and y.ndim == 1


def tensors_of(split, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of one split: a pair of tensors / arrays, or a map-style Dataset."""
    if _is_pair(split):
        x, y = _as_tensor(split[0], f"{what} images"), _as_tensor(split[1], f"{what} labels")
    elif hasattr(split, "__len__") and hasattr(split, "__getitem__"):
        if len(split) == 0:
            raise DataError(f"{what} is empty")
        items = [split[i] for i in range(len(split))]
        if not all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items[:1]):
            raise DataError(f"{what}: a Dataset must yield (image, label) pairs")
        x = torch.stack([_as_tensor(it[0], f"{what} image") for it in items])
        y = torch.stack([_as_tensor(it[1], f"{what} label").reshape(()) for it in items])
    else:
        raise DataError(f"{what}: expected a torch Dataset of (image, label) pairs or an "
                        f"(images, labels) pair, got {type(split).__name__}")
    return _checked(x, y, what)


def _checked(x: torch.Tensor, y: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4:
        raise DataError(f"{what}: images must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = x.float()
        if not torch.isfinite(x).all():
            raise DataError(f"{what}: images contain NaN or infinite values")
    y = y.reshape(-1)
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise DataError(f"{what}: labels must be class indices, got non-integer values")
    y = y.long()
    if len(y) != len(x):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{what}: labels must be class indices >= 0, got {int(y.min())}")
    return x.contiguous(), y.contiguous()


def user_data(train, test=None, val=None, num_classes: int | None = None) -> UserData:
    """Check and convert the splits (see the module docstring)."""
    parts = {"train": tensors_of(train, "train")}
    for name, split in (("val", val), ("test", test)):
        parts[name] = None if split is None else tensors_of(split, name)
    shapes = {n: tuple(p[0].shape[1:]) for n, p in parts.items() if p is not None}
    if len(set(shapes.values())) > 1:
        raise DataError(f"splits have different image shapes: {shapes}")
    dtypes = {n: p[0].dtype for n, p in parts.items() if p is not None}
    if len(set(dtypes.values())) > 1:
        raise DataError(f"splits mix uint8 and float images: {dtypes}; give all in one type")
    top = max(int(p[1].max()) for p in parts.values() if p is not None) + 1
    if num_classes is not None and top > num_classes:
        raise DataError(f"labels go up to {top - 1} but num_classes is {num_classes}")
    return UserData(parts["train"], parts["val"], parts["test"], int(num_classes or top))


def from_factory(spec: DataSpec) -> UserData:
    """Call the entry point ``spec.name`` with ``spec.kwargs`` and convert what it returns."""
    factory = entrypoints.resolve(spec.name, "data.name")
    out = factory(**json.loads(spec.kwargs))
    if isinstance(out, dict):
        unknown = set(out) - {"train", "test", "val", "num_classes"}
        if "train" not in out or unknown:
            raise DataError(f"data.name: {spec.name} returned a mapping with keys {sorted(out)}; "
                            f"expected train, test and optionally val, num_classes")
        return user_data(out["train"], out.get("test"), out.get("val"), out.get("num_classes"))
    if isinstance(out, (tuple, list)) and len(out) in (2, 3):
        return user_data(out[0], out[1], out[2] if len(out) == 3 else None)
    raise DataError(f"data.name: {spec.name} must return (train, test), (train, test, val) or "
                    f"a mapping; got {type(out).__name__}")


def _stats(x: torch.Tensor) -> tuple[tuple, tuple]:
    if x.dtype != torch.uint8:
        return (0.0,) * x.shape[1], (1.0,) * x.shape[1]
    v = x.float().div_(255).transpose(0, 1).reshape(x.shape[1], -1)
    return tuple(float(m) for m in v.mean(1)), tuple(max(float(s), 1e-3) for s in v.std(1))


def splits_of(spec: DataSpec, ud: UserData) -> Splits:
    """Train / val / test splits of ``ud`` for the run (seeded as described above)."""
    x, y = ud.train
    labels = y.numpy()
    pools = {"train": len(y)}
    pool_pos = np.arange(len(y))
    test_pool = "test"
    if ud.test is None:
        test_pos, pool_pos = _stratified_split(labels, TEST_FRACTION, np.random.default_rng(0))
        test_pool = "train"
    else:
        pools["test"] = len(ud.test[1])
    if ud.val is None:
        val_rel, train_rel = _stratified_split(labels[pool_pos], spec.val_fraction,
                                               np.random.default_rng(spec.seed))
        val_pos, train_pos = pool_pos[val_rel], pool_pos[train_rel]
    else:
        val_pos, train_pos = None, pool_pos
        pools["val"] = len(ud.val[1])
    mean, std = _stats(x[torch.as_tensor(train_pos)])
    augment = bool(spec.augment)

    def make(xs, ys, pos, pool):
        pos = np.arange(len(ys)) if pos is None else pos
        index = torch.as_tensor(pos)
        return Split(x=xs[index].contiguous(), y=ys[index].contiguous(), mean=mean, std=std,
                     source_indices=pos, pool=pool, crop_pad=4 if augment else 0, flip=augment,
                     augment_default=augment)

    train = make(x, y, train_pos, "train")
    val = make(x, y, val_pos, "train") if ud.val is None else make(*ud.val, None, "val")
    test = make(x, y, test_pos, "train") if ud.test is None else make(*ud.test, None, test_pool)
    return Splits(name=spec.name, train=train, val=val, test=test, num_classes=ud.num_classes,
                  input_shape=train.input_shape, pool_sizes=pools, seed=spec.seed,
                  val_fraction=spec.val_fraction)


def load_user(spec: DataSpec) -> Splits:
    """``data.load`` for entry points and registered objects."""
    if spec.name.startswith(entrypoints.OBJECT_PREFIX):
        ud = entrypoints.get_object("data", spec.name)
    elif entrypoints.is_entry_point(spec.name):
        ud = from_factory(spec)
    else:
        raise DataError(f"data.name: '{spec.name}' is neither a dataset name nor an entry point "
                        f"(package.module:factory)")
    return splits_of(spec, ud)
