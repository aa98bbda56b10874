"""The in-memory data module that images, table rows and sequences share: arrays loaded once,
stratified seeded splits, normalisation statistics from the training split only, batches served
from the model's device, and optional image augmentation on the batch after it reaches the device.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Sampler, TensorDataset

from workbench.data.device import DeviceBatches, shard_order, shard_size

# A loader returns images in [0, 1] as float32 (N, H, W), int64 labels, and optionally a fixed
# test split (IDX files ship one); without it the data module carves a stratified test split.
Arrays = tuple[np.ndarray, np.ndarray]
LoadResult = tuple[Arrays, Arrays | None]


class ArrayDataModule(pl.LightningDataModule):
    """Arrays held in memory (a ``workbench.contracts.DataFamily``): stratified seeded splits,
    train-only normalisation, optional augmentation of image batches.

    Under DDP (``trainer.devices`` > 1) each process batches its own shard of every split: the
    validation and test metrics, synchronised on compute, cover each split exactly once.
    """

    shards_by_rank = True  # the Trainer may run it on several processes (train.fit checks)

    def __init__(
        self,
        load: Callable[[], LoadResult],
        batch_size: int = 128,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        augment: bool = False,
        max_samples: int | None = None,
        on_device: bool = True,
        normalize: bool = True,
        seed: int = 42,
        labels_per_class: int | None = None,
        split_seed: int | None = None,
    ) -> None:
        super().__init__()
        self.labels_per_class = labels_per_class
        self.split_seed = seed if split_seed is None else split_seed
        self.load = load
        self.normalize = normalize
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.augment = augment
        self.max_samples = max_samples
        self.on_device = on_device
        self.seed = seed
        self.splits_: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # --- set-up -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits_ is not None:  # data is loaded once and reused by every trial
            return
        (x, y), fixed_test = self.load()
        if self.max_samples is not None and self.max_samples < len(x):
            x, _, y, _ = train_test_split(
                x, y, train_size=self.max_samples, stratify=y, random_state=self.split_seed
            )
        # Split sizes as whole counts of the pool, so 10 % of 5,000 is exactly 500.
        total = len(x)
        if fixed_test is None:
            x, x_test, y, y_test = train_test_split(
                x,
                y,
                test_size=round(self.test_fraction * total),
                stratify=y,
                random_state=self.split_seed,
            )
        else:
            x_test, y_test = fixed_test
        x_train, x_val, y_train, y_val = train_test_split(
            x,
            y,
            test_size=round(self.val_fraction * total),
            stratify=y,
            random_state=self.split_seed,
        )
        # Statistics of every training image, labelled or not: a few-label run sees its inputs
        # as the backbone it starts from saw them.
        self.mean_, self.std_ = self._statistics(x_train)
        if self.labels_per_class is not None:  # a few-label run validates on as few
            keep = per_class(y_train, self.labels_per_class, self.seed)
            x_train, y_train = x_train[keep], y_train[keep]
            keep = per_class(y_val, self.labels_per_class, self.seed)
            x_val, y_val = x_val[keep], y_val[keep]
        self.fingerprint_ = _fingerprint(x_train, y_train, x_val, y_val, x_test, y_test)
        self.num_classes_ = int(max(y_train.max(), y_val.max(), y_test.max())) + 1
        self.splits_ = {
            name: (self._to_tensor(images), torch.from_numpy(np.ascontiguousarray(labels)))
            for name, images, labels in (
                ("train", x_train, y_train),
                ("val", x_val, y_val),
                ("test", x_test, y_test),
            )
        }

    def _statistics(self, x_train: np.ndarray) -> tuple[float, float]:
        """One mean and standard deviation over all training pixels; (0, 1) keeps raw pixels."""
        if not self.normalize:  # autoencoders and GANs work on [0, 1] pixels
            return 0.0, 1.0
        return float(x_train.mean()), float(x_train.std()) or 1.0

    def _to_tensor(self, images: np.ndarray) -> torch.Tensor:
        normalised = (images - self.mean_) / self.std_
        return torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32)).unsqueeze(1)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.split("train")[0].shape[1:])

    def model_kwargs(self) -> dict:
        """Constructor arguments the data decides for any model: input shape and class count."""
        self.setup()
        return {
            "input_shape": self.input_shape,
            "num_classes": self.num_classes_,
            "task": "classification",
        }

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs (N, 1, H, W) and labels of the ``train``, ``val`` or ``test`` split."""
        self.setup()
        return self.splits_[name]

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Undo normalisation: model inputs back to [0, 1] pixels for display."""
        return images * self.std_ + self.mean_

    # --- loaders ------------------------------------------------------------------------------
    def _loader(self, name: str, shuffle: bool) -> DeviceBatches | DataLoader:
        rank, world = (
            (0, 1) if self.trainer is None else (self.trainer.global_rank, self.trainer.world_size)
        )
        if self.on_device:
            device = self.trainer.strategy.root_device if self.trainer is not None else "cpu"
            return DeviceBatches(
                *self.split(name), self.batch_size, shuffle, self.seed, device, rank, world
            )
        generator = torch.Generator().manual_seed(self.seed)
        dataset = TensorDataset(*self.split(name))
        if world > 1:  # Lightning's DistributedSampler would pad the split: shard it here
            sampler = RankShard(len(dataset), generator, shuffle, rank, world)
            return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator if shuffle else None,
        )

    def train_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DeviceBatches | DataLoader:
        return self._loader("test", shuffle=False)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.augment and self.trainer is not None and self.trainer.training:
            images, labels = batch
            return random_affine(images), labels
        return batch


def per_class(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Indices of ``count`` examples of each class (all of a class that has fewer), drawn with
    ``seed``, in their original order."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:count] for label in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


class RankShard(Sampler[int]):
    """One DDP process's indices of a split per epoch (``device.shard_order``): no padding."""

    def __init__(
        self, n: int, generator: torch.Generator, shuffle: bool, rank: int, world: int
    ) -> None:
        self.n, self.generator, self.shuffle = n, generator, shuffle
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return shard_size(self.n, self.rank, self.world, equal=self.shuffle)

    def __iter__(self):
        return iter(
            shard_order(self.n, self.generator, self.shuffle, self.rank, self.world).tolist()
        )


def random_affine(
    images: torch.Tensor, max_degrees: float = 10.0, max_shift: float = 0.1
) -> torch.Tensor:
    """Rotate each image by up to ±max_degrees and shift it by up to ±max_shift of its size."""
    n = images.shape[0]
    angle = (torch.rand(n, device=images.device) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2, device=images.device) * 2 - 1) * max_shift * 2  # grid spans [-1, 1]
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Border padding repeats the background: digits sit on an empty frame.
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


def _fingerprint(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
