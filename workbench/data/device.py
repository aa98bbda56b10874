"""Batches of an in-memory dataset that already lives on the model's device.

A ``DataLoader`` over a ``TensorDataset`` indexes and re-stacks every sample of every batch and,
on a GPU, copies each batch from the host. Data that fits in memory is moved once instead; an
epoch is then a shuffled index tensor and one slice per batch. Under DDP each process serves
its own shard of that order (``shard_order``), so an epoch covers the split exactly once.
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
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.inputs = inputs.to(device)
        self.targets = targets.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world = rank, world
        # The permutation is drawn on the CPU from a seeded generator (the same on every device),
        # then moved over: one small copy per epoch, not one per batch.
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = shard_size(len(self.targets), self.rank, self.world, equal=self.shuffle)
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        if self.shuffle or self.world > 1:
            order = shard_order(n, self.generator, self.shuffle, self.rank, self.world)
            order = order.to(self.inputs.device)
            inputs, targets = self.inputs[order], self.targets[order]
        else:
            inputs, targets = self.inputs, self.targets
        for start in range(0, len(targets), self.batch_size):
            yield inputs[start : start + self.batch_size], targets[start : start + self.batch_size]


def shard_order(
    n: int, generator: torch.Generator, shuffle: bool, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """One process's sample indices for an epoch: the same seeded permutation on every process
    (or ``0..n-1``), then every ``world``-th index from ``rank``, without padding.

    A shuffled (training) epoch is cut to the same length on every process, because DDP needs
    the same number of optimiser steps everywhere (up to ``world - 1`` samples wait for the next
    epoch's draw); an ordered (validation, test) epoch keeps every sample exactly once.
    """
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return order[rank::world][: shard_size(n, rank, world, equal=shuffle)]


def shard_size(n: int, rank: int, world: int, equal: bool) -> int:
    """How many of ``n`` samples process ``rank`` of ``world`` serves in an epoch."""
    return n // world if equal else len(range(rank, n, world))
