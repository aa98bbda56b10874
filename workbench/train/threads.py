"""How many CPU threads a run's tensor operations use: one when every tensor is too small to split.

PyTorch runs each CPU operation on all cores by default. A small network's operations (a tabular
MLP: batches of 32 rows, layers of 64 units) are far below the size at which PyTorch splits an
operation, so extra threads only add synchronisation: on a busy machine each step waits for a
descheduled thread (measured on 2 shared cores: 800 ms an epoch with 2 threads, 50 ms with 1).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils._pytree import tree_leaves

# ATen splits an elementwise operation across threads only above this many elements
# (at::internal::GRAIN_SIZE); a step whose every tensor is smaller gains nothing from threads.
GRAIN_SIZE = 32768


class SmallStepThreads(Callback):
    """Watches the first training step on a CPU; if no parameter and no module output reaches
    ``GRAIN_SIZE`` elements, the rest of the run (and its test pass) uses one thread. The
    process's thread count is restored when each Trainer stage ends, however it ends."""

    def __init__(self) -> None:
        self.small: bool | None = None  # undecided until the first step has run
        self._largest = 0
        self._hooks: list = []
        self._before: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._before = torch.get_num_threads()
        if self.small:  # decided during fit: the test pass of the same run
            torch.set_num_threads(1)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.small is not None or pl_module.device.type != "cpu" or self._before == 1:
            return
        self._largest = max((p.numel() for p in pl_module.parameters()), default=0)
        self._hooks = [m.register_forward_hook(self._measure) for m in pl_module.modules()]

    def _measure(self, module: torch.nn.Module, inputs, output) -> None:
        for leaf in tree_leaves(output):
            if isinstance(leaf, torch.Tensor):
                self._largest = max(self._largest, leaf.numel())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._hooks:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.small = self._largest < GRAIN_SIZE
        if self.small:
            torch.set_num_threads(1)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc) -> None:
        self._restore()  # Lightning calls no teardown hook after an exception

    def _restore(self) -> None:
        for hook in self._hooks:  # a run that ended within its first step
            hook.remove()
        self._hooks = []
        if self._before is not None:
            torch.set_num_threads(self._before)
