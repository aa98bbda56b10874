"""Batches of an in-memory dataset that already lives on the model's device.

A ``DataLoader`` over a ``TensorDataset`` indexes and re-stacks every sample of every batch and,
on a GPU, copies each batch from the host. Data that fits in memory is moved once instead; an
epoch is then a shuffled index tensor and one slice per batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class DeviceBatches:
    """``(inputs, targets)`` batches of tensors kept on ``device``, reshuffled every epoch."""

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.inputs = inputs.to(device)
        self.targets = targets.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        # The permutation is drawn on the CPU from a seeded generator (the same on every device),
        # then moved over: one small copy per epoch, not one per batch.
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.targets) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.inputs.device)
            inputs, targets = self.inputs[order], self.targets[order]
        else:
            inputs, targets = self.inputs, self.targets
        for start in range(0, n, self.batch_size):
            yield inputs[start : start + self.batch_size], targets[start : start + self.batch_size]
