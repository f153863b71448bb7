"""Dataset registry, split carving and on-device augmentation (CPU, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structsearch import data
from structsearch.data import DataSpec, DatasetCorrupt, DatasetNotFound, Split


@pytest.fixture(scope="module")
def mnist():
    return data.load(DataSpec(name="mnist5k"))


@pytest.fixture(scope="module")
def digits():
    return data.load(DataSpec(name="digits"))


def _all_splits(splits):
    return {"train": splits.train, "val": splits.val, "test": splits.test}


@pytest.mark.parametrize(
    "name, side, n_total, n_test", [("mnist5k", 28, 5000, 1000), ("digits", 8, 1797, 359)]
)
def test_bundled_dataset_shapes_balance_and_disjoint_splits(name, side, n_total, n_test):
    splits = data.load(DataSpec(name=name, val_fraction=0.1, seed=3))
    assert splits.num_classes == 10
    assert splits.input_shape == (1, side, side)
    for split in _all_splits(splits).values():
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert split.x.shape == (len(split), 1, side, side)
        assert int(split.y.min()) >= 0 and int(split.y.max()) <= 9

    shares = np.bincount(splits.train.y.numpy(), minlength=10) / len(splits.train)
    assert shares.min() >= 0.07 and shares.max() <= 0.13

    assert len(splits.test) == n_test
    pool = len(splits.train) + len(splits.val)
    assert abs(len(splits.val) / pool - 0.1) < 0.01

    by_pool: dict[str, list[np.ndarray]] = {}
    for split in _all_splits(splits).values():
        by_pool.setdefault(split.pool, []).append(split.source_indices)
    for pool_name, parts in by_pool.items():
        merged = np.concatenate(parts)
        assert len(np.unique(merged)) == len(merged), f"overlap inside pool {pool_name}"
        assert sorted(merged.tolist()) == list(range(splits.pool_sizes[pool_name]))
    assert sum(splits.pool_sizes.values()) == n_total


def test_source_indices_point_at_the_same_images(mnist):
    raw = data._cached_tensors("mnist5k", data._read_mnist5k)
    for split in _all_splits(mnist).values():
        assert torch.equal(raw["x"][split.source_indices], split.x)
        assert torch.equal(raw["y"][split.source_indices], split.y)


def test_val_split_follows_seed_and_test_split_never_moves(mnist):
    again = data.load(DataSpec(name="mnist5k"))
    other = data.load(DataSpec(name="mnist5k", seed=1))
    assert np.array_equal(mnist.val.source_indices, again.val.source_indices)
    assert not np.array_equal(mnist.val.source_indices, other.val.source_indices)
    assert np.array_equal(mnist.test.source_indices, other.test.source_indices)
    assert mnist.summary()["val_indices_sha1"] != other.summary()["val_indices_sha1"]


def test_batches_normalise_and_cover_the_split_once(digits):
    split = digits.val
    seen = []
    for x, y in split.batches(50, shuffle=True, augment=False, seed=0):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 8, 8)
        seen.append(y)
    assert sum(len(y) for y in seen) == len(split)
    assert sorted(torch.cat(seen).tolist()) == sorted(split.y.tolist())

    x, _ = next(split.batches(len(split), shuffle=False, augment=False))
    expected = (split.x.float() / 255 - split.mean[0]) / split.std[0]
    torch.testing.assert_close(x, expected)
    # Dataset statistics should roughly whiten the pixels.
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_batches_drop_last(digits):
    batches = digits.train.batches(100, shuffle=False, augment=False, drop_last=True)
    sizes = [len(y) for _, y in batches]
    assert sizes == [100] * (len(digits.train) // 100)


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved by (dy, dx) pixels with zero fill, as a random crop of a padded image."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
        ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _matching_shifts(original: torch.Tensor, augmented: torch.Tensor, pad: int) -> list:
    return [
        (dy, dx)
        for dy in range(-pad, pad + 1)
        for dx in range(-pad, pad + 1)
        if torch.equal(_shifted(original, dy, dx), augmented)
    ]


def test_digit_augmentation_shifts_within_pad_and_never_flips(mnist):
    split = mnist.train.subset(64, seed=0)
    assert split.crop_pad == 2 and not split.flip
    out = split.augment_batch(split.x, torch.Generator().manual_seed(5))
    assert out.shape == split.x.shape and out.dtype == torch.uint8
    shifts = []
    for original, augmented in zip(split.x, out):
        matches = _matching_shifts(original, augmented, 2)
        assert matches, "augmented image is not a zero-filled shift of the original"
        shifts.append(matches[0])
    assert len(set(shifts)) > 5, "crop offsets should vary across the batch"


def test_augmented_batches_are_deterministic_under_seed(mnist):
    split = mnist.val

    def first(seed):
        return next(split.batches(32, shuffle=True, augment=True, seed=seed))

    (xa, ya), (xb, yb), (xc, _) = first(7), first(7), first(8)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(xa, xc)
    assert xa.shape == (32, 1, 28, 28)


def test_cifar_style_augmentation_flips_about_half():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=gen)
    split = Split(
        x=x,
        y=torch.zeros(200, dtype=torch.int64),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        source_indices=np.arange(200),
        pool="train",
        crop_pad=4,
        flip=True,
    )
    out = split.augment_batch(x, torch.Generator().manual_seed(1))
    flipped = 0
    for original, augmented in zip(x, out):
        plain = _matching_shifts(original, augmented, 4)
        mirrored = _matching_shifts(original.flip(-1), augmented, 4)
        assert bool(plain) != bool(mirrored)
        flipped += bool(mirrored)
    assert 70 < flipped < 130


def test_subset_is_stratified_and_traceable(mnist):
    sub = mnist.train.subset(500, seed=2)
    assert len(sub) == 500
    assert set(sub.source_indices.tolist()) <= set(mnist.train.source_indices.tolist())
    assert np.bincount(sub.y.numpy(), minlength=10).min() >= 45
    assert np.array_equal(sub.source_indices, mnist.train.subset(500, seed=2).source_indices)


def test_missing_cifar_root_names_path_and_fix(tmp_path):
    root = tmp_path / "nothing-here"
    with pytest.raises(DatasetNotFound) as info:
        data.load(DataSpec(name="cifar10", root=str(root), download=False))
    message = str(info.value)
    assert "\n" not in message
    assert str(root) in message and "download" in message and "cifar-10-batches-py" in message
    assert isinstance(info.value, FileNotFoundError)


def write_cifar10(root, per_batch=30, seed=0):
    """A CIFAR-10 "python version" folder in the published layout (dict pickles, protocol 2),
    with random images: what each pixel is, is known to the test."""
    import pickle
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as fh:
            pickle.dump({"batch_label": name, "labels": labels, "data": images,
                         "filenames": [f"{name}-{i}.png" for i in range(per_batch)]}, fh, protocol=2)
        written[name] = (images, labels)
    return folder, written


class Planted:
    """Unpickling this calls os.mkdir: proof that the file ran code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os
        return (os.mkdir, (self.path,))


