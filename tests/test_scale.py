"""Studies that scale and survive: workers on a real PostgreSQL, an MLflow tracking server, and a
worker killed with SIGKILL mid-trial."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from tests.servers import free_port, serving
from workbench.study import run_study

SPEC = EXPERIMENTS / "mnist_cnn.yaml"
STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def _as_postgres(command: list[str]) -> list[str]:
    """initdb refuses to run as root: run the server's tools as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on 127.0.0.1, in a throw-away data directory."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (scripts/system-deps.sh installs it)")
    bin_dir = Path(found[-1]).parent
    home = Path(tempfile.mkdtemp(prefix="wb-pg-", dir="/tmp"))
    home.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
    data, port = home / "data", free_port()
    subprocess.run(
        _as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
    )
    subprocess.run(
        _as_postgres(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-w",
                "-l",
                str(home / "log"),
                "start",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -k {home}",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        for database in ("optuna", "mlflow"):
            subprocess.run(
                _as_postgres(
                    [
                        str(bin_dir / "createdb"),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-U",
                        "postgres",
                        database,
                    ]
                ),
                check=True,
            )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """`mlflow server` with a PostgreSQL backend store and a local artifact root, on loopback."""
    port = free_port()
    artifacts = tmp_path_factory.mktemp("server_artifacts")
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"{postgres}/mlflow",
        "--artifacts-destination", artifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with serving(command, f"{url}/health", env=env):
        yield url


@pytest.mark.slow
def test_two_workers_on_postgres_lose_and_duplicate_nothing(postgres, mlflow_server, tmp_path):
    overrides = tiny(
        tmp_path / "mlruns",
        **{
            "tracking.optuna_storage": f"{postgres}/optuna",
            "tracking.mlflow_uri": mlflow_server,
            "explain.enabled": False,
            "study.pruner": "none",
            "study.pruner_options": "{}",
        },
    )
    result = run_study(SPEC, trials=4, workers=2, overrides=overrides)
    study = optuna.load_study(study_name="mnist_cnn", storage=f"{postgres}/optuna")
    trials = study.get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4  # no worker starts a trial past the count
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == len(trials)

    client = MlflowClient(mlflow_server)
    runs = client.search_runs(
        [client.get_run(result.parent_run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    by_trial = {}
    for run in runs:
        by_trial.setdefault(int(run.data.tags["workbench.trial"]), []).append(run)
    assert sorted(by_trial) == sorted(t.number for t in trials)
    for trial in trials:
        (run,) = by_trial[trial.number]  # exactly one run per trial
        assert run.info.status == STATUS[trial.state.name]
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    assert client.get_model_version_by_alias("mnist_cnn", "champion").run_id == result.best_run_id


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_resumed_to_completion(tmp_path: Path):
    root = tmp_path / "mlruns"
    command = [sys.executable, "-m", "workbench.cli", "study", str(SPEC)]
    for item in tiny(
        root,
        **{
            "explain.enabled": False,
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "study.heartbeat_s": 1,
        },
    ):
        command += ["--set", item]
    first = subprocess.run(
        [*command, "--trials", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr[-2000:]  # trial 0 completes
    # Trial 1 is long (30 epochs); it is killed after its first epoch.
    worker = subprocess.Popen(
        [
            *command,
            "--trials",
            "3",
            "--set",
            "trainer.max_epochs=30",
            "--set",
            "trainer.patience=30",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    database = root / "optuna.db"
    deadline = time.time() + 240
    while time.time() < deadline and worker.poll() is None:  # trial 0 done, trial 1 mid-way
        time.sleep(1)
        try:
            with sqlite3.connect(database) as connection:
                row = connection.execute(
                    "select count(*) from trial_intermediate_values v join trials t "
                    "on v.trial_id = t.trial_id where t.number = 1"
                ).fetchone()
        except sqlite3.OperationalError:  # tables not created yet
            continue
        if row[0] >= 1:
            break
    assert worker.poll() is None, "the study ended before it could be killed"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(5)  # past the heartbeat grace period (4 heartbeats of 1 s)

    study = optuna.load_study(study_name="mnist_cnn", storage=f"sqlite:///{database}")
    kept = {t.number: t.params for t in study.trials if t.state.name == "COMPLETE"}
    assert 0 in kept and study.trials[1].state.name == "RUNNING"

    resumed = subprocess.run(
        [*command, "--trials", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    study = optuna.load_study(study_name="mnist_cnn", storage=f"sqlite:///{database}")
    states = {t.number: t.state.name for t in study.trials}
    assert states[1] == "FAIL"  # the killed trial, failed by its stale heartbeat
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 3
    for number, params in kept.items():  # completed trials kept as they were
        assert study.trials[number].params == params and states[number] == "COMPLETE"
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == 1]
    assert retried and retried[0].params == study.trials[1].params  # re-run with the same params

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.data.tags.get("workbench.trial") == "1"]
    assert [r.info.status for r in killed] == ["FAILED"]


def test_a_late_worker_counts_the_trials_running_elsewhere(tmp_path: Path):
    """A worker that boots after the others (a slow spawn on a loaded machine) finds 3 trials
    finished and the last one running elsewhere: it must not start a fifth."""
    from workbench.spec import load_spec
    from workbench.study.workers import open_study as _open_study
    from workbench.study.workers import optimize as _optimize

    spec = load_spec(SPEC, [*tiny(tmp_path / "mlruns"), "study.trials=4"])
    study = _open_study(spec)
    for value in (0.5, 0.6, 0.7):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 1e-3},  # the spec's own range, as a worker's trials would have
                distributions={"lr": optuna.distributions.FloatDistribution(3e-4, 3e-3, log=True)},
                value=value,
            )
        )
    study.ask()  # the fourth trial, RUNNING in another process
    # With nothing left to start, the worker never needs its data, store or parent run.
    _optimize(spec, study, data=None, store=None, parent=None, n=1)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "RUNNING"]


def test_a_helper_that_dies_is_named_not_a_broken_pipe(tmp_path: Path):
    """A helper process that fails (here: its storage refuses connections) ends ``wait`` with
    the error that says to re-run, and the next study given to the pool starts a new helper."""
    import dataclasses

    from workbench.spec import load_spec
    from workbench.study.workers import Helpers

    spec = load_spec(EXPERIMENTS / "breast_cancer_mlp.yaml", tiny(tmp_path / "mlruns"))
    refused = dataclasses.replace(
        spec,
        study=dataclasses.replace(spec.study, workers=2),
        tracking=dataclasses.replace(
            spec.tracking, optuna_storage="postgresql+psycopg2://nobody@127.0.0.1:1/none"
        ),
    )
    helpers = Helpers(parent="no-run")
    try:
        helpers.run(refused)
        with pytest.raises(RuntimeError, match=r"worker process failed \(exit code 1\).*re-run"):
            helpers.wait()
        ((dead, _),) = helpers._workers
        assert not dead.is_alive()
        helpers.run(refused)  # the dead one is replaced, not written to
        ((fresh, _),) = helpers._workers
        assert fresh is not dead
        with pytest.raises(RuntimeError, match="worker process failed"):
            helpers.wait()
    finally:
        helpers.close()
    assert helpers._workers == []
