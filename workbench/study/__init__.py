"""Optuna, and only Optuna: a study defined by the spec, one MLflow child run per trial.

``run_study`` opens (or resumes) the study and its parent run, checked against each other
(``recovery``), runs the missing trials in this process and its workers (``workers``), each trial
an ``objective``, confirms the best configurations over seeds when the spec asks (``confirm``),
then registers and explains the champion (``summary``); with ``background=True`` all that runs
in a thread behind a handle a notebook can watch and stop (``background``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from workbench import tracking
from workbench.spec import STUDY_REFERENCE, ExperimentSpec, SpecError, load_spec
from workbench.study import confirm, recovery
from workbench.study import workers as pool
from workbench.study.config import make_pruner, make_sampler, storage_url
from workbench.study.objective import WATCH
from workbench.study.summary import StudyResult, finish_study, load_best_trial, load_trial

if TYPE_CHECKING:
    from workbench.study.background import StudyHandle

__all__ = ["StudyResult", "load_best_trial", "load_trial", "run_study", "storage_url"]


def run_study(
    spec: ExperimentSpec | str | Path,
    trials: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    workers: int | None = None,
    background: bool = False,
) -> StudyResult | StudyHandle:
    """Run (or resume) the spec's study until ``trials`` trials have finished; return the best.

    With ``workers`` > 1, that many processes on this machine share the study's storage; other
    machines join by running the same spec against the same database URL. With ``background``,
    a ``StudyHandle`` comes back at once (the spec checked): the study runs in a thread, shows
    its progress, and ``.stop()`` ends it at the next epoch boundary as Ctrl-C would.
    """
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides)
    elif overrides:
        raise ValueError("pass overrides with a spec path, or apply them with load_spec")
    study_spec = spec.study
    if trials is not None:
        study_spec = dataclasses.replace(study_spec, trials=trials)
    if workers is not None:
        study_spec = dataclasses.replace(study_spec, workers=workers)
    spec = _resolve_study_checkpoints(dataclasses.replace(spec, study=study_spec))
    spec.study.check()
    make_sampler(spec), make_pruner(spec)  # bad names and options fail before any work
    if background:
        from workbench.study.background import StudyHandle

        return StudyHandle(spec, _run)
    return _run(spec)


def _run(spec: ExperimentSpec) -> StudyResult:
    """``run_study``'s work on a checked spec, in the caller's thread or a handle's."""
    from workbench.train import data_from_spec

    data = data_from_spec(spec)
    data.setup()  # a missing or broken data file fails here, before any run is opened
    if spec.privacy.enabled:  # δ below 1 / training rows, checked before any run is opened
        from workbench.robustness.privacy import check_privacy

        check_privacy(spec.privacy, data)
    if spec.backbone.source is not None:
        from workbench.train import backbone_of, module_from_spec

        # A missing base model, another split of the data or a backbone that does not fit the
        # data's shape fails here, before any store is opened.
        module_from_spec(spec, data, backbone=backbone_of(spec))
    storage = pool.open_study_storage(spec)  # an unreachable or corrupt database fails here
    recovery.check_mlflow_side_exists(spec, storage)
    store = tracking.open_store(
        spec.tracking.root, spec.tracking.experiment, spec.tracking.mlflow_uri
    )
    tracking.claim_registered_model(store, spec.tracking.register_as or spec.name, spec.name)
    study, parent = recovery.open_linked(
        spec,
        storage,
        store,
        create_study=lambda: pool.open_study(spec, storage),
        create_parent=lambda uid: recovery.create_study_run(store, spec, data, uid),
    )
    tracking.reopen_run(store, parent)
    recovery.recover(study, store, parent)

    done = pool.finished(study)
    waiting = pool.count(study, optuna.trial.TrialState.WAITING)  # dead workers' retries
    remaining = max(spec.study.trials - done, waiting)
    search = pool.cap_workers(spec, remaining)  # confirmations are capped by their own count
    on = f" on {search.study.workers} workers" if search.study.workers > 1 else ""
    print(f"study {spec.name!r}: {done} trials finished, running {max(remaining, 0)} more{on}")
    helpers = pool.Helpers(parent)  # the search's workers stay for the confirmation
    try:
        if remaining > 0:
            _search(search, study, data, store, parent, remaining, helpers)
        recovery.recover(study, store, parent)
        confirmation = _confirm(spec, study, storage, data, store, parent, helpers)
    finally:
        helpers.close()
    result = finish_study(spec, study, store, parent, data, confirmation)
    if spec.tracking.report:
        from workbench.study.report import write_report

        result.report = str(write_report(spec, study, store, parent))
    if spec.tracking.review:  # dashboard notes and figures, MLflow runs linked back
        from workbench.study.review import annotate

        annotate(storage, store, spec.name)
        if confirmation is not None:
            annotate(storage, store, confirm.study_name(spec.name))
    tracking.end_run(store, parent, "FINISHED")
    return result


