"""Optuna, and only Optuna: a study defined by the spec, one MLflow child run per trial.

Run statuses come from the Optuna trial state, never from exceptions in a logger: a completed trial
ends FINISHED, a pruned or interrupted one KILLED, a failed one FAILED with its reason. Re-running
the same study name resumes it and repairs runs a killed process left RUNNING.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from workbench import tracking
from workbench.spec import STUDY_REFERENCE, ExperimentSpec, SpecError, apply_override, load_spec
from workbench.study import recovery
from workbench.study.config import (
    make_pruner,
    make_sampler,
    open_storage,
    sample_params,
    storage_url,
)
from workbench.study.summary import StudyResult, finish_study, load_best_trial, load_trial

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

__all__ = ["StudyResult", "load_best_trial", "load_trial", "run_study", "storage_url"]


def run_study(
    spec: ExperimentSpec | str | Path,
    trials: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    workers: int | None = None,
) -> StudyResult:
    """Run (or resume) the spec's study until ``trials`` trials have finished; return the best.

    With ``workers`` > 1, that many processes on this machine share the study's storage; other
    machines join by running the same spec against the same database URL.
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

    from workbench.train import build_datamodule

    data = build_datamodule(spec)
    data.setup()  # a missing or broken data file fails here, before any run is opened
    storage = _storage(spec)  # an unreachable or corrupt database fails here
    recovery.check_mlflow_side_exists(spec, storage)
    store = tracking.open_store(
        spec.tracking.root, spec.tracking.experiment, spec.tracking.mlflow_uri
    )
    tracking.claim_registered_model(store, spec.tracking.register_as or spec.name, spec.name)
    study, parent = recovery.open_linked(
        spec,
        storage,
        store,
        create_study=lambda: _open_study(spec, storage),
        create_parent=lambda uid: _create_study_run(store, spec, data, uid),
    )
    tracking.reopen_run(store, parent)
    recovery.recover(study, store, parent)

    done = _finished(study)
    waiting = _count(study, optuna.trial.TrialState.WAITING)  # retries of dead workers' trials
    remaining = max(spec.study.trials - done, waiting)
    spec = _cap_workers(spec, remaining)
    on = f" on {spec.study.workers} workers" if spec.study.workers > 1 else ""
    print(f"study {spec.name!r}: {done} trials finished, running {max(remaining, 0)} more{on}")
    helpers = []
    try:
        if remaining > 0:
            helpers = [_start_worker(spec, parent, i) for i in range(1, spec.study.workers)]
            with _share_cores(spec.study.workers):
                _optimize(spec, study, data, store, parent, remaining)
            for helper in helpers:
                helper.join()
            if any(helper.exitcode != 0 for helper in helpers):
                raise RuntimeError("a worker process failed; re-run the same command to resume")
            # A worker that died mid-trial left it to be retried; trials that failed on their
            # own (a diverged loss) are not run again.
            recovery.recover(study, store, parent)
            retries = _count(study, optuna.trial.TrialState.WAITING)
            if retries > 0:
                _optimize(spec, study, data, store, parent, retries, count_running=False)
    except KeyboardInterrupt:
        _stop_workers(helpers)
        tracking.end_run(store, parent, "KILLED", "interrupted; re-run the same command to resume")
        print(f"\nstudy {spec.name!r} interrupted: finished trials are kept; re-run to resume")
        raise
    recovery.recover(study, store, parent)
    result = finish_study(spec, study, store, parent, data)
    tracking.end_run(store, parent, "FINISHED")
    return result


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


def _storage(spec: ExperimentSpec) -> optuna.storages.RDBStorage:
    return open_storage(storage_url(spec), spec.study.heartbeat_s, spec.study.retries)


def _open_study(spec: ExperimentSpec, storage=None) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [spec.study.direction, *spec.study.extra_objectives.values()]
    return optuna.create_study(
        study_name=spec.name,
        storage=storage or _storage(spec),
        sampler=make_sampler(spec),  # seeded per trial: processes and resumes never repeat
        pruner=make_pruner(spec),
        directions=directions,
        load_if_exists=True,
    )


