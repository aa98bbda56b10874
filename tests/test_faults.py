"""Fault injection: a study killed (SIGKILL) at points drawn at random, then rerun at once.

After the rerun, checked through Optuna's and MLflow's own clients: every trial is COMPLETE,
PRUNED, or FAILED with a retry; each trial has exactly one MLflow run whose status matches its
state; no run is RUNNING; no checkpoint was overwritten; ``@champion`` points at the trial the
study chose; another study in the same store is untouched.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from workbench import tracking
from workbench.study import run_study
from workbench.study.recovery import PARENT_RUN
from workbench.study.summary import best_trial

SPEC = EXPERIMENTS / "mnist_cnn.yaml"
TrialState = optuna.trial.TrialState

# Kill this process (SIGKILL: no handler, no cleanup) at the n-th call of a function, before or
# after the call runs; then run the `workbench` command given after the first three arguments.
DRIVER = textwrap.dedent(
    """
    import importlib, os, signal, sys
    target, nth, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    module_name, _, attribute = target.rpartition(".")
    try:
        owner = importlib.import_module(module_name)
    except ModuleNotFoundError:  # a method: module.Class.method
        module_name, _, cls = module_name.rpartition(".")
        owner = getattr(importlib.import_module(module_name), cls)
    original, calls = getattr(owner, attribute), [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, attribute, dying)
    from workbench.cli import main
    sys.exit(main(sys.argv[4:]))
    """
)

# (phase, function, when, how many calls a 3-trial, 2-epoch study makes at least)
POINTS = [
    ("trial", "workbench.tracking.EpochMetrics.flush", "before", 3),  # a trial's epochs
    ("trial", "workbench.tracking.log_metrics", "before", 3),  # its test metrics
    ("logging the champion", "workbench.tracking.log_model", "before", 1),
    ("logging the champion", "workbench.tracking.log_figure", "after", 1),
    ("closing a run", "workbench.tracking.end_run", "after", 3),
    ("opening a run", "workbench.tracking.start_run", "after", 3),
    ("registration", "mlflow.tracking.MlflowClient.set_registered_model_alias", "before", 1),
    ("registration", "workbench.tracking.register_version", "after", 1),
]


def _overrides(root: Path, **extra) -> list[str]:
    return tiny(
        root,
        **{
            "explain.enabled": False,
            "data.max_samples": 200,
            "trainer.max_epochs": 2,
            "trainer.patience": 2,
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "tracking.register_as": extra.get("name", "mnist_cnn"),
            **extra,
        },
    )


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.ckpt"))
        if p.is_file()
    }


def _runs_of(client: MlflowClient, parent: str) -> dict:
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=10_000)
    return {
        r.info.run_id: (r.info.status, dict(r.data.metrics), dict(r.data.params), dict(r.data.tags))
        for r in runs
        if r.info.run_id == parent or r.data.tags.get("mlflow.parentRunId") == parent
    }


@pytest.fixture(scope="module")
def store_with_another_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "mlruns"
    run_study(SPEC, trials=1, overrides=_overrides(root, name="other"))
    return root


def assert_invariants(root: Path, name: str, other_before: dict, checkpoints_before: dict):
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")
    trials = study.get_trials()
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    for trial in trials:
        assert trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL), trial
        if trial.state == TrialState.FAIL:
            assert trial.number in retried, f"trial {trial.number} failed without a retry"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    parent = study.user_attrs[PARENT_RUN]
    children = [
        r
        for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
        )
        if r.data.tags.get(tracking.ROLE) == "trial"
    ]
    per_trial = Counter(int(r.data.tags[tracking.TRIAL]) for r in children)
    assert per_trial == Counter({t.number: 1 for t in trials}), per_trial
    expected = {
        TrialState.COMPLETE: "FINISHED",
        TrialState.PRUNED: "KILLED",
        TrialState.FAIL: "FAILED",
    }
    states = {t.number: t.state for t in trials}
    for run in children:
        assert run.info.status == expected[states[int(run.data.tags[tracking.TRIAL])]]
    everything = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=10_000
    )
    assert not [r.info.run_id for r in everything if r.info.status == "RUNNING"]
    assert client.get_run(parent).info.status == "FINISHED"

    after = _hashes(root / "checkpoints")
    assert {k: after.get(k) for k in checkpoints_before} == checkpoints_before

    champion = client.get_model_version_by_alias(name, "champion")
    chosen = best_trial(study)
    assert chosen.state == TrialState.COMPLETE
    assert champion.run_id == chosen.user_attrs["mlflow_run_id"]

    other = optuna.load_study(study_name="other", storage=f"sqlite:///{root / 'optuna.db'}")
    assert _runs_of(client, other.user_attrs[PARENT_RUN]) == other_before


def _command(root: Path) -> list[str]:
    sets = [a for item in _overrides(root, name="victim") for a in ("--set", item)]
    return ["study", str(SPEC), "--trials", "3", *sets]


def _prepare(store_with_another_study: Path, tmp_path: Path) -> tuple[Path, dict]:
    root = tmp_path / "mlruns"
    shutil.copytree(store_with_another_study, root)
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    other = optuna.load_study(study_name="other", storage=f"sqlite:///{root / 'optuna.db'}")
    return root, _runs_of(client, other.user_attrs[PARENT_RUN])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_study_killed_at_a_random_point_is_whole_after_one_rerun(
    seed: int, store_with_another_study: Path, tmp_path: Path
):
    rng = random.Random(seed)
    phase, target, when, calls = POINTS[seed] if seed < 2 else rng.choice(POINTS)
    nth = rng.randint(1, calls)
    root, other_before = _prepare(store_with_another_study, tmp_path)
    killed = subprocess.run(
        [sys.executable, "-c", DRIVER, target, str(nth), when, *_command(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    assert killed.returncode == -signal.SIGKILL, (phase, target, nth, killed.stderr[-2000:])
    checkpoints = _hashes(root / "checkpoints")
    run_study(SPEC, trials=3, overrides=_overrides(root, name="victim"))  # at once, no wait
    assert_invariants(root, "victim", other_before, checkpoints)


@pytest.mark.slow
def test_kill_9_mid_trial_then_an_immediate_rerun_closes_and_retries_it(
    store_with_another_study: Path, tmp_path: Path
):
    root, other_before = _prepare(store_with_another_study, tmp_path)
    command = _command(root)
    command[command.index("trainer.max_epochs=2")] = "trainer.max_epochs=30"
    command[command.index("trainer.patience=2")] = "trainer.patience=30"
    process = subprocess.Popen(
        [sys.executable, "-m", "workbench.cli", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        time.sleep(0.5)
        with sqlite3.connect(root / "optuna.db") as db:
            (epochs,) = db.execute(
                "select count(*) from trial_intermediate_values v join trials t "
                "on v.trial_id = t.trial_id join studies s on t.study_id = s.study_id "
                "where s.study_name = 'victim'"
            ).fetchone()
        if epochs >= 2:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    checkpoints = _hashes(root / "checkpoints")
    # Rerun at once, with short trials: the heartbeat (60 s) has not expired.
    run_study(SPEC, trials=3, overrides=_overrides(root, name="victim"))
    assert_invariants(root, "victim", other_before, checkpoints)
    study = optuna.load_study(study_name="victim", storage=f"sqlite:///{root / 'optuna.db'}")
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "died" in failed[0].system_attrs["fail_reason"]
