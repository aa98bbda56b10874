"""Confirmation over seeds (``study.confirm``): the top configurations trained again with fresh
seeds, the champion chosen on the confirmed mean validation score, the search's optimism, the
table and figure in the parent run, and a confirmation killed mid-run resumed without counting
anything twice."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from tests.test_faults import DRIVER
from workbench.cli import main
from workbench.results import markdown, results, verdict
from workbench.spec import SpecError, load_spec
from workbench.study import run_study
from workbench.study.confirm import CONFIG, SEED, study_name

SPEC = EXPERIMENTS / "mnist_cnn.yaml"
BAD, GOOD = 1e-6, 3e-3  # a learning rate that learns nothing in 3 epochs, and one that does
SPACE = "{lr: {type: categorical, choices: [0.000001, 0.003]}}"


def _overrides(root: Path, **extra) -> list[str]:
    return tiny(
        root,
        **{
            "explain.enabled": False,
            "data.max_samples": 600,
            "data.augment": False,
            "trainer.max_epochs": 3,
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "search_space": SPACE,
            **extra,
        },
    )


def _confirm_runs(client: MlflowClient, parent: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.mlflow.parentRunId = '{parent}'")
    return [r for r in runs if r.data.tags.get("workbench.role") == "confirm"]


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("study.confirm.seeds=1", r"study\.confirm\.seeds"),
        ("study.confirm.top_k=-1", r"study\.confirm\.top_k"),
        ("study.target={metric: test/acc}", r"study\.target"),
        ("study.target={at_least: 0.9}", r"study\.target\.at_least"),
    ],
)
def test_bad_confirm_settings_name_the_field(setting: str, field: str):
    with pytest.raises(SpecError, match=field):
        load_spec(SPEC, [setting])


def test_a_lucky_single_trial_loses_the_champion_to_the_steadier_configuration(tmp_path: Path):
    """A constructed study: trial 0 trained for real with the good learning rate; trial 1 holds
    the learning rate that learns nothing with a lucky recorded score of 0.99, the best of the
    search. Confirming both over two fresh seeds, in two worker processes, gives the alias to
    trial 0's configuration."""
    root = tmp_path / "mlruns"
    spec = load_spec(SPEC, _overrides(root))
    storage = f"sqlite:///{root}/optuna.db"
    root.mkdir()
    optuna.create_study(study_name=spec.name, storage=storage, direction="maximize").enqueue_trial(
        {"lr": GOOD}
    )
    searched = run_study(spec, trials=1)
    assert searched.best_trial == 0 and searched.confirmed == []  # confirmation is off

    study = optuna.load_study(study_name=spec.name, storage=storage)
    lucky = optuna.trial.create_trial(
        params={"lr": BAD},
        distributions={"lr": optuna.distributions.CategoricalDistribution([BAD, GOOD])},
        value=0.99,
    )
    study.add_trial(lucky)
    confirmed = load_spec(SPEC, _overrides(root, **{"study.confirm": "{top_k: 2, seeds: 2}"}))
    result = run_study(confirmed, trials=2, workers=2)  # confirmations shared by two processes

    assert result.best_trial == 0  # not trial 1, the best single score
    assert [row["trial"] for row in result.confirmed] == [0, 1]
    good, bad = result.confirmed
    assert good["n"] == bad["n"] == 2
    assert good["val/acc_mean"] > bad["val/acc_mean"] + 0.2
    assert bad["val/acc_mean"] < 0.5 and bad["search_value"] == 0.99
    assert result.optimism == pytest.approx(0.99 - bad["val/acc_mean"])
    assert 0 <= good["test/acc_ci"] and 0 < good["test/acc_mean"] <= 1

    client = MlflowClient(result.tracking_uri)
    champion = client.get_model_version_by_alias("mnist_cnn", "champion")
    assert champion.run_id == study.trials[0].user_attrs["mlflow_run_id"]
    runs = _confirm_runs(client, result.parent_run_id)
    assert sorted((r.data.tags[CONFIG], r.data.tags[SEED]) for r in runs) == [
        ("0", "43"), ("0", "44"), ("1", "43"), ("1", "44")
    ]  # fmt: skip
    assert all(r.info.status == "FINISHED" for r in runs)
    search_run = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    for run in runs:  # fresh seeds on the search's split
        assert run.data.tags["seed"] == run.data.tags[SEED]
        assert run.data.tags["data.fingerprint"] == search_run.data.tags["data.fingerprint"]
        assert float(run.data.params["lr"]) == (GOOD if run.data.tags[CONFIG] == "0" else BAD)
    good_runs = [r for r in runs if r.data.tags[CONFIG] == "0"]
    mean = sum(r.data.metrics["test/acc"] for r in good_runs) / 2
    assert good["test/acc_mean"] == pytest.approx(mean)

    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["confirm/optimism"] == pytest.approx(result.optimism)
    assert parent.data.metrics["confirm/val_acc_mean"] == pytest.approx(good["val/acc_mean"])
    logged = {a.path for a in client.list_artifacts(result.parent_run_id, "confirm")}
    assert {"confirm/confirmation.csv", "confirm/confirmation.png"} <= logged
    table = client.download_artifacts(result.parent_run_id, "confirm/confirmation.csv")
    rows = list(csv.DictReader(io.StringIO(Path(table).read_text())))
    assert len(rows) == 4 and {r["run_id"] for r in rows} == {r.info.run_id for r in runs}

    again = run_study(confirmed, trials=2)  # a rerun trains nothing and counts nothing twice
    assert again.confirmed == result.confirmed and again.best_trial == 0
    assert len(_confirm_runs(client, result.parent_run_id)) == 4

    # The results table reads the champion's confirmed interval from the store.
    (row,) = results(root)
    assert (row.study, row.metric, row.seeds) == ("mnist_cnn", "test/acc", 2)
    assert row.mean == pytest.approx(good["test/acc_mean"])
    assert row.half_width == pytest.approx(good["test/acc_ci"])
    assert f"**{row.mean:.4f} ± {row.half_width:.4f}** (2 seeds)" in markdown([row])
    assert row.verdict == "no target"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["results", "--root", str(root)]) == 0
    assert printed.getvalue().strip() == markdown([row])


