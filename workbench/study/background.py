"""A study run in a thread of a notebook's kernel (``run_study(..., background=True)``): a handle
that shows its progress, reads its trials while it runs and stops it as Ctrl-C would."""

from __future__ import annotations

import atexit
import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import lightning.pytorch as pl
import optuna
from lightning.pytorch.callbacks import Callback
from tqdm.auto import tqdm

from workbench.spec import ExperimentSpec
from workbench.study.objective import FINISHED_STATES, WATCH
from workbench.train import StopTraining

if TYPE_CHECKING:
    import pandas

    from workbench.study.summary import StudyResult

TABLE_COLUMNS = ("number", "state", "value", "params", "datetime_start", "duration")


class StudyStopped(RuntimeError):
    """The study was stopped by its handle: finished trials are kept, the same call resumes it."""


class StudyHandle:
    """A study running in a thread of this process.

    ``.stop()`` ends it at the running trial's next epoch boundary with Ctrl-C's guarantees: that
    trial FAILED in Optuna and its MLflow run KILLED, the parent run KILLED, finished trials kept,
    and the same ``run_study`` call resumes it. ``.trials()`` is the trials table so far,
    ``.result()`` waits for the ``StudyResult``. A bar (tqdm's widget in JupyterLab, text where
    ipywidgets is missing) shows trials finished, the best value and the running trial's epoch.
    """

    def __init__(self, spec: ExperimentSpec, run: Callable[[ExperimentSpec], StudyResult]) -> None:
        # The handle's bar replaces Optuna's and Lightning's, which a thread would interleave.
        self.spec = dataclasses.replace(
            spec,
            study=dataclasses.replace(spec.study, progress_bar=False),
            trainer=dataclasses.replace(spec.trainer, progress_bar=False),
        )
        self._stop, self._ended = threading.Event(), threading.Event()
        self._result: StudyResult | None = None
        self._error: BaseException | None = None
        self._epoch: tuple[str, int, int] | None = None  # running trial, its epoch, max epochs
        self._finished, self._best = 0, None
        self._storage = None
        self._bar = tqdm(total=spec.study.trials, desc=f"study {spec.name}", unit="trial")
        self._thread = threading.Thread(
            target=self._main, args=(run,), name=f"study {spec.name}", daemon=True
        )
        atexit.register(self._stop_at_exit)  # a kernel shut down mid-trial closes its stores
        self._thread.start()

    @property
    def done(self) -> bool:
        """Whether the study has ended: finished, stopped or failed."""
        return self._ended.is_set()

    @property
    def running(self) -> tuple[str, int, int] | None:
        """The running trial's name, its epoch (from 0) and its maximum epochs; None between
        trials."""
        return self._epoch

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called; the study's thread checks it at each epoch boundary."""
        return self._stop.is_set()

    def stop(self, wait: bool = True) -> None:
        """End the study at the running trial's next epoch boundary, as Ctrl-C would (between
        trials: before the next; one past its trials and confirmations finishes its last steps);
        with ``wait``, return once it has ended and both stores are closed."""
        self._stop.set()
        if wait:
            self._join()

    def result(self, timeout: float | None = None) -> StudyResult:
        """Wait for the study and return its ``StudyResult``; ``StudyStopped`` when it was
        stopped, the study's own error when it failed. Interrupting the wait (the notebook's
        stop button) stops the study, as Ctrl-C stops one run in the foreground."""
        self._join(timeout)
        if not self.done:
            raise TimeoutError(f"study {self.spec.name!r} still running after {timeout} s")
        if isinstance(self._error, KeyboardInterrupt):
            raise StudyStopped(
                f"study {self.spec.name!r} was stopped: finished trials are kept; the same "
                "run_study call resumes it"
            ) from self._error
        if self._error is not None:
            raise self._error
        return self._result

    def trials(self) -> pandas.DataFrame:
        """The study's trials so far (number, state, value, params, start, duration), read from
        its storage while it runs; empty before the study exists."""
        import pandas

        try:
            study = optuna.load_study(study_name=self.spec.name, storage=self._open_storage())
        except KeyError:  # the thread has not created the study yet
            study = None
        table = study.trials_dataframe(attrs=TABLE_COLUMNS) if study is not None else None
        if table is None or table.empty:  # Optuna's table of no trials has no columns either
            return pandas.DataFrame(columns=list(TABLE_COLUMNS))
        return table

    def trial_callback(self, name: str) -> Callback:
        """The Lightning callback a trial of this study trains with (``objective.Objective``)."""
        return EpochWatch(self, name)

    def __repr__(self) -> str:
        state = "stopping" if self.stopping and not self.done else "running"
        if self.done:
            state = "stopped" if isinstance(self._error, KeyboardInterrupt) else "ended"
            state = "failed" if self._error is not None and state == "ended" else state
        text = f"<study {self.spec.name!r} {state}: {self._finished}/{self.spec.study.trials}"
        text += " trials finished"
        if self._best is not None:
            text += f", best {self.spec.study.metric} {self._best:.4g}"
        if self._epoch is not None and not self.done:
            name, epoch, epochs = self._epoch
            text += f", {name} at epoch {epoch + 1}/{epochs}"
        return text + ">"

    def _main(self, run: Callable[[ExperimentSpec], StudyResult]) -> None:
        WATCH.set(self)  # this thread's trials report to and obey this handle
        try:
            self._result = run(self.spec)
        except BaseException as exc:  # KeyboardInterrupt after stop(), or the study's error
            self._error = exc
            if not isinstance(exc, KeyboardInterrupt):
                print(f"study {self.spec.name!r} failed: {type(exc).__name__}: {exc}")
        finally:
            self._epoch = None
            self._show()
            self._bar.close()  # red where the study did not reach its count
            atexit.unregister(self._stop_at_exit)
            self._ended.set()

    def _join(self, timeout: float | None = None) -> None:
        # An Event, not Thread.join: a join interrupted by Ctrl-C marks a running thread as
        # ended in Python 3.11 (it releases the thread's lock), and a second join returns at once.
        try:
            self._ended.wait(timeout)
        except KeyboardInterrupt:  # the kernel interrupted while waiting: stop the study too
            self._stop.set()
            self._ended.wait()
            raise

    def _stop_at_exit(self) -> None:
        if not self.done:
            self.stop()

    def _at_epoch(self, name: str, epoch: int, epochs: int) -> None:
        self._epoch = (name, epoch, epochs)
        self._show()

    def _show(self) -> None:
        """Bring the bar up to date with the storage and the running trial's epoch."""
        try:
            storage = self._open_storage()
            trials = storage.get_all_trials(storage.get_study_id_from_name(self.spec.name))
        except Exception:  # no study yet, a busy or broken database: the study itself says so
            return
        complete = [t.values[0] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        self._finished = sum(t.state in FINISHED_STATES for t in trials)
        if complete:
            self._best = (max if self.spec.study.direction == "maximize" else min)(complete)
        postfix = {} if self._best is None else {"best": f"{self._best:.4g}"}
        if self._epoch is not None:
            name, epoch, epochs = self._epoch
            postfix[name] = f"epoch {epoch + 1}/{epochs}"
        self._bar.n = self._finished
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.refresh()

    def _open_storage(self):
        if self._storage is None:
            from workbench.study.workers import open_study_storage

            self._storage = open_study_storage(self.spec)
        return self._storage


class EpochWatch(Callback):
    """Reports a trial's epochs to its study's handle and, once the handle is stopping, ends the
    trial before its next epoch: as Ctrl-C would, but from the study's thread (``StopTraining``)."""

    def __init__(self, handle: StudyHandle, name: str) -> None:
        self.handle, self.name = handle, name

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.handle.stopping:
            raise StopTraining(f"stopped by its handle before epoch {trainer.current_epoch}")
        self.handle._at_epoch(self.name, trainer.current_epoch, trainer.max_epochs)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # testing and logging follow: no epoch runs until the next trial
            self.handle._epoch = None
