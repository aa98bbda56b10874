"""After a study: register the best model, log Optuna's plots and a CSV of trials to the parent
run, and explain the best model."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from workbench import tracking
from workbench.spec import ExperimentSpec
from workbench.study.config import storage_url
from workbench.study.objective import log_champion


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
    pareto_trials: list[int] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    """Why trials failed: each reason (from the trial's run) and how many trials it ended."""
    confirmed: list[dict[str, Any]] = field(default_factory=list)
    """With ``study.confirm``: each confirmed configuration (search trial, params, validation and
    test metrics as ``<metric>_mean`` and ``<metric>_ci``), best confirmed mean first; the
    champion (``best_trial``) is the first."""
    optimism: float | None = None
    """The search's best single validation score minus that configuration's confirmed mean."""
    report: str | None = None
    """The study's HTML report (``tracking.report``)."""

    def load_study(self) -> optuna.Study:
        return optuna.load_study(study_name=self.study_name, storage=self.storage_url)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The champion: the configuration with the best confirmed mean when the study confirmed its
    best configurations over seeds; else the best trial (for several objectives, the Pareto
    trial best on the first objective)."""
    from workbench.study.confirm import CHAMPION

    champion = study.user_attrs.get(CHAMPION)
    if champion is not None:
        return study.trials[champion]
    return searched_best(study)


def searched_best(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The trial with the best single score of the search."""
    if len(study.directions) == 1:
        return study.best_trial
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    front = study.best_trials
    return (max if maximize else min)(front, key=lambda t: t.values[0])


def load_best_trial(spec: ExperimentSpec) -> optuna.trial.FrozenTrial:
    """The best completed trial of the spec's study (for compression and export)."""
    study = optuna.load_study(study_name=spec.name, storage=storage_url(spec))
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise LookupError(f"study {spec.name!r} has no completed trial")
    return best_trial(study)


def study_of_run(name: str, tags: dict[str, str]) -> str:
    """The Optuna study that holds the trial of a run of study ``name``: the search's, or its
    confirmation's or a reproduction's (by the run's role)."""
    from workbench.study import confirm, reproduce

    role = tags.get(tracking.ROLE)
    if role == "confirm":
        return confirm.study_name(name)
    if role == "reproduce":
        return reproduce.study_name(name, tags[reproduce.REPRODUCES])
    return name


def load_trial(spec: ExperimentSpec, study_name: str, number: int) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of study ``study_name`` in the spec's Optuna storage."""
    study = optuna.load_study(study_name=study_name, storage=storage_url(spec))
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise LookupError(f"study {study_name!r} has no trial {number}")
    return trials[number]


def study_cost(study: optuna.Study) -> dict[str, float]:
    """What a study spent and found: trials by state, epochs trained, wall time, best value."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.datetime_complete is not None and t.datetime_start]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = searched_best(study) if complete else None
    return {
        "trials": len(trials),
        "complete": len(complete),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "epochs": sum(len(t.intermediate_values) for t in trials),
        "trial_seconds": sum(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in finished
        ),
        "best_value": best.values[0] if best is not None else float("nan"),
    }


def finish_study(
    spec, study: optuna.Study, store: tracking.Store, parent: str, data, confirmation=None
) -> StudyResult:
    """Register the champion, log the study summary to the parent run, explain the champion."""
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
    _log_trials_csv(study, store, parent)
    result.failures = failure_reasons(study, store)
    if result.n_complete == 0:
        return result
    best = best_trial(study)
    result.best_trial, result.best_value, result.best_params = (
        best.number,
        best.values[0],
        best.params,
    )
    result.best_run_id = best.user_attrs["mlflow_run_id"]
    result.model_uri = log_champion(spec, best, store, data)
    result.test_metrics = dict(best.user_attrs.get("test_metrics", {}))
    if confirmation is not None:
        result.confirmed = [c.summary(spec.study.metric) for c in confirmation.configs]
        result.optimism = confirmation.optimism
    if len(study.directions) > 1:
        result.pareto_trials = sorted(t.number for t in study.best_trials)
        for trial in study.best_trials:  # every model on the front, as the champion
            log_champion(spec, trial, store, data)
    if result.model_uri is not None:  # None: the champion's checkpoint is on another machine
        result.registered_model = spec.tracking.register_as or spec.name
        result.registered_version = tracking.register_version(
            store, result.model_uri, result.registered_model, result.best_run_id
        )
    tracking.set_tags(store, parent, {"best_trial": best.number, "best_run_id": result.best_run_id})
    tracking.log_metrics(
        store,
        parent,
        {
            f"best/{spec.study.metric.replace('/', '_')}": result.best_value,
            **{f"best/{k.replace('/', '_')}": v for k, v in result.test_metrics.items()},
        },
    )
    for name, figure in study_figures(study, spec).items():
        tracking.log_figure(store, parent, figure, f"plots/{name}.png")
    if spec.explain.enabled and result.model_uri is None:
        print("explanations: the champion's checkpoint is on another machine, which explains it")
    elif spec.explain.enabled:
        from workbench.trained_model import from_trial

        settings = spec.explain
        from_trial(spec, best, store, data).explain(
            n=settings.n_images, background=settings.background,
            shap_samples=settings.shap_samples, lime_samples=settings.lime_samples,
            seed=spec.seed,
        )  # fmt: skip
    return result


def failure_reasons(study: optuna.Study, store: tracking.Store) -> dict[str, int]:
    """How many failed trials each reason ended (the run's end reason; Optuna 5 keeps none)."""
    from collections import Counter

    reasons: Counter[str] = Counter()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        reason = trial.system_attrs.get("fail_reason")
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is not None:
            reason = tracking.run_tags(store, run_id).get("workbench.end_reason", reason)
        reasons[str(reason or "no reason recorded (the process ended during the trial?)")] += 1
    return dict(reasons)


def optimization_history(study: optuna.Study):
    """Optuna's own optimisation-history plot (objective per trial, best so far)."""
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        ax = plot_optimization_history(study)
    plt.close(ax.figure)  # detach from pyplot; the figure stays usable for saving and display
    return ax.figure


def study_figures(study: optuna.Study, spec: ExperimentSpec) -> dict:
    """Optuna's own plots of the study, each as a figure detached from pyplot."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    names = [f"{spec.study.metric}"] + list(spec.study.extra_objectives)
    single = len(study.directions) == 1
    target = None if single else (lambda t: t.values[0])
    plotters = {
        "parallel_coordinate": lambda: optuna_plots.plot_parallel_coordinate(
            study, target=target, target_name=names[0]
        ),
        "slice": lambda: optuna_plots.plot_slice(study, target=target, target_name=names[0]),
    }
    if single:
        plotters["optimization_history"] = lambda: optuna_plots.plot_optimization_history(study)
    else:
        plotters["pareto_front"] = lambda: optuna_plots.plot_pareto_front(study, target_names=names)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) >= 2 and study.trials[0].params:
        plotters["param_importances"] = lambda: optuna_plots.plot_param_importances(
            study, target=target, target_name=names[0]
        )
    figures = {}
    for name, plot in plotters.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                drawn = plot()
            except (ValueError, RuntimeError):  # e.g. importances of a parameter with one value
                continue
        axes = drawn if hasattr(drawn, "figure") else drawn.flat[0]
        figure = axes.figure
        plt.close(figure)  # detach from pyplot; the figure stays usable for saving and display
        figures[name] = figure
    return figures


def _log_trials_csv(study: optuna.Study, store: tracking.Store, parent: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        study.trials_dataframe().to_csv(path, index=False)
        tracking.log_file(store, parent, path)