def test_cifar_batches_are_read_as_published_without_running_code(tmp_path):
    import pickle
    folder, written = write_cifar10(tmp_path)
    spec = DataSpec(name="cifar10", root=str(tmp_path), val_fraction=0.2, seed=0)
    splits = data.load(spec)
    # Random pictures are not the published files: each differs from its published MD5.
    assert data.unpublished_files(spec) == [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    test_images, test_labels = written["test_batch"]
    assert splits.test.x.shape == (30, 3, 32, 32) and splits.test.x.dtype == torch.uint8
    np.testing.assert_array_equal(splits.test.x.numpy().reshape(30, -1), test_images)
    assert splits.test.y.tolist() == test_labels
    assert len(splits.train.y) + len(splits.val.y) == 5 * 30
    # The training pool is the five data batches in order: each split image is one of them.
    pool = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    idx = splits.val.source_indices
    np.testing.assert_array_equal(splits.val.x.numpy().reshape(len(idx), -1), pool[idx])

    # A batch that would run code when unpickled is refused, and the code never runs.
    marker = tmp_path / "code-ran"
    with open(folder / "data_batch_3", "wb") as fh:
        pickle.dump({"data": Planted(marker), "labels": [0]}, fh, protocol=2)
    with pytest.raises(DatasetCorrupt, match=r"data_batch_3 is not a readable CIFAR batch .*"
                                             r"posix\.mkdir.*refused.*download it again"):
        data.load(DataSpec(name="cifar10", root=str(tmp_path)))
    assert not marker.exists()
    # A truncated batch: one line naming the file and the fix.
    (folder / "data_batch_3").write_bytes(pickle.dumps(written["data_batch_3"][0])[:100])
    with pytest.raises(DatasetCorrupt) as info:
        data.load(DataSpec(name="cifar10", root=str(tmp_path)))
    assert "data_batch_3" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, DatasetNotFound), "the CLI's one-line bad-input path"