def _cap_workers(spec: ExperimentSpec, remaining: int) -> ExperimentSpec:
    """No more worker processes than trials left to run or cores to run them on."""
    cap = max(1, min(remaining, os.cpu_count() or 1))
    if spec.study.workers <= cap:
        return spec
    print(
        f"study.workers: {spec.study.workers} capped to {cap} "
        f"({remaining} trials to run, {os.cpu_count()} cores)"
    )
    return dataclasses.replace(spec, study=dataclasses.replace(spec.study, workers=cap))


def _optimize(
    spec: ExperimentSpec,
    study: optuna.Study,
    data,
    store,
    parent: str,
    n: int,
    count_running: bool = True,
) -> None:
    claim = _NextTrialClaim(Path(spec.tracking.root) / f".{spec.name}.claim.lock")
    stop_at_count = _StopAtCount(spec.study.trials, count_running, claim)
    try:
        # The first trial is counted like every later one: a worker that starts late (a slow
        # spawn on a loaded machine) must see the trials already running elsewhere.
        if stop_at_count.reached(study):
            return
        study.optimize(
            _Objective(spec, data, store, parent, claim),
            n_trials=n,
            catch=(FloatingPointError,),  # a diverged trial is recorded FAILED; the study goes on
            gc_after_trial=True,
            callbacks=[stop_at_count, _report_trial],
            show_progress_bar=spec.study.progress_bar and spec.study.workers == 1,
        )
    finally:
        claim.release()


