"""Samplers, pruners and study summaries; bad search settings fail before any trial."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from workbench.spec import SpecError
from workbench.study import run_study

SPEC = EXPERIMENTS / "mnist_cnn.yaml"


def test_grid_over_a_continuous_range_fails_before_any_work(tmp_path: Path):
    root = tmp_path / "mlruns"
    with pytest.raises(SpecError, match="search_space.dropout: the grid sampler needs a step"):
        run_study(SPEC, trials=1, overrides=tiny(root, **{"study.sampler": "grid"}))
    assert not root.exists(), "nothing may be written before the error"


def test_unreachable_database_is_named_before_any_run(tmp_path: Path):
    root = tmp_path / "mlruns"
    url = "postgresql+psycopg2://nobody:secret@127.0.0.1:9/optuna"  # port 9: nothing listens
    with pytest.raises(ConnectionError) as error:
        run_study(SPEC, trials=1, overrides=tiny(root, **{"tracking.optuna_storage": url}))
    assert "tracking.optuna_storage" in str(error.value) and "secret" not in str(error.value)
    assert not (root / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("study.sampler=annealing", "study.sampler"),
        ("study.pruner=sometimes", "study.pruner"),
        ("study.pruner_options={bogus: 1}", "study.pruner_options"),
        ("study.extra_objectives={params/count: minimize}", "study.pruner"),
    ],
)
def test_bad_search_settings_are_named(tmp_path: Path, override: str, field: str):
    with pytest.raises(SpecError, match=field):
        run_study(SPEC, trials=1, overrides=[*tiny(tmp_path / "mlruns"), override])


def test_grid_sampler_visits_exactly_the_grid(tmp_path: Path):
    overrides = tiny(
        tmp_path / "mlruns",
        **{
            "study.sampler": "grid",
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "search_space": "{width: {type: categorical, choices: [8, 16]}, "
            "lr: {type: float, low: 0.001, high: 0.002, step: 0.001}}",
            "explain.enabled": False,
        },
    )
    result = run_study(SPEC, trials=4, overrides=overrides)
    visited = {(t.params["width"], round(t.params["lr"], 6)) for t in result.load_study().trials}
    assert visited == {(8, 0.001), (8, 0.002), (16, 0.001), (16, 0.002)}


@pytest.mark.slow
def test_multi_objective_study_draws_its_pareto_front(tmp_path: Path):
    overrides = tiny(
        tmp_path / "mlruns",
        **{
            "study.sampler": "nsga2",
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "study.extra_objectives": "{params/count: minimize}",
            # Three widths, three random draws: repeats are likely and this test wants 3 trials.
            "study.allow_repeats": True,
            "search_space": "{width: {type: categorical, choices: [4, 8, 16]}}",
            "explain.enabled": False,
        },
    )
    result = run_study(SPEC, trials=3, overrides=overrides)
    study = result.load_study()
    assert all(len(t.values) == 2 for t in study.trials)
    assert result.pareto_trials and result.best_trial in result.pareto_trials
    # Parameter counts grow with width: a narrower net can be on the front only with its count.
    counts = {t.params["width"]: t.values[1] for t in study.trials}
    assert sorted(counts.values()) == [counts[w] for w in sorted(counts)]
    client = MlflowClient(result.tracking_uri)
    plots = {f.path for f in client.list_artifacts(result.parent_run_id, "plots")}
    assert "plots/pareto_front.png" in plots


def test_single_objective_summary_holds_optunas_plots_and_the_champion(tmp_path: Path):
    overrides = tiny(
        tmp_path / "mlruns",
        **{
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "explain.enabled": False,
            "data.max_samples": 200,
        },
    )
    result = run_study(SPEC, trials=3, overrides=overrides)
    client = MlflowClient(result.tracking_uri)
    plots = {f.path for f in client.list_artifacts(result.parent_run_id, "plots")}
    assert {
        "plots/optimization_history.png",
        "plots/param_importances.png",
        "plots/parallel_coordinate.png",
        "plots/slice.png",
    } <= plots
    version = client.get_model_version_by_alias(result.registered_model, "champion")
    assert version.run_id == result.best_run_id
    assert client.get_run(result.parent_run_id).data.metrics["trials/complete"] == 3


def _trial_params(overrides: list[str], number: int = 0, study=None) -> dict:
    """The parameters the spec's sampler draws for trial ``number`` of a study."""
    import optuna

    from workbench.spec import load_spec
    from workbench.study.config import make_sampler, sample_params

    spec = load_spec(SPEC, overrides)
    if study is None:
        study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    while True:
        trial = study.ask()
        params = sample_params(spec.search_space, trial)
        if trial.number == number:
            return params
        study.tell(trial, 0.5)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_sampler_seed_option_and_per_trial_seeds(sampler: str):
    base = [f"study.sampler={sampler}"]
    assert _trial_params(base) == _trial_params([*base, "seed=42"])  # the spec seed by default
    seeded = [*base, "study.sampler_options={seed: 7}"]
    assert _trial_params(seeded) == _trial_params(seeded)
    assert _trial_params(seeded) != _trial_params(base)
    # Each trial is drawn with seed + its number: trial 1 differs from trial 0, and is the same
    # whichever process (a fresh sampler, as after a resume) draws it.
    assert _trial_params(seeded, 1) != _trial_params(seeded, 0)
    assert _trial_params(seeded, 1) == _trial_params(seeded, 1)
    with pytest.raises(SpecError, match="study.sampler_options.seed: must be an integer"):
        _trial_params([*base, "study.sampler_options={seed: abc}"])
