"""Optuna, and only Optuna: a study defined by the spec, one MLflow child run per trial.

Run statuses come from the Optuna trial state, never from exceptions in a logger: a completed trial
ends FINISHED, a pruned or interrupted one KILLED, a failed one FAILED with its reason. Re-running
the same study name resumes it and repairs runs a killed process left RUNNING.
"""

from __future__ import annotations

import copy
import dataclasses
import sqlite3
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from tqdm.auto import tqdm

from workbench import tracking
from workbench.spec import ExperimentSpec, ParamSpec, SpecError, apply_override, load_spec

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
MLFLOW_STATUS = {
    optuna.trial.TrialState.COMPLETE: "FINISHED",
    optuna.trial.TrialState.PRUNED: "KILLED",
    optuna.trial.TrialState.FAIL: "FAILED",
}


@dataclass
class StudyResult:
    """The outcome of ``run_study``: where everything is, and the best trial's figures."""

    study_name: str
    storage_url: str
    tracking_uri: str
    parent_run_id: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_run_id: str | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None
    registered_model: str | None = None
    registered_version: int | None = None

    def load_study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=self.storage_url)


# --- samplers, pruners, storage ---------------------------------------------------------------
def make_sampler(spec: ExperimentSpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler; a wrong name or option names the field."""
    options = dict(spec.study.sampler_options)
    name = spec.study.sampler
    factories = {
        # constant_liar is set explicitly: Optuna 5 turned it on by default, 4.x had it off. On, it
        # keeps parallel workers from proposing the same point while trials are running.
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=spec.seed, **{"constant_liar": True, "multivariate": True, **options}
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=spec.seed, **options),
    }
    if name not in factories:
        raise SpecError(f"study.sampler: unknown sampler {name!r}; valid: {', '.join(factories)}")
    try:
        return factories[name]()
    except TypeError as exc:
        raise SpecError(f"study.sampler_options: {exc}") from exc


def make_pruner(spec: ExperimentSpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; a wrong name or option names the field."""
    options = dict(spec.study.pruner_options)
    epochs = spec.trainer.max_epochs
    factories = {
        "median": lambda: optuna.pruners.MedianPruner(
            **{"n_startup_trials": 2, "n_warmup_steps": 1, **options}
        ),
        "percentile": lambda: optuna.pruners.PercentilePruner(**{"percentile": 25.0, **options}),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**options),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            **{"min_resource": 1, "max_resource": epochs, **options}
        ),
        "threshold": lambda: optuna.pruners.ThresholdPruner(**options),
        "none": lambda: optuna.pruners.NopPruner(**options),
    }
    name = spec.study.pruner
    if name not in factories:
        raise SpecError(f"study.pruner: unknown pruner {name!r}; valid: {', '.join(factories)}")
    try:
        return factories[name]()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"study.pruner_options: {exc}") from exc


def storage_url(spec: ExperimentSpec) -> str:
    root = Path(spec.tracking.root).resolve()
    return spec.tracking.optuna_storage or f"sqlite:///{root / 'optuna.db'}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats, so a worker killed mid-trial is failed on the next start."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers (optuna-dashboard, other workers) in while a trial writes; it persists
        # in the file. A generous busy timeout rides out short write locks.
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        engine_kwargs = {"connect_args": {"timeout": 60}}
    return optuna.storages.RDBStorage(
        url, engine_kwargs=engine_kwargs, heartbeat_interval=15, grace_period=60
    )


def sample_params(space: dict[str, ParamSpec], trial: optuna.Trial) -> dict[str, Any]:
    """Draw one value per searched hyperparameter."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.type == "categorical":
            values[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            values[key] = trial.suggest_int(
                key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            values[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return values


# --- the study ----------------------------------------------------------------------------------
def run_study(
    spec: ExperimentSpec | str | Path,
    trials: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> StudyResult:
    """Run (or resume) the spec's study until ``trials`` trials have finished; return the best."""
    if not isinstance(spec, ExperimentSpec):
        spec = load_spec(spec, overrides)
    elif overrides:
        raise ValueError("pass overrides with a spec path, or apply them with load_spec")
    if trials is not None:
        if trials < 1:
            raise SpecError(f"study.trials: must be >= 1, got {trials}")
        spec = dataclasses.replace(spec, study=dataclasses.replace(spec.study, trials=trials))
    sampler, pruner = make_sampler(spec), make_pruner(spec)  # bad names fail before any work

    from workbench.train import build_datamodule

    data = build_datamodule(spec)
    data.setup()  # a missing or broken data file fails here, before any run is opened

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(spec)
    study = optuna.create_study(
        study_name=spec.name,
        storage=open_storage(url),
        sampler=sampler,
        pruner=pruner,
        direction=spec.study.direction,
        load_if_exists=True,
    )
    store = tracking.open_store(
        spec.tracking.root, spec.tracking.experiment, spec.tracking.mlflow_uri
    )
    parent = _open_study_run(store, spec, data)
    optuna.storages.fail_stale_trials(study)
    _repair_orphan_runs(store, study, parent)

    done = sum(t.state in FINISHED_STATES for t in study.get_trials(deepcopy=False))
    remaining = spec.study.trials - done
    print(f"study {spec.name!r}: {done} trials finished, running {max(remaining, 0)} more")
    try:
        if remaining > 0:
            study.optimize(
                _Objective(spec, data, store, parent),
                n_trials=remaining,
                catch=(
                    FloatingPointError,
                ),  # a diverged trial is recorded FAILED; the study goes on
                gc_after_trial=True,
                callbacks=[_report_trial],
                show_progress_bar=spec.study.progress_bar,
            )
    except KeyboardInterrupt:
        tracking.end_run(store, parent, "KILLED", "interrupted; re-run the same command to resume")
        print(f"\nstudy {spec.name!r} interrupted: finished trials are kept; re-run to resume")
        raise
    result = _finish_study(spec, study, store, parent, data)
    tracking.end_run(store, parent, "FINISHED")
    return result