class _NextTrialClaim:
    """A lock that the processes of one machine hold from deciding to start another trial until
    that trial is RUNNING in the storage, so that two workers ending trials at the same moment
    cannot both start one past the count. (Between machines that race remains.)"""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, None

    def acquire(self) -> None:
        import fcntl

        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _StopAtCount:
    """Stops this process once the study's finished trials, plus the trials other processes are
    running when ``count_running``, reach ``target``. Counting only finished trials (Optuna's
    ``MaxTrialsCallback``), each of N workers would start one more trial while the last ones
    run: up to N - 1 trials past the count."""

    def __init__(self, target: int, count_running: bool, claim: _NextTrialClaim) -> None:
        self.target, self.count_running, self.claim = target, count_running, claim

    def reached(self, study: optuna.Study) -> bool:
        """Whether the count is reached; if not, this process holds the claim until its next
        trial is RUNNING (the objective releases it)."""
        counted = FINISHED_STATES
        if self.count_running:
            counted = (*FINISHED_STATES, optuna.trial.TrialState.RUNNING)
        self.claim.acquire()
        trials = study.get_trials(deepcopy=False)
        # A waiting trial (a dead worker's retry) is always run: it replaces a failed one.
        waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
        if not waiting and sum(t.state in counted for t in trials) >= self.target:
            self.claim.release()
            return True
        return False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.reached(study):
            study.stop()


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def _count(study: optuna.Study, state: optuna.trial.TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def _start_worker(spec: ExperimentSpec, parent: str, index: int):
    """A worker process on this machine, sharing the storage and the parent MLflow run."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(
        target=_worker_main, args=(spec.to_dict(), parent, index), daemon=False
    )
    process.start()
    return process


@contextlib.contextmanager
def _share_cores(workers: int):
    """Each of ``workers`` processes gets its share of the cores for torch's thread pool: the
    main process too, or N workers of all-core thread pools fight over the same cores."""
    import torch

    before = torch.get_num_threads()
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker_main(raw_spec: dict, parent: str, index: int) -> None:
    import signal

    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops workers on Ctrl-C
    spec = load_spec(raw_spec)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.study.workers))
    from workbench.train import build_datamodule

    data = build_datamodule(spec)
    data.setup()
    study = _open_study(spec)
    store = tracking.open_store(
        spec.tracking.root, spec.tracking.experiment, spec.tracking.mlflow_uri
    )
    missing = max(
        spec.study.trials - _finished(study), _count(study, optuna.trial.TrialState.WAITING)
    )
    if missing > 0:
        _optimize(spec, study, data, store, parent, missing)


def _stop_workers(helpers) -> None:
    for helper in helpers:
        if helper.is_alive():
            helper.terminate()  # SIGTERM: the running trial is recorded and its run closed
    for helper in helpers:
        helper.join(timeout=60)


def _report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = ", ".join(f"{v:.4f}" for v in trial.values) if trial.values else "-"
    tqdm.write(
        f"trial {trial.number:3d} {trial.state.name:8s} value={value}  "
        + " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
    )


class _Objective:
    """One trial: sample, build, fit inside an MLflow child run, close it with the right status."""

    def __init__(
        self,
        spec: ExperimentSpec,
        data,
        store: tracking.Store,
        parent: str,
        claim: _NextTrialClaim | None = None,
    ) -> None:
        self.spec, self.data, self.store, self.parent = spec, data, store, parent
        self.claim = claim

    def __call__(self, trial: optuna.Trial) -> float:
        if self.claim is not None:
            self.claim.release()  # this trial is RUNNING: other processes count it now
        import lightning.pytorch as pl
        from optuna_integration import PyTorchLightningPruningCallback

        from workbench import plots
        from workbench.deploy.export import example_inputs
        from workbench.train import build_model, fit

        recovery.WorkerLock.of_this_process(self.store.root).record(trial)
        params = sample_params(self.spec.search_space, trial)
        model_params = {k: v for k, v in params.items() if "." not in k}
        spec = _with_dotted_params(self.spec, {k: v for k, v in params.items() if "." in k})
        data = _data_for_trial(self.data, self.spec, spec)

        store = self.store
        run_id = tracking.start_run(
            store,
            f"trial-{trial.number}",
            _run_tags(spec, data, study_role="trial", trial=trial.number),
            parent=self.parent,
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        repeated = _repeats(trial)
        if repeated is not None and not spec.study.allow_repeats:
            reason = (
                f"repeats the configuration of finished trial {repeated}; not run again "
                "(study.allow_repeats: true runs repeats)"
            )
            tracking.end_run(store, run_id, "KILLED", reason)
            raise optuna.TrialPruned(reason)
        pl.seed_everything(spec.seed, verbose=False)
        model = build_model(spec, data, **model_params)
        tracking.log_params(
            store,
            run_id,
            {
                **dict(model.hparams),
                **{k: v for k, v in params.items() if "." in k},
                "data.batch_size": data.batch_size,
                "data.augment": spec.data.augment,
                "trainer.max_epochs": spec.trainer.max_epochs,
            },
        )
        started = time.perf_counter()
        # The run id makes the folder unique: a checkpoint is never overwritten, whatever
        # happened to the stores before.
        checkpoint_dir = store.root / "checkpoints" / spec.name / f"trial-{trial.number}-{run_id}"
        try:
            checkpoint_dir.mkdir(parents=True, exist_ok=False)
            result = fit(
                model,
                data,
                spec.trainer,
                checkpoint_dir,
                monitor=spec.study.metric,
                mode=_mode(spec),
                # Optuna cannot prune a trial with several objectives.
                callbacks=[PyTorchLightningPruningCallback(trial, monitor=spec.study.metric)]
                if not spec.study.extra_objectives
                else [],
                on_epoch=lambda epoch, metrics: _log_epoch(store, run_id, model, epoch, metrics),
            )
        except optuna.TrialPruned:
            tracking.end_run(store, run_id, "KILLED", f"pruned by {self.spec.study.pruner}")
            raise
        except KeyboardInterrupt:
            tracking.end_run(store, run_id, "KILLED", "interrupted (Ctrl-C)")
            raise
        except BaseException as exc:
            tracking.end_run(store, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
            raise
        fit_s = time.perf_counter() - started
        try:
            tracking.log_metrics(
                store,
                run_id,
                {
                    **result.test_metrics,
                    "time/fit_s": fit_s,
                    "epochs": result.epochs,
                    "params/count": sum(p.numel() for p in model.parameters()),
                },
                step=result.epochs,
            )
            tracking.log_figure(
                store, run_id, plots.learning_curves(result.history), "plots/learning_curves.png"
            )
            if result.confusion is not None:
                tracking.log_figure(
                    store,
                    run_id,
                    plots.confusion_matrix(result.confusion),
                    "plots/confusion_matrix.png",
                )
            example = example_inputs(model, data, 2)
            model_uri = tracking.log_model(store, run_id, model.net, example.cpu().numpy())
        except BaseException as exc:
            tracking.end_run(
                store, run_id, "FAILED", f"logging failed: {type(exc).__name__}: {exc}"
            )
            raise
        trial.set_user_attr("checkpoint", result.checkpoint)
        trial.set_user_attr("model_uri", model_uri)
        trial.set_user_attr("test_metrics", result.test_metrics)
        tracking.end_run(store, run_id, "FINISHED")
        if spec.study.extra_objectives:
            extra = objective_values(model.net, data, spec.study.extra_objectives)
            trial.set_user_attr("objectives", extra)
            return (result.best_score, *extra.values())
        return result.best_score  # Optuna's gc_after_trial frees the model afterwards


def _repeats(trial: optuna.Trial) -> int | None:
    """The number of a finished trial with the same parameters, unless this trial's parameters
    were given on purpose (a retry of a failed trial, an enqueued configuration)."""
    system = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    if "fixed_params" in system or "failed_trial" in system:
        return None
    for other in trial.study.get_trials(deepcopy=False, states=FINISHED_STATES):
        if other.number != trial.number and other.params == trial.params:
            return other.number
    return None


def _log_epoch(store, run_id: str, model, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch's metrics, and the figures the model draws (samples, reconstructions) if any."""
    tracking.log_metrics(store, run_id, metrics, epoch)
    if hasattr(model, "epoch_figures"):
        for name, figure in model.epoch_figures().items():
            tracking.log_figure(store, run_id, figure, f"plots/{name}/epoch_{epoch:03d}.png")


EXTRA_OBJECTIVES = ("params/count", "latency/batch1_ms")


def objective_values(network, data, names) -> dict[str, float]:
    """Secondary objectives of a multi-objective study, measured on the trained network."""
    from workbench.compress.report import latency_ms

    values = {}
    for name in names:
        if name == "params/count":
            values[name] = float(sum(p.numel() for p in network.parameters()))
        elif name == "latency/batch1_ms":
            example = data.split("test")[0][:1]
            values[name] = latency_ms(network.cpu().eval(), example, repeats=20)
    return values


def _mode(spec: ExperimentSpec) -> str:
    return "max" if spec.study.direction == "maximize" else "min"


def _with_dotted_params(spec: ExperimentSpec, dotted: dict[str, Any]) -> ExperimentSpec:
    if not dotted:
        return spec
    raw = spec.to_dict()
    for key, value in dotted.items():
        apply_override(raw, f"{key}={value}")
    return load_spec(raw)


def _data_for_trial(data, base: ExperimentSpec, spec: ExperimentSpec):
    """Share the loaded data between trials; a searched batch size needs no reload."""
    from workbench.train import build_datamodule

    if spec.data == base.data:
        return data
    if dataclasses.replace(spec.data, batch_size=base.data.batch_size) == base.data:
        shared = copy.copy(data)  # same tensors, other batch size
        shared.batch_size = spec.data.batch_size
        return shared
    return build_datamodule(spec)


def _run_tags(
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


def _create_study_run(store: tracking.Store, spec: ExperimentSpec, data, uid: str) -> str:
    """The study's parent run, tagged with the id the Optuna study records too."""
    tags = {**_run_tags(spec, data, "study"), recovery.STUDY_UID: uid}
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
