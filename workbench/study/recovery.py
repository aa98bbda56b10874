"""Optuna's study and MLflow's runs kept in agreement: the two stores linked at creation and
checked on every open, dead workers told from live ones at once, and what a crash left open closed.

The invariants a rerun restores: every trial is COMPLETE, PRUNED or FAILED (a dead worker's trial
with a retry); each trial has one MLflow run whose status matches its state; no run is left
RUNNING by a process that is gone.
"""

from __future__ import annotations

import copy
import os
import socket
import uuid
from pathlib import Path
from typing import Any

import optuna

from workbench import tracking
from workbench.spec import ExperimentSpec

TrialState = optuna.trial.TrialState
STUDY_UID = "workbench.study_uid"  # the same value on the Optuna study and its MLflow parent run
PARENT_RUN = "workbench.mlflow_parent_run_id"  # on the Optuna study
WORKER = "workbench.worker"  # on each trial: the process that runs it
MLFLOW_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "KILLED",
    TrialState.FAIL: "FAILED",
}


class StoresDisagree(LookupError):
    """The Optuna study and the MLflow runs do not belong together (one store lost or swapped)."""


def open_linked(
    spec: ExperimentSpec,
    storage: optuna.storages.BaseStorage,
    store: tracking.Store,
    create_study,
    create_parent,
) -> tuple[optuna.Study, str]:
    """Open the spec's study and its MLflow parent run, each checked against the other's id.

    ``create_study()`` and ``create_parent(uid)`` make the missing halves of a new study. A study
    found in one store only, or linked to another run, stops with ``StoresDisagree`` before
    anything is written.
    """
    with tracking.root_lock(store.root):  # two first commands on one root take turns
        try:
            storage.get_study_id_from_name(spec.name)
            exists = True
        except KeyError:
            exists = False
        parent = tracking.find_study_run(store, spec.name)
        optuna_where = _describe(spec.tracking.optuna_storage, store.root / "optuna.db")
        mlflow_where = _describe(spec.tracking.mlflow_uri, store.root / "mlflow.db")
        if not exists:
            if parent is not None:
                raise StoresDisagree(
                    f"study {spec.name!r}: {mlflow_where} holds its MLflow run {parent}, but "
                    f"{optuna_where} has no such study (the Optuna store was lost, emptied or "
                    f"swapped). Nothing was written. Restore {optuna_where}, or give the study a "
                    "new name (--set name=...) or another tracking.root."
                )
            study = create_study()
            uid = uuid.uuid4().hex
            study.set_user_attr(STUDY_UID, uid)
            parent = create_parent(uid)
            study.set_user_attr(PARENT_RUN, parent)
            return study, parent
        study = create_study()
        uid, linked = study.user_attrs.get(STUDY_UID), study.user_attrs.get(PARENT_RUN)
        if parent is None:
            if linked is not None or study.get_trials(deepcopy=False):
                raise StoresDisagree(
                    f"study {spec.name!r}: {optuna_where} holds it with "
                    f"{len(study.trials)} trials (linked to MLflow run {linked}), but "
                    f"{mlflow_where} has no run for it (the MLflow store was lost, emptied or "
                    f"swapped). Nothing was written. Restore {mlflow_where}, or give the study a "
                    "new name (--set name=...) or another tracking.root."
                )
            uid = uid or uuid.uuid4().hex  # a study whose first command died before its run
            study.set_user_attr(STUDY_UID, uid)
            parent = create_parent(uid)
            study.set_user_attr(PARENT_RUN, parent)
            return study, parent
        tags = tracking.run_tags(store, parent)
        if linked is None and uid is not None and tags.get(STUDY_UID) == uid:
            study.set_user_attr(PARENT_RUN, parent)  # the first command died while linking
        elif uid is None and linked is None and STUDY_UID not in tags:
            # A study made before the stores were linked: link them now.
            uid = uuid.uuid4().hex
            tracking.set_tags(store, parent, {STUDY_UID: uid})
            study.set_user_attr(STUDY_UID, uid)
            study.set_user_attr(PARENT_RUN, parent)
        elif linked != parent or tags.get(STUDY_UID) != uid:
            raise StoresDisagree(
                f"study {spec.name!r}: {optuna_where} links it to MLflow run {linked} "
                f"(uid {uid}), but {mlflow_where} holds run {parent} (uid "
                f"{tags.get(STUDY_UID)}): the two stores come from different studies. Nothing "
                "was written. Restore the matching pair of files, or give the study a new name "
                "(--set name=...)."
            )
        return study, parent


