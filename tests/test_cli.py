"""The `workbench` command as a user runs it: clear errors, Ctrl-C and resume, nothing lost."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny

WORKBENCH = [sys.executable, "-m", "workbench.cli"]


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        WORKBENCH + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_bad_specs_fail_fast_naming_the_field_and_leave_the_store_intact(tmp_path: Path):
    root = tmp_path / "mlruns"
    done = _run(
        [
            "study",
            str(EXPERIMENTS / "mnist_cnn.yaml"),
            "--trials",
            "1",
            *_sets(tiny(root, **{"explain.enabled": False})),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    before = _digest(root)

    raw = yaml.safe_load((EXPERIMENTS / "mnist_cnn.yaml").read_text())
    raw["trainer"]["max_epohcs"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    cases = [
        (["study", str(bad)], "trainer.max_epohcs"),
        (
            ["study", str(EXPERIMENTS / "mnist_cnn.yaml"), "--set", "data.batch_size=big"],
            "data.batch_size",
        ),
        (
            ["study", str(EXPERIMENTS / "mnist_cnn.yaml"), "--set", "study.sampler=annealing"],
            "study.sampler",
        ),
        (
            [
                "study",
                str(EXPERIMENTS / "mnist_cnn.yaml"),
                "--set",
                "data.name=idx",
                "--set",
                f"data.path={tmp_path / 'absent'}",
            ],
            "absent",
        ),
        (["study", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]
    for args, field in cases:
        started = time.perf_counter()
        failed = _run([*args, "--set", f"tracking.root={root}"], tmp_path)
        assert failed.returncode == 2, failed.stderr[-2000:]
        assert field in failed.stderr and "Traceback" not in failed.stderr
        assert time.perf_counter() - started < 60
    assert _digest(root) == before, "a rejected spec changed the store"


@pytest.mark.slow
def test_ctrl_c_mid_trial_then_resume_keeps_completed_trials(tmp_path: Path):
    root = tmp_path / "mlruns"
    args = [
        "study",
        str(EXPERIMENTS / "mnist_cnn.yaml"),
        "--trials",
        "3",
        *_sets(
            tiny(
                root,
                **{
                    "trainer.max_epochs": 8,
                    "trainer.patience": 8,
                    "data.max_samples": 1000,
                    "study.pruner": "none",
                    "study.pruner_options": "{}",
                    "explain.enabled": False,
                },
            )
        ),
    ]
    process = subprocess.Popen(
        WORKBENCH + args,
        # A shell's background job inherits SIGINT as ignored, and Python then installs no Ctrl-C
        # handler; restore the default so the child behaves as in a terminal.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    # Wait until trial 0 is COMPLETE and trial 1 has logged an epoch, then press Ctrl-C: one
    # finished trial to keep, one running trial to stop.
    states: dict[int, str] = {}
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
        states, epochs = _trial_progress(root / "optuna.db")
        if states.get(0) == "COMPLETE" and epochs.get(1, 0) >= 1:
            break
    assert process.poll() is None, "the study ended before it could be interrupted"
    assert states.get(0) == "COMPLETE" and states.get(1) == "RUNNING", states
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-3000:]
    assert "re-run to resume" in output
    assert _trial_progress(root / "optuna.db")[0] == {0: "COMPLETE", 1: "FAIL"}

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = _trial_runs(client)
    assert {n: r.info.status for n, r in runs.items()} == {0: "FINISHED", 1: "KILLED"}
    assert runs[1].data.tags["workbench.end_reason"] == "interrupted (Ctrl-C)"
    kept = runs[0]

    resumed = _run(args + ["--set", "trainer.max_epochs=1"], tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "3 complete, 0 pruned, 1 failed" in resumed.stdout
    states, _ = _trial_progress(root / "optuna.db")
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}
    runs = _trial_runs(client)
    assert {n: r.info.status for n, r in runs.items()} == {
        0: "FINISHED",
        1: "KILLED",
        2: "FINISHED",
        3: "FINISHED",
    }
    # The completed trial is the same run, untouched by the interruption and the resume.
    assert runs[0].info.run_id == kept.info.run_id
    assert runs[0].data.metrics == kept.data.metrics
    all_runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r for r in all_runs if r.info.status == "RUNNING"]


def _trial_progress(database: Path) -> tuple[dict[int, str], dict[int, int]]:
    """Optuna's trial states and the number of reported epochs, by trial number, read from the
    study's SQLite file as another process writes it ({} before the tables exist)."""
    if not database.is_file():
        return {}, {}
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            states = dict(db.execute("select number, state from trials"))
            epochs = dict(
                db.execute(
                    "select t.number, count(*) from trial_intermediate_values v "
                    "join trials t on t.trial_id = v.trial_id group by t.number"
                )
            )
    except sqlite3.OperationalError:  # the study has not created its tables yet
        return {}, {}
    return states, epochs


def _trial_runs(client: MlflowClient) -> dict[int, object]:
    """The MLflow run of each trial, by trial number; a trial with two runs fails the test."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    trials = [r for r in runs if r.data.tags.get("workbench.role") == "trial"]
    numbered = {int(r.data.tags["workbench.trial"]): r for r in trials}
    assert len(numbered) == len(trials), "a trial has more than one run"
    return numbered


def test_the_command_leaves_with_mains_code_after_flushing_output_and_exit_handlers(
    tmp_path: Path,
):
    """``workbench`` skips Python's teardown after its work (about 3 s at a study's end), not
    what comes before it: buffered output is written, threads are joined, exit handlers run,
    and the status is ``main``'s."""
    marker, root = tmp_path / "handler-ran", tmp_path / "empty"
    script = "\n".join(
        [
            "import atexit, sys, threading, time",
            "from pathlib import Path",
            f"atexit.register(lambda: Path({str(marker)!r}).write_text('ran'))",
            f"sys.argv = ['workbench', 'results', '--root', {str(root)!r}]",
            "threading.Thread(target=lambda: (time.sleep(0.5), print('thread done'))).start()",
            "print('buffered before the command')",
            "from workbench.cli import entry",
            "entry()",
            "print('never printed')",
        ]
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    from workbench.cli import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        expected = main(["results", "--root", str(root)])
    assert done.returncode == expected, done.stderr[-2000:]
    assert "buffered before the command" in done.stdout and "thread done" in done.stdout
    assert "never printed" not in done.stdout
    assert marker.read_text() == "ran"
