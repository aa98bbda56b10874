"""Data modules: stratified seeded splits, train-only normalisation, IDX files, augmentation."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from workbench.data.images import random_affine, read_idx
from workbench.registry import build_data


def test_mnist_subset_splits_are_stratified_disjoint_and_seeded():
    data = build_data("mnist_subset", seed=0)
    sizes = {name: len(data.split(name)[1]) for name in ("train", "val", "test")}
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    for name in ("val", "test"):
        assert (
            np.bincount(data.split(name)[1].numpy()).tolist() == [50] * 10
        )  # 10 % of 500 per digit
    train = {row.numpy().tobytes() for row in data.split("train")[0][:, 0]}
    assert not any(row.numpy().tobytes() in train for row in data.split("test")[0][:, 0])
    again = build_data("mnist_subset", seed=0)
    assert torch.equal(again.split("test")[0], data.split("test")[0])
    other = build_data("mnist_subset", seed=1)
    assert not torch.equal(other.split("test")[0], data.split("test")[0])
    assert data.fingerprint_ == again.fingerprint_ != other.fingerprint_


def test_normalisation_is_fitted_on_the_training_split_only():
    data = build_data("digits", seed=0)
    train = data.split("train")[0]
    assert train.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert train.std().item() == pytest.approx(1.0, abs=1e-3)
    assert data.input_shape == (1, 8, 8)
    # Back to pixels: digits are 0..16 scaled to [0, 1].
    pixels = data.to_pixels(data.split("test")[0])
    assert pixels.min().item() == pytest.approx(0.0, abs=1e-5) and pixels.max().item() <= 1.0 + 1e-5


def test_max_samples_subsamples_before_splitting():
    data = build_data("digits", seed=0, max_samples=200)
    total = sum(len(data.split(n)[1]) for n in ("train", "val", "test"))
    assert total == 200


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _write_mnist_dir(
    root: Path, n_train: int = 200, n_test: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (n_train, 28, 28))
    y_train = np.arange(n_train) % 10
    x_test = rng.integers(0, 256, (n_test, 28, 28))
    y_test = np.arange(n_test) % 10
    _write_idx(root / "train-images-idx3-ubyte.gz", x_train)
    _write_idx(root / "train-labels-idx1-ubyte.gz", y_train)
    _write_idx(root / "t10k-images-idx3-ubyte", x_test)  # plain and gzipped both read
    _write_idx(root / "t10k-labels-idx1-ubyte", y_test)
    return x_test, y_test


def test_read_idx_round_trips(tmp_path: Path):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte", array)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), array)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "bad")


def test_idx_directory_keeps_its_own_test_split(tmp_path: Path):
    x_test, y_test = _write_mnist_dir(tmp_path)
    data = build_data("idx", path=str(tmp_path), seed=0)
    images, labels = data.split("test")
    assert labels.tolist() == y_test.tolist()
    assert np.allclose(data.to_pixels(images)[:, 0].numpy(), x_test / 255.0, atol=1e-5)
    assert len(data.split("train")[1]) + len(data.split("val")[1]) == 200


def test_idx_missing_file_names_the_path(tmp_path: Path):
    _write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        build_data("idx", path=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        build_data("idx", path=str(tmp_path / "no_such_dir"))


def test_random_affine_moves_pixels_but_keeps_shape_and_identity_is_identity():
    torch.manual_seed(0)
    images = torch.zeros(8, 1, 28, 28)
    images[:, :, 10:18, 12:16] = 1.0
    moved = random_affine(images)
    assert moved.shape == images.shape
    assert (moved - images).abs().sum() > 1.0
    same = random_affine(images, max_degrees=0.0, max_shift=0.0)
    assert torch.allclose(same, images, atol=1e-5)