def test_image_folder_is_normalised_with_the_configured_statistics(tmp_path):
    """data.mean / data.std reach the folder split: a flat-colour picture comes out as
    (pixel / 255 - mean) / std per channel; without them, ImageNet's statistics."""
    from PIL import Image

    from structsearch import config as C
    from structsearch.preflight import data_spec_of
    colour = np.array([200, 100, 30], dtype=np.uint8)
    for pool in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / pool / cls
            folder.mkdir(parents=True)
            for i in range(5):
                Image.fromarray(np.tile(colour, (12, 12, 1))).save(folder / f"{i}.png")
    mean, std = [0.5, 0.25, 0.1], [0.2, 0.3, 0.4]
    cfg = C.from_dict({"data": {"name": "imagefolder", "root": str(tmp_path), "image_size": 8,
                                "workers": 0, "mean": mean, "std": std},
                       "budget": {"macs_ratio": 0.5}})
    for spec, (m, sd) in ((data_spec_of(cfg), (mean, std)),
                          (DataSpec(name="imagefolder", root=str(tmp_path), image_size=8,
                                    workers=0), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))):
        x, _ = next(data.load(spec).test.batches(4, shuffle=False, augment=False))
        expected = (colour / 255.0 - np.array(m)) / np.array(sd)
        np.testing.assert_allclose(x[0, :, 4, 4].numpy(), expected, rtol=1e-5)
    with pytest.raises(C.ConfigError, match=r"data\.std: expected 3 numbers"):
        C.from_dict({"data": {"name": "imagefolder", "mean": mean, "std": [0.2, 0.0, 0.4]},
                     "budget": {"macs_ratio": 0.5}})
    with pytest.raises(C.ConfigError, match=r"data\.mean: only image folders"):
        C.from_dict({"data": {"name": "digits", "mean": mean, "std": std},
                     "budget": {"macs_ratio": 0.5}})


def test_missing_image_folder_is_clear(tmp_path):
    with pytest.raises(DatasetNotFound, match="train/"):
        data.load(DataSpec(name="imagenet", root=str(tmp_path)))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(KeyError) as info:
        data.load(DataSpec(name="mnist6k"))
    for name in ("mnist5k", "digits", "cifar10", "cifar100", "imagenet", "imagefolder"):
        assert name in str(info.value)
    assert set(data.names()) >= {"mnist5k", "digits", "cifar10", "cifar100"}


def test_cache_file_is_used_on_second_load(tmp_path, monkeypatch):
    monkeypatch.setenv("STRUCTSEARCH_CACHE", str(tmp_path))
    first = data.load(DataSpec(name="mnist5k"))
    assert (tmp_path / "mnist5k.pt").is_file()

    def fail():
        raise AssertionError("mnist5k was decoded again instead of read from the cache")

    monkeypatch.setattr(data, "_read_mnist5k", fail)
    second = data.load(DataSpec(name="mnist5k"))
    assert torch.equal(first.train.x, second.train.x)


def test_image_folder_split_streams_uint8_crops(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for pool, per_class in (("train", 10), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = tmp_path / pool / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    spec = DataSpec(name="imagefolder", root=str(tmp_path), val_fraction=0.2, workers=0)
    splits = data.load(spec)
    assert splits.num_classes == 2 and splits.input_shape == (3, 224, 224)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 4)
    assert not set(splits.train.source_indices) & set(splits.val.source_indices)

    batches = list(splits.train.batches(8, shuffle=True, augment=True, seed=0))
    assert [x.shape for x, _ in batches] == [(8, 3, 224, 224)] * 2
    assert batches[0][0].dtype == torch.float32
    again = next(splits.train.batches(8, shuffle=True, augment=True, seed=0))
    assert torch.equal(batches[0][0], again[0])
    x, y = next(splits.test.batches(4, shuffle=False, augment=False))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 1, 1]
