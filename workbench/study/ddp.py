"""Pruning a trial through optuna-integration's callback: in one process without asking a pruner
that cannot prune yet, and under DDP in its distributed mode, which reports from rank 0, stops
every process together, and needs the study in an RDB storage."""

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


class Pruning(PyTorchLightningPruningCallback):
    """The integration's callback for a trial in one process: every epoch is reported, but the
    pruner is asked only from the first epoch at which it can prune. Asking re-reads the study
    from its storage (about 7 ms an epoch for a small study in SQLite), and the median and
    percentile pruners answer no before their ``n_warmup_steps`` whatever the study holds."""

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor=monitor)
        pruner = trial.study.pruner
        warmup = isinstance(pruner, optuna.pruners.PercentilePruner)  # MedianPruner too
        self.first_step = int(getattr(pruner, "_n_warmup_steps", 0)) if warmup else 0

    def on_validation_end(self, trainer, pl_module) -> None:
        score = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or score is None or pl_module.current_epoch >= self.first_step:
            super().on_validation_end(trainer, pl_module)  # its checks, report and decision
            return
        self._trial.report(score.item(), step=pl_module.current_epoch)


def pruning_callback(trial: optuna.Trial, monitor: str, distributed: bool):
    """The pruning callback for a trial on one process or, with ``distributed``, on several."""
    if distributed:
        return DDPPruning(trial, monitor)
    return Pruning(trial, monitor)
