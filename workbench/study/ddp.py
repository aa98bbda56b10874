"""Pruning a DDP trial: optuna-integration's callback in its distributed mode, which reports from
rank 0, stops every process together, and needs the study in an RDB storage."""

from __future__ import annotations

import optuna
from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna_integration import PyTorchLightningPruningCallback

from workbench.spec import SpecError


class DDPPruning(PyTorchLightningPruningCallback):
    """The integration's pruning callback, with its ``check_pruned()`` called for us.

    Under DDP the callback does not raise ``TrialPruned``: rank 0 reports, every process stops
    at the same epoch, and the decision is kept in the trial's system attributes, read back by
    ``check_pruned()``. Calling it at the end of fit, in rank 0 (this process), raises
    ``TrialPruned`` before the test pass, so the trial and its MLflow run end PRUNED/KILLED.
    """

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        storage = trial.study._storage
        backend = storage._backend if isinstance(storage, _CachedStorage) else storage
        if not isinstance(backend, RDBStorage):
            raise SpecError(
                "trainer.devices: pruning a DDP trial needs the study in an RDB storage "
                f"(SQLite or PostgreSQL: tracking.optuna_storage); got {type(backend).__name__}"
            )
        super().__init__(trial, monitor=monitor)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:  # the forks never touch the storage
            self.check_pruned()


def pruning_callback(trial: optuna.Trial, monitor: str, distributed: bool):
    """The pruning callback for a trial on one process or, with ``distributed``, on several."""
    if distributed:
        return DDPPruning(trial, monitor)
    return PyTorchLightningPruningCallback(trial, monitor=monitor)