def _describe(url: str | None, default: Path) -> str:
    return default.as_posix() if url is None else url.split("@")[-1]


def check_mlflow_side_exists(spec: ExperimentSpec, storage: optuna.storages.BaseStorage) -> None:
    """Before any MLflow file is created: a linked study whose default MLflow database is gone."""
    if spec.tracking.mlflow_uri is not None:
        return
    database = Path(spec.tracking.root).resolve() / "mlflow.db"
    if database.is_file():
        return
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return
    linked = storage.get_study_user_attrs(study_id).get(PARENT_RUN)
    if linked is not None:
        raise StoresDisagree(
            f"study {spec.name!r}: the Optuna store links it to MLflow run {linked}, but "
            f"{database} does not exist (the MLflow store was lost or moved). Nothing was "
            "written. Restore it, or give the study a new name (--set name=...)."
        )


# --- which process runs a trial ------------------------------------------------------------


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


def recover(study: optuna.Study, store: tracking.Store, parent: str) -> None:
    """Close what dead processes left: their trials failed and retried, their runs closed."""
    import warnings

    fail_dead_trials(study, store.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other hosts' workers, by heartbeat
    reconcile_runs(store, study, parent)


def reconcile_runs(store: tracking.Store, study: optuna.Study, parent: str) -> int:
    """Make each finished trial's MLflow run agree with its state; give a run to a trial that
    died before opening one. Runs of RUNNING trials belong to live workers and are left alone."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    seen, repaired = set(), 0
    for run in tracking.child_runs(store, parent):
        if run.data.tags.get(tracking.ROLE) != "trial":
            continue
        number = int(run.data.tags.get(tracking.TRIAL, -1))
        seen.add(number)
        trial = trials.get(number)
        state = trial.state if trial is not None else None
        if state == TrialState.RUNNING:
            continue
        status = run.info.status
        wrong = status == "RUNNING" or (status == "FINISHED" and state != TrialState.COMPLETE)
        if wrong:
            reason = (trial.system_attrs.get("fail_reason") if trial else None) or ""
            tracking.end_run(
                store,
                run.info.run_id,
                MLFLOW_STATUS.get(state, "FAILED"),
                f"closed on resume: trial state {state.name if state else 'missing'}"
                + (f" ({reason})" if reason else ""),
            )
            repaired += 1
    for number, trial in trials.items():
        if number not in seen and trial.state == TrialState.FAIL:
            run_id = tracking.start_run(
                store,
                f"trial-{number}",
                {
                    tracking.ROLE: "trial",
                    tracking.STUDY: study.study_name,
                    tracking.TRIAL: str(number),
                },
                parent=parent,
            )
            reason = trial.system_attrs.get("fail_reason", "its process died before the run")
            tracking.end_run(store, run_id, "FAILED", f"closed on resume: {reason}")
            repaired += 1
    return repaired


def create_study_run(store: tracking.Store, spec: ExperimentSpec, data, uid: str) -> str:
    """The study's parent run, tagged with the id the Optuna study records too."""
    tags = {**run_tags(spec, data, "study"), STUDY_UID: uid}
    parent = tracking.start_run(store, spec.name, tags)
    tracking.log_json(store, parent, spec.to_dict(), "spec.json")
    tracking.log_params(store, parent, _flatten(spec.to_dict(), skip=("search_space",)))
    return parent


def _flatten(tree: dict, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if key in skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def run_tags(
    spec: ExperimentSpec, data, study_role: str, trial: int | None = None
) -> dict[str, str]:
    tags = {
        tracking.ROLE: study_role,
        tracking.STUDY: spec.name,
        "git_commit": tracking.git_commit(Path(__file__).parent),
        "seed": str(spec.seed),
        "data.name": spec.data.name,
        "data.fingerprint": data.fingerprint_,
        "model.name": spec.model.name,
    }
    if trial is not None:
        tags[tracking.TRIAL] = str(trial)
    return tags
