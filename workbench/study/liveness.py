"""Which process runs a trial: each process holds a lock file for as long as it lives, and each
trial records it; a rerun on the same host that can take the lock knows at once the process died."""

from __future__ import annotations

import copy
import os
import socket
import uuid
from pathlib import Path

import optuna

TrialState = optuna.trial.TrialState
WORKER = "workbench.worker"  # on each trial: the process that runs it


class WorkerLock:
    """This process's identity: a lock file it holds for as long as it lives.

    A trial records the lock's name; a rerun on the same host that can take the lock knows at
    once that the trial's process is gone (a heartbeat would take minutes to say so).
    """

    _held: dict[Path, WorkerLock] = {}

    def __init__(self, root: Path) -> None:
        import fcntl

        self.host, self.pid = socket.gethostname(), os.getpid()
        self.name = f"{self.host}-{self.pid}-{uuid.uuid4().hex[:8]}.lock"
        folder = root / ".workers"
        folder.mkdir(parents=True, exist_ok=True)
        self.handle = open(folder / self.name, "w")  # noqa: SIM115 (held for the process's life)
        fcntl.flock(self.handle, fcntl.LOCK_EX)

    @classmethod
    def of_this_process(cls, root: Path) -> WorkerLock:
        root = Path(root).resolve()
        lock = cls._held.get(root)
        if lock is None or lock.pid != os.getpid():  # a forked child takes its own
            lock = cls._held[root] = cls(root)
        return lock

    def record(self, trial: optuna.Trial) -> None:
        trial.set_user_attr(WORKER, {"host": self.host, "pid": self.pid, "lock": self.name})


def _worker_is_alive(root: Path, worker: dict) -> bool:
    import fcntl

    path = root / ".workers" / str(worker.get("lock", ""))
    if not path.name.endswith(".lock") or not path.is_file():
        return False
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    path.unlink(missing_ok=True)
    return False


def fail_dead_trials(study: optuna.Study, root: Path) -> list[int]:
    """Fail the RUNNING trials whose process on this host is gone, and re-queue them.

    Trials of other hosts are left to Optuna's heartbeat (``fail_stale_trials``).
    """
    storage = study._storage
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER)
        if not isinstance(worker, dict) or worker.get("host") != host:
            continue
        if _worker_is_alive(Path(root), worker):
            continue
        try:
            storage.set_trial_system_attr(
                trial._trial_id, "fail_reason", f"its worker (pid {worker.get('pid')}) died"
            )
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:
        if retry is not None:
            retry(study, copy.deepcopy(storage.get_trial(trial_id)))
    return failed
