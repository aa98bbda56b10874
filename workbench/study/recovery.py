"""Optuna's study and MLflow's runs kept in agreement: the two stores linked at creation and
checked on every open, dead workers told from live ones at once, and what a crash left open closed.

The invariants a rerun restores: every trial is COMPLETE, PRUNED or FAILED (a dead worker's trial
with a retry); each trial has one MLflow run whose status matches its state; no run is left
RUNNING by a process that is gone.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import optuna

from workbench import environment, tracking
from workbench.spec import ExperimentSpec
from workbench.study.liveness import fail_dead_trials

TrialState = optuna.trial.TrialState
STUDY_UID = "workbench.study_uid"  # the same value on the Optuna study and its MLflow parent run
PARENT_RUN = "workbench.mlflow_parent_run_id"  # on the Optuna study
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
            ran = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
            if linked is not None or ran:  # queued trials alone (enqueue_trial) ran nowhere
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


def recover(
    study: optuna.Study, store: tracking.Store, parent: str, role: str = "trial", **tags: str
) -> None:
    """Close what dead processes left: their trials failed and retried, their runs (the child
    runs of ``role`` that carry ``tags``) closed."""
    import warnings

    fail_dead_trials(study, store.root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other hosts' workers, by heartbeat
    reconcile_runs(store, study, parent, role, tags)


def reconcile_runs(
    store: tracking.Store,
    study: optuna.Study,
    parent: str,
    role: str = "trial",
    tags: dict[str, str] | None = None,
) -> int:
    """Make each finished trial's MLflow run agree with its state; give a run to a trial that
    died before opening one. Runs of RUNNING trials belong to live workers and are left alone."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    seen, repaired = set(), 0
    for run in tracking.child_runs(store, parent):
        if run.data.tags.get(tracking.ROLE) != role:
            continue
        if any(run.data.tags.get(key) != value for key, value in (tags or {}).items()):
            continue  # another study's runs of the same role (another run's reproduction)
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
                    tracking.ROLE: role,
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
    tracking.log_environment(store, parent, run_environment(spec))
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
        "git_commit": _commit_label(run_environment(spec)["git"]),
        "seed": str(spec.seed),
        "data.name": spec.data.name,
        "data.fingerprint": data.fingerprint_,
        "data.split_seed": str(spec.split_seed()),
        "model.name": spec.model.name,
        tracking.DATA_POLICY: spec.tracking.data_policy,
    }
    if trial is not None:
        tags[tracking.TRIAL] = str(trial)
    return tags


def run_environment(spec: ExperimentSpec) -> dict[str, Any]:
    """This process's environment (read once per process), with the determinism the spec asks of
    its Trainer; the spec's data file is cut out of its git diff."""
    env = environment.capture(deterministic=spec.trainer.deterministic)
    return tracking.without_data_files(env, [spec.data.path] if spec.data.path else [])


def _commit_label(git: dict[str, Any]) -> str:
    """The ``git_commit`` tag: the commit, ``-dirty`` when the tree differs from it."""
    if not git.get("commit"):
        return "unknown"
    return f"{git['commit']}-dirty" if git.get("dirty") else git["commit"]
