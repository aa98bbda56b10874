"""DDP for one trial: ``trainer.strategy: ddp`` with ``trainer.devices: N`` trains on N processes.

This process is rank 0; ranks 1..N-1 are forks of it made when ``trainer.fit`` starts. Why fork,
and why this process as rank 0: Lightning's ``ddp`` re-executes the command line (inside a study
that would start the study again), ``ddp_spawn`` pickles the module, data, Trainer and callbacks
(the Optuna trial and MLflow store among them) into fresh interpreters, and ``ddp_fork`` runs
every rank, rank 0 included, in a child, so the study's MLflow and Optuna side effects would
happen through database connections inherited over fork. Here the forks only compute: they log
nothing, write no checkpoint, never touch a store, and leave by ``os._exit``; the epoch logging,
the pruning reports and the best checkpoint stay in this process, as in a one-process trial.
Fork cannot follow CUDA (a forked process cannot use a GPU its parent initialised), so this
launcher is CPU only (gloo); a GPU accelerator is refused with a clear error. Nor can it follow
OpenMP's thread pool: each fork trains on one thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.launcher import _Launcher

from workbench.spec import SpecError, TrainerSpec

_ENVIRONMENT = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")
# Lightning asks for ``sync_dist=True`` on every epoch-level ``self.log`` under DDP; the modules
# log torchmetrics results, already synchronised across processes on compute.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting")


def is_ddp(spec: TrainerSpec) -> bool:
    """Whether the spec trains on several processes (``ddp`` with one device is one process)."""
    return spec.strategy == "ddp" and spec.devices > 1


def check_ddp(spec: TrainerSpec, data) -> None:
    """Refuse, naming the field, what several processes cannot train: a GPU (fork), or data
    that does not give each process its own shard (it would be counted ``devices`` times)."""
    gpu = spec.accelerator in {"gpu", "cuda", "mps"} or (
        spec.accelerator == "auto" and torch.cuda.is_available()
    )
    if gpu:
        raise SpecError(
            f"trainer.devices: {spec.devices} processes run on forks of this process, which "
            "CUDA does not survive; DDP here is CPU only (trainer.accelerator: cpu), or use "
            "devices: 1"
        )
    if not getattr(data, "shards_by_rank", False):
        raise SpecError(
            f"trainer.devices: {type(data).__name__} does not shard its batches by process; "
            "under DDP every process would see every sample. Use devices: 1 for this data"
        )


def ddp_strategy() -> DDPStrategy:
    """Lightning's DDP strategy with this module's fork launcher (process group: gloo)."""
    return _ForkedDDP(process_group_backend="gloo")


class CountsValidation(Callback):
    """Logs ``ddp/val_samples``: the validation samples all processes saw this epoch, summed,
    so a DDP run shows its split was covered exactly once (no padding, no duplicates)."""

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        self.count = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        targets = batch[-1] if isinstance(batch, (tuple, list)) else None
        self.count += len(targets) if isinstance(targets, torch.Tensor) else 0

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        mine = torch.tensor(float(self.count), device=pl_module.device)
        pl_module.log("ddp/val_samples", trainer.strategy.reduce(mine, reduce_op="sum"))


class _ForkedDDP(DDPStrategy):
    def _configure_launcher(self) -> None:
        self._launcher = _ForkLauncher(self)


class _ForkLauncher(_Launcher):
    """Runs a Trainer entry point as rank 0 here and as ranks 1..N-1 in forks of this process.

    Whatever ends rank 0 (success, an error, a pruned trial, Ctrl-C), every fork is gone before
    ``launch`` returns: joined on success, killed otherwise; a fork's own error is raised here.
    """

    def __init__(self, strategy: DDPStrategy) -> None:
        self._strategy = strategy
        self.pids: list[int] = []

    @property
    def is_interactive_compatible(self) -> bool:
        return True  # no re-executed script, nothing pickled: works in a notebook

    def launch(self, function, *args, trainer=None, **kwargs):
        saved = {key: os.environ.get(key) for key in _ENVIRONMENT}
        os.environ["MASTER_ADDR"] = self._strategy.cluster_environment.main_address
        # One port, chosen before forking, or each process would pick its own.
        os.environ["MASTER_PORT"] = str(self._strategy.cluster_environment.main_port)
        errors = Path(tempfile.mkdtemp(prefix="workbench-ddp-"))
        sys.stdout.flush(), sys.stderr.flush()  # or buffered text is printed once per fork
        try:
            for rank in range(1, self._strategy.num_processes):
                pid = os.fork()
                if pid == 0:
                    _run_fork(rank, errors, function, args, kwargs)
                self.pids.append(pid)
            os.environ["LOCAL_RANK"] = "0"
            try:
                result = function(*args, **kwargs)
            except BaseException as exc:
                self.kill(signal.SIGKILL)
                self._join(errors, exc)
                raise
            self._join(errors, None)
            return result
        finally:
            self.kill(signal.SIGKILL)
            self._join(errors, None, quiet=True)
            if torch.distributed.is_initialized():  # the next trial makes its own group
                torch.distributed.destroy_process_group()
            shutil.rmtree(errors, ignore_errors=True)
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.update({key: value})

    def _join(self, errors: Path, cause: BaseException | None, quiet: bool = False) -> None:
        """Wait for every fork (at most a minute after rank 0 is done); raise a fork's error."""
        deadline = time.monotonic() + 60
        failed = []
        for pid in self.pids:
            stuck = False
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > deadline and not stuck:
                    os.kill(pid, signal.SIGKILL)
                    stuck = True
                time.sleep(0.02)
            if (code := os.waitstatus_to_exitcode(done[1])) not in (0, -signal.SIGKILL) or stuck:
                failed.append(f"pid {pid} " + ("stuck, killed" if stuck else f"exit code {code}"))
        self.pids = []
        reports = sorted(errors.glob("rank-*.txt"))
        if quiet or not (reports or failed) or _ends_the_trial_anyway(cause):
            return
        text = "\n".join(f"{path.stem}:\n{path.read_text()}" for path in reports)
        raise RuntimeError(f"a DDP process failed ({', '.join(failed)}):\n{text}") from cause

    def kill(self, signum) -> None:
        for pid in self.pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def _ends_the_trial_anyway(cause: BaseException | None) -> bool:
    """Ctrl-C, or a pruned trial (its forks are stopped on purpose): not a fork's failure."""
    return isinstance(cause, KeyboardInterrupt) or type(cause).__name__ == "TrialPruned"


def _die_with_parent() -> None:
    """Linux: a fork is killed when rank 0's process dies, even by SIGKILL (it would otherwise
    wait on gloo for its timeout, holding the worker lock it inherited)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _run_fork(rank: int, errors: Path, function, args, kwargs) -> None:
    """A fork's whole life: train as ``rank``, then leave without running any exit handler
    (nothing inherited from the parent, database connections included, is closed or flushed)."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends the fork; rank 0 reports it
        _die_with_parent()
        # GNU OpenMP does not survive fork: a fork whose parent has run a parallel region hangs
        # in its first one. One thread each, as PyTorch's DataLoader workers do.
        torch.set_num_threads(1)
        os.environ["LOCAL_RANK"] = str(rank)
        function(*args, **kwargs)
        code = 0
    except BaseException:
        (errors / f"rank-{rank}.txt").write_text(traceback.format_exc())
    finally:
        os._exit(code)