def _report_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = f"{trial.value:.4f}" if trial.value is not None else "-"
    best = (
        f"{study.best_value:.4f}"
        if any(
            t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)
        )
        else "-"
    )
    tqdm.write(
        f"trial {trial.number:3d} {trial.state.name:8s} value={value} best={best}  "
        + " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
    )


class _Objective:
    """One trial: sample, build, fit inside an MLflow child run, close it with the right status."""

    def __init__(self, spec: ExperimentSpec, data, store: tracking.Store, parent: str) -> None:
        self.spec, self.data, self.store, self.parent = spec, data, store, parent

    def __call__(self, trial: optuna.Trial) -> float:
        import lightning.pytorch as pl
        from optuna_integration import PyTorchLightningPruningCallback

        from workbench import plots
        from workbench.train import build_model, fit

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
        checkpoint_dir = store.root / "checkpoints" / spec.name / f"trial-{trial.number}"
        try:
            result = fit(
                model,
                data,
                spec.trainer,
                checkpoint_dir,
                monitor=spec.study.metric,
                mode=_mode(spec),
                callbacks=[PyTorchLightningPruningCallback(trial, monitor=spec.study.metric)],
                on_epoch=lambda epoch, metrics: tracking.log_metrics(store, run_id, metrics, epoch),
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
            example = data.split("test")[0][:2].numpy()
            model_uri = tracking.log_model(store, run_id, model.net, example)
        except BaseException as exc:
            tracking.end_run(
                store, run_id, "FAILED", f"logging failed: {type(exc).__name__}: {exc}"
            )
            raise
        trial.set_user_attr("checkpoint", result.checkpoint)
        trial.set_user_attr("model_uri", model_uri)
        trial.set_user_attr("test_metrics", result.test_metrics)
        tracking.end_run(store, run_id, "FINISHED")
        return result.best_score  # Optuna's gc_after_trial frees the model afterwards


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


def _open_study_run(store: tracking.Store, spec: ExperimentSpec, data) -> str:
    """The study's parent run: found by its tags when resuming, created otherwise."""
    parent = tracking.find_study_run(store, spec.name)
    if parent is None:
        parent = tracking.start_run(store, spec.name, _run_tags(spec, data, "study"))
        tracking.log_json(store, parent, spec.to_dict(), "spec.json")
        tracking.log_params(store, parent, _flatten(spec.to_dict(), skip=("search_space",)))
    else:
        tracking.reopen_run(store, parent)
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


def _repair_orphan_runs(store: tracking.Store, study: optuna.Study, parent: str) -> int:
    """Close child runs a dead process left RUNNING, with the status their trial ended in."""
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    repaired = 0
    for run in tracking.child_runs(store, parent):
        if run.info.status != "RUNNING":
            continue
        number = int(run.data.tags.get(tracking.TRIAL, -1))
        state = states.get(number)
        if state == optuna.trial.TrialState.RUNNING:
            continue  # another live worker owns it
        status = MLFLOW_STATUS.get(state, "FAILED")
        tracking.end_run(store, run.info.run_id, status, f"closed on resume: trial state {state}")
        repaired += 1
    return repaired


def _finish_study(
    spec, study: optuna.Study, store: tracking.Store, parent: str, data
) -> StudyResult:
    """Register the best model, log the study summary to the parent run, explain the best model."""
    from workbench import plots

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    result = StudyResult(
        study_name=spec.name,
        storage_url=storage_url(spec),
        tracking_uri=store.tracking_uri,
        parent_run_id=parent,
        n_complete=count[optuna.trial.TrialState.COMPLETE],
        n_pruned=count[optuna.trial.TrialState.PRUNED],
        n_failed=count[optuna.trial.TrialState.FAIL],
    )
    tracking.log_metrics(
        store,
        parent,
        {
            "trials/complete": result.n_complete,
            "trials/pruned": result.n_pruned,
            "trials/failed": result.n_failed,
        },
    )
    if result.n_complete == 0:
        return result
    best = study.best_trial
    result.best_trial, result.best_value, result.best_params = best.number, best.value, best.params
    result.best_run_id = best.user_attrs["mlflow_run_id"]
    result.model_uri = best.user_attrs["model_uri"]
    result.test_metrics = dict(best.user_attrs.get("test_metrics", {}))
    result.registered_model = spec.tracking.register_as or spec.name
    result.registered_version = tracking.register_model(
        store, result.model_uri, result.registered_model, result.best_run_id
    )
    tracking.set_tags(store, parent, {"best_trial": best.number, "best_run_id": result.best_run_id})
    tracking.log_metrics(
        store,
        parent,
        {
            f"best/{spec.study.metric.replace('/', '_')}": best.value,
            **{f"best/{k.replace('/', '_')}": v for k, v in result.test_metrics.items()},
        },
    )
    tracking.log_figure(
        store, parent, plots.optimization_history(study), "plots/optimization_history.png"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(path, index=False)
        tracking.log_file(store, parent, path)
    if spec.explain.enabled:
        from workbench.explain import explain_best

        explain_best(spec, best, store, data)
    return result
