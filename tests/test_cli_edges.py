"""Edges of the `workbench` command: a bad table, a study where nothing finished, numbers out of
range, a SIGTERM to `workbench ui`, a server that is not there."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import EXPERIMENTS, tiny
from tests.servers import free_port
from tests.test_cli import WORKBENCH, _run, _sets
from workbench import cli


def _table_study(root: Path, extra: dict | None = None) -> list[str]:
    """The breast-cancer MLP spec, shrunk to one epoch; ``extra`` overrides more."""
    return [
        "study",
        str(EXPERIMENTS / "breast_cancer_mlp.yaml"),
        "--trials",
        "1",
        *_sets(tiny(root, **{"explain.enabled": False, **(extra or {})})),
    ]


# --- 1. a CSV with empty labels ---------------------------------------------------------------
def test_study_on_a_csv_with_empty_labels_exits_2_before_opening_a_store(tmp_path: Path):
    table = tmp_path / "table.csv"
    rows = [f"{i},{i % 3},{i % 2}" for i in range(60)]
    for row in (4, 24, 44):
        rows[row] = f"{row},1,"  # empty labels: before the check, a third class
    table.write_text("\n".join(["a,b,label", *rows]) + "\n")
    root = tmp_path / "mlruns"
    done = _run(
        _table_study(root, {"data.name": "csv", "data.path": str(table)}), tmp_path, timeout=120
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    expected = f"data.path: {table}: column 'label' has 3 empty values (data rows 5, 25, 45)"
    assert f"workbench: error: {expected}" in done.stderr
    assert not root.exists(), sorted(str(p) for p in root.rglob("*"))


# --- 2. a study where every trial failed ------------------------------------------------------
def test_study_where_every_trial_failed_exits_1_with_the_reasons(tmp_path: Path):
    root = tmp_path / "mlruns"
    # A learning rate of 1e30 (with AdamW's weight decay) overflows the weights in a step or two:
    # every trial's loss becomes NaN and the trial is recorded FAILED.
    diverge = {"search_space.lr": "{type: float, low: 1.0e+30, high: 1.0e+31, log: true}"}
    done = _run(_table_study(root, diverge), tmp_path)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "0 complete, 0 pruned" in done.stdout
    assert "no trial of study 'breast_cancer_mlp' finished" in done.stderr
    # One line per reason, with its count: the MLflow run's end reason of each failed trial.
    lines = [line.strip() for line in done.stderr.splitlines() if "× FloatingPointError" in line]
    assert lines, done.stderr[-3000:]
    counts = [int(line.split(" × ")[0]) for line in lines]
    failed = int(done.stdout.split(" pruned, ")[1].split(" failed")[0])
    assert sum(counts) == failed >= 1
    assert all("train/loss became nan" in line for line in lines)
    assert "registered model" not in done.stdout


# --- 3. numbers out of range ------------------------------------------------------------------
SPEC = str(EXPERIMENTS / "mnist_cnn.yaml")
PORT = "must be a port number from 1 to 65535"
OUT_OF_RANGE = [
    (["study", SPEC, "--trials", "0"], "--trials", "must be >= 1, got 0"),
    (["study", SPEC, "--trials", "-3"], "--trials", "must be >= 1"),
    (["study", SPEC, "--trials", "two"], "--trials", "must be a whole number >= 1, got 'two'"),
    (["study", SPEC, "--workers", "0"], "--workers", "must be >= 1"),
    (["explain", "abc", "--n", "0"], "--n", "must be >= 1"),
    (["explain", "abc", "--background", "0"], "--background", "must be >= 1"),
    (["explain", "abc", "--lime-samples", "-1"], "--lime-samples", "must be >= 1"),
    (["compress", SPEC, "--distill-epochs", "0"], "--distill-epochs", "must be >= 1"),
    (["compress", SPEC, "--finetune-epochs", "-1"], "--finetune-epochs", "must be >= 0"),
    (["ui", "--mlflow-port", "0"], "--mlflow-port", f"{PORT}, got 0"),
    (["ui", "--dashboard-port", "65536"], "--dashboard-port", f"{PORT}, got 65536"),
    (["serve", "models:/m@champion", "--port", "-1"], "--port", f"{PORT}, got -1"),
    (["serve", "models:/m@champion", "--port", "http"], "--port", f"{PORT}, got 'http'"),
]


@pytest.fixture
def handlers_must_not_run(monkeypatch):
    """Replace the command handlers: argparse must refuse the arguments before any runs."""
    called = []
    for name in ("_study", "_ui", "_explain", "_compress", "_export", "_serve", "_predict"):
        monkeypatch.setattr(cli, name, lambda args, name=name: called.append((name, args)) or 0)
    return called


@pytest.mark.parametrize(("argv", "flag", "why"), OUT_OF_RANGE)
def test_numeric_arguments_out_of_range_fail_in_argparse(
    argv, flag, why, handlers_must_not_run, capsys
):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"error: argument {flag}: {why}" in error
    assert handlers_must_not_run == []


def test_numeric_arguments_at_their_bounds_are_accepted(handlers_must_not_run):
    assert cli.main(["compress", SPEC, "--finetune-epochs", "0", "--distill-epochs", "1"]) == 0
    assert cli.main(["ui", "--mlflow-port", "1", "--dashboard-port", "65535"]) == 0
    assert cli.main(["study", SPEC, "--trials", "1", "--workers", "1"]) == 0
    assert cli.main(["explain", "r", "--n", "1", "--background", "1", "--lime-samples", "1"]) == 0
    args = [a for _, a in handlers_must_not_run]
    assert (args[0].finetune_epochs, args[0].distill_epochs) == (0, 1)
    assert (args[1].mlflow_port, args[1].dashboard_port) == (1, 65535)
    assert (args[2].trials, args[2].workers) == (1, 1)
    assert (args[3].n, args[3].background, args[3].lime_samples) == (1, 1, 1)


def test_out_of_range_trials_exit_2_from_the_command_and_store_nothing(tmp_path: Path):
    root = tmp_path / "mlruns"
    done = _run(["study", SPEC, "--trials", "0", "--set", f"tracking.root={root}"], tmp_path, 60)
    assert done.returncode == 2
    assert "workbench study: error: argument --trials: must be >= 1, got 0" in done.stderr
    assert not root.exists()


# --- 4. SIGTERM to `workbench ui` -------------------------------------------------------------
def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_members(psutil, groups: set[int]) -> list:
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) in groups and _alive(process.pid):
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


def _command(process) -> str:
    try:
        return " ".join(process.cmdline())
    except Exception:  # it ended meanwhile
        return f"pid {process.pid}"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_to_workbench_ui_stops_both_servers(tmp_path: Path, signum):
    psutil = pytest.importorskip("psutil")
    from workbench.study import run_study

    root = tmp_path / "mlruns"
    run_study(
        EXPERIMENTS / "digits_cnn.yaml",
        trials=1,
        overrides=tiny(root, **{"explain.enabled": False, "data.max_samples": 200}),
    )
    mlflow_port, dashboard_port = free_port(), free_port()
    log = (tmp_path / "ui.log").open("w+b")
    ui = subprocess.Popen(
        [
            *WORKBENCH,
            "ui",
            "--root",
            str(root),
            "--mlflow-port",
            str(mlflow_port),
            "--dashboard-port",
            str(dashboard_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # As a terminal starts it: a suite run under nohup would pass SIGHUP on ignored, and
        # `workbench ui` keeps an ignored SIGHUP ignored (nohup's request).
        preexec_fn=_default_stop_signals,
    )
    tree, groups = [], set()
    try:
        deadline = time.time() + 120
        urls = [f"http://127.0.0.1:{mlflow_port}/", f"http://127.0.0.1:{dashboard_port}/"]
        while not all(_answers(url) for url in urls):
            assert ui.poll() is None, log.seek(0) or log.read().decode(errors="replace")
            assert time.time() < deadline, "the UI servers did not answer within 120 s"
            time.sleep(0.5)
        tree = psutil.Process(ui.pid).children(recursive=True)
        commands = [_command(p) for p in tree]
        for port in (mlflow_port, dashboard_port):
            assert any(str(port) in command for command in commands), commands
        # Also whatever the servers spawn later in their process groups (MLflow's job consumers).
        groups = {os.getpgid(p.pid) for p in tree} - {os.getpgid(0)}

        ui.send_signal(signum)
        ui.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and (
            any(_alive(p.pid) for p in tree) or _group_members(psutil, groups)
        ):
            time.sleep(0.2)
        left = [_command(p) for p in [*tree, *_group_members(psutil, groups)] if _alive(p.pid)]
        assert not left, f"still running after {signum.name}: {left}"
        assert not any(_answers(url) for url in urls)
    finally:
        for process in [*tree, *_group_members(psutil, groups)]:
            if _alive(process.pid):
                process.kill()
        if ui.poll() is None:
            ui.kill()
        log.close()


# --- 5. a server that is not there ------------------------------------------------------------
def test_predict_against_a_dead_url_names_it_without_a_traceback(tmp_path: Path):
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.zeros((2, 1, 8, 8), np.float32))
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = _run(["predict", str(inputs), "--url", url], tmp_path, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"workbench: cannot reach a model server at {url}" in done.stderr
    assert "workbench serve" in done.stderr


def _default_stop_signals() -> None:
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