def _search(search: ExperimentSpec, study, data, store, parent: str, remaining: int, helpers):
    """The search's missing trials, in this process and ``search.study.workers - 1`` helpers."""
    stopped = f"study {search.name!r} interrupted: finished trials are kept; re-run to resume"
    with _closing_on_interrupt(helpers, store, parent, stopped):
        _stop_if_asked()
        helpers.run(search)
        with pool.share_cores(search.study.workers):
            pool.optimize(search, study, data, store, parent, remaining)
        _stop_if_asked()  # before waiting for the workers' trials
        helpers.wait()
        # A worker that died mid-trial left it to be retried; trials that failed on their own
        # (a diverged loss) are not run again.
        recovery.recover(study, store, parent)
        retries = pool.count(study, optuna.trial.TrialState.WAITING)
        if retries > 0:
            pool.optimize(search, study, data, store, parent, retries, count_running=False)
            _stop_if_asked()


def _confirm(spec: ExperimentSpec, study, storage, data, store, parent: str, helpers):
    """The confirmation over seeds the spec asks for (``confirm.run``), or None."""
    study.set_user_attr(confirm.CHAMPION, None)  # set again below when confirmation chooses
    if spec.study.confirm.top_k == 0:
        return None
    stopped = f"study {spec.name!r} interrupted while confirming: re-run to resume"
    with _closing_on_interrupt(helpers, store, parent, stopped):
        _stop_if_asked()
        confirmation = confirm.run(spec, study, storage, data, store, parent, helpers)
        _stop_if_asked()
    return confirmation


@contextlib.contextmanager
def _closing_on_interrupt(helpers, store, parent: str, message: str):
    """On Ctrl-C (or a handle's stop): helpers stopped, the parent run KILLED, ``message``."""
    try:
        yield
    except KeyboardInterrupt:
        helpers.stop()
        tracking.end_run(store, parent, "KILLED", "interrupted; re-run the same command to resume")
        print(f"\n{message}")
        raise


def _stop_if_asked() -> None:
    """End a background study whose handle asked it to stop, here, as Ctrl-C would (a trial's
    own epochs check too: ``background.EpochWatch``)."""
    watch = WATCH.get()
    if watch is not None and watch.stopping:
        raise KeyboardInterrupt("stopped by its handle")


def _resolve_study_checkpoints(spec: ExperimentSpec) -> ExperimentSpec:
    """Replace ``study:NAME`` checkpoint params by the best checkpoint of study NAME."""
    params = dict(spec.model.params)
    for key, value in params.items():
        if not (key.endswith("checkpoint") and str(value).startswith(STUDY_REFERENCE)):
            continue
        name = str(value)[len(STUDY_REFERENCE) :]
        source = dataclasses.replace(spec, name=name)
        Path(spec.tracking.root).mkdir(parents=True, exist_ok=True)  # where the storage lives
        try:
            best = load_best_trial(source)
        except KeyError as exc:  # Optuna's error for a study that does not exist
            raise SpecError(
                f"model.params.{key}: no study {name!r} in {storage_url(source)}; run it first"
            ) from exc
        except LookupError as exc:
            raise SpecError(f"model.params.{key}: {exc}") from exc
        params[key] = best.user_attrs["checkpoint"]
        print(f"model.params.{key}: best checkpoint of study {name!r}: {params[key]}")
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, params=params))