def test_the_confirmation_runs_on_the_search_workers_without_spawning_them_again(
    tmp_path: Path, monkeypatch
):
    """A 2-worker study starts its helper once: the search's helper, its imports done, stays for
    the confirmation (spawning another cost about 13 s of a 2-worker study), and exits at the
    end."""
    import multiprocessing
    import multiprocessing.context

    from workbench.study.liveness import WORKER

    spawned = []
    start = multiprocessing.context.SpawnProcess.start

    def counted(process):
        start(process)
        spawned.append((process.name, process.pid))

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", counted)
    root = tmp_path / "mlruns"
    spec = load_spec(SPEC, _overrides(root, **{"study.confirm": "{top_k: 1, seeds: 3}"}))
    result = run_study(spec, trials=3, workers=2)

    assert [name for name, _ in spawned] == ["workbench-worker-1"]
    assert multiprocessing.active_children() == []  # the helper has exited
    assert result.confirmed[0]["n"] == 3
    storage = f"sqlite:///{root}/optuna.db"
    searched = optuna.load_study(study_name=spec.name, storage=storage).trials
    confirmed = optuna.load_study(study_name=study_name(spec.name), storage=storage).trials
    assert len(searched) == 3  # the third repeats one of the space's two values: pruned
    assert [t.state.name for t in confirmed] == ["COMPLETE"] * 3
    processes = {os.getpid(), spawned[0][1]}  # this one and the helper: for every trial
    assert {t.user_attrs[WORKER]["pid"] for t in searched + confirmed} <= processes


@pytest.mark.parametrize(
    ("mean", "half", "seeds", "bound", "expected"),
    [
        (0.97, 0.01, 3, {"at_least": 0.95}, "meets"),  # [0.96, 0.98] ≥ 0.95
        (0.96, 0.02, 3, {"at_least": 0.95}, "inconclusive"),  # [0.94, 0.98] spans it
        (0.93, 0.01, 3, {"at_least": 0.95}, "below target"),  # [0.92, 0.94] < 0.95
        (0.004, 0.001, 5, {"at_most": 0.01}, "meets"),  # an error bound: [0.003, 0.005]
        (0.02, 0.005, 5, {"at_most": 0.01}, "below target"),  # [0.015, 0.025] > 0.01
        (0.99, 0.0, 1, {"at_least": 0.95}, "single run: not confirmed"),
        (0.99, 0.0, 3, {}, "no target"),
    ],
)
def test_the_verdict_is_where_the_interval_lies(mean, half, seeds, bound, expected):
    assert verdict(mean, half, seeds, **bound) == expected


@pytest.mark.slow
def test_a_confirmation_killed_mid_run_resumes_and_counts_each_seed_once(tmp_path: Path):
    root = tmp_path / "mlruns"
    overrides = _overrides(root, **{"study.confirm": "{top_k: 1, seeds: 2}", "search_space": "{}"})
    sets = [a for item in overrides for a in ("--set", item)]
    # Killed (SIGKILL) once the second trained model's results are logged: the first
    # confirmation's, before its run is closed or its trial finished.
    target, nth = "workbench.study.objective._log_result", "2"
    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, target, nth, "after", "study", str(SPEC), "--trials", "1",
         *sets],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    result = run_study(SPEC, trials=1, overrides=overrides)
    (row,) = result.confirmed
    assert row["trial"] == 0 and row["n"] == 2
    confirm_study = optuna.load_study(
        study_name=study_name("mnist_cnn"), storage=f"sqlite:///{root}/optuna.db"
    )
    states = sorted(t.state.name for t in confirm_study.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # the killed one, retried once
    client = MlflowClient(result.tracking_uri)
    runs = _confirm_runs(client, result.parent_run_id)
    statuses = sorted((r.data.tags[SEED], r.info.status) for r in runs)
    assert statuses == [("43", "FAILED"), ("43", "FINISHED"), ("44", "FINISHED")]
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


def test_the_report_spec_hides_database_passwords():
    from workbench.study.report import _spec_yaml

    url = "postgresql://user:s3cret@127.0.0.1:5432/optuna"
    text = _spec_yaml(load_spec(SPEC, [f"tracking.optuna_storage={url}"]))
    assert "s3cret" not in text and "postgresql://user:***@127.0.0.1:5432/optuna" in text
