"""A study run in the background of a notebook (``run_study(..., background=True)``): read while it
runs, stopped mid-trial at an epoch boundary with Ctrl-C's guarantees, resumed to the requested
count with nothing lost or duplicated; and a kernel interrupted mid-trial, checked through Optuna's
and MLflow's own clients."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from workbench.spec import SpecError, load_spec
from workbench.study import run_study
from workbench.study.background import TABLE_COLUMNS, StudyHandle, StudyStopped

SPEC = EXPERIMENTS / "mnist_cnn.yaml"
EPOCHS = 6
INTERRUPTED = "interrupted; re-run the same command to resume"  # the parent's reason on Ctrl-C


def _overrides(root: Path) -> list[str]:
    """Trials of several short epochs (~0.6 s each on 300 images), none pruned or explained."""
    return tiny(
        root,
        **{
            "trainer.max_epochs": EPOCHS,
            "trainer.patience": EPOCHS,
            "study.pruner": "none",
            "study.pruner_options": "{}",
            "data.augment": False,
            "explain.enabled": False,
        },
    )


def _states(root: Path, name: str = "mnist_cnn") -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")
    return {t.number: t.state.name for t in study.trials}


def _runs(root: Path) -> tuple[list, dict[int, object]]:
    """The study's parent runs, and each trial's MLflow run by number (two runs for one trial
    fail the test)."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("workbench.role") == "study"]
    trials = [r for r in runs if r.data.tags.get("workbench.role") == "trial"]
    numbered = {int(r.data.tags["workbench.trial"]): r for r in trials}
    assert len(numbered) == len(trials), "a trial has more than one run"
    return parents, numbered


def _wait_until(handle: StudyHandle, ready, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while not ready():
        assert not handle.done, f"the study ended first: {handle!r}"
        assert time.time() < deadline, f"not reached in {timeout_s} s: {handle!r}"
        time.sleep(0.1)


def test_a_stop_before_the_first_trial_closes_the_parent_run_killed(tmp_path: Path):
    root = tmp_path / "mlruns"
    with pytest.raises(SpecError, match="study.trials"):  # a bad spec fails in the caller, at once
        run_study(SPEC, trials=0, overrides=_overrides(root), background=True)
    handle = run_study(SPEC, trials=1, overrides=_overrides(root), background=True)
    assert list(handle.trials().columns) == list(TABLE_COLUMNS)  # empty, before the study exists
    handle.stop()  # while it loads its data: it ends before any trial, as Ctrl-C would there
    assert handle.done and "stopped: 0/1 trials finished" in repr(handle)
    with pytest.raises(StudyStopped):
        handle.result()
    assert handle.trials().empty and _states(root) == {}
    parents, runs = _runs(root)
    assert [(p.info.status, p.data.tags["workbench.end_reason"]) for p in parents] == [
        ("KILLED", INTERRUPTED)
    ]
    assert runs == {}


@pytest.mark.slow
def test_stop_mid_trial_then_resume_loses_and_repeats_nothing(tmp_path: Path):
    root = tmp_path / "mlruns"
    spec = load_spec(SPEC, _overrides(root))
    started = time.perf_counter()
    handle = run_study(spec, trials=3, background=True)
    assert time.perf_counter() - started < 5, "run_study(background=True) did not return at once"
    assert isinstance(handle, StudyHandle) and not handle.done

    # The trials table is read while the study runs: trial 0 finished, trial 1 training.
    tables = []

    def trial_1_past_its_first_epoch() -> bool:
        tables.append(handle.trials())
        running = handle.running
        return running is not None and running[0] == "trial-1" and running[1] >= 1

    _wait_until(handle, trial_1_past_its_first_epoch)
    table = tables[-1]
    assert {"number", "state", "value", "params_lr"} <= set(table.columns)
    assert dict(zip(table["number"], table["state"], strict=True)) == {0: "COMPLETE", 1: "RUNNING"}
    assert "1/3 trials finished" in repr(handle) and "trial-1 at epoch" in repr(handle)

    handle.stop()  # waits until the study has ended and both stores are closed
    assert handle.done and "stopped" in repr(handle)
    with pytest.raises(StudyStopped, match="resumes it"):
        handle.result()

    # As Ctrl-C leaves them: the trial FAILED in Optuna, its run KILLED, the parent KILLED; the
    # trial ended at an epoch boundary, before its last epoch.
    assert _states(root) == {0: "COMPLETE", 1: "FAIL"}
    study = optuna.load_study(study_name="mnist_cnn", storage=f"sqlite:///{root / 'optuna.db'}")
    assert 1 <= len(study.trials[1].intermediate_values) < EPOCHS
    assert study.trials[0].value == pytest.approx(table["value"][0])
    parents, runs = _runs(root)
    assert [p.info.status for p in parents] == ["KILLED"]
    assert parents[0].data.tags["workbench.end_reason"] == INTERRUPTED
    assert {n: r.info.status for n, r in runs.items()} == {0: "FINISHED", 1: "KILLED"}
    assert runs[1].data.tags["workbench.end_reason"] == "interrupted (Ctrl-C)"
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    epochs = client.get_metric_history(runs[1].info.run_id, "val/acc")
    assert 1 <= len(epochs) < EPOCHS
    kept = runs[0]

    # Resumed in the background too, to the requested count.
    result = run_study(spec, trials=3, background=True).result()
    assert (result.n_complete, result.n_pruned, result.n_failed) == (3, 0, 1)
    assert _states(root) == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE", 3: "COMPLETE"}
    parents, runs = _runs(root)
    assert [p.info.status for p in parents] == ["FINISHED"]  # the same parent, closed
    assert parents[0].info.run_id == result.parent_run_id
    assert {n: r.info.status for n, r in runs.items()} == {
        0: "FINISHED",
        1: "KILLED",
        2: "FINISHED",
        3: "FINISHED",
    }
    study = optuna.load_study(study_name="mnist_cnn", storage=f"sqlite:///{root / 'optuna.db'}")
    for trial in study.trials:  # each trial names its one run
        assert trial.user_attrs["mlflow_run_id"] == runs[trial.number].info.run_id
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 3  # no configuration twice
    # The finished trial is the same run, untouched by the stop and the resume.
    assert runs[0].info.run_id == kept.info.run_id
    assert runs[0].data.metrics == kept.data.metrics
    assert all(len(t.intermediate_values) == EPOCHS for t in complete)
    all_runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r for r in all_runs if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_interrupting_the_kernel_mid_trial_leaves_the_stores_as_ctrl_c_does(tmp_path: Path):
    """The notebook's stop button (a kernel interrupt) mid-trial: once while the study runs in
    the cell, once while the cell waits on a background study's result; then the same kernel
    resumes the study."""
    from jupyter_client.manager import start_new_kernel

    from tests.test_cli import _trial_progress

    root = tmp_path / "mlruns"
    call = f"{str(SPEC)!r}, trials=1, overrides={_overrides(root)!r}"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
    try:

        def execute(code: str, interrupt_at: tuple[int, int] | None = None) -> dict:
            """Run a cell; with ``interrupt_at`` (trial, epochs), interrupt the kernel once that
            trial has reported that many epochs. The cell's reply."""
            msg_id = client.execute(code, stop_on_error=False)
            deadline = time.time() + 240
            while interrupt_at is not None:
                trial, epochs = interrupt_at
                if _trial_progress(root / "optuna.db")[1].get(trial, 0) >= epochs:
                    manager.interrupt_kernel()
                    break
                assert time.time() < deadline, f"trial {trial} did not reach epoch {epochs}"
                time.sleep(0.1)
            while True:
                reply = client.get_shell_msg(timeout=240)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return reply["content"]

        assert execute("from workbench.study import run_study")["status"] == "ok"
        stopped = execute(f"run_study({call})", interrupt_at=(0, 1))
        assert (stopped["status"], stopped["ename"]) == ("error", "KeyboardInterrupt")
        assert _states(root) == {0: "FAIL"}
        parents, runs = _runs(root)
        assert [(p.info.status, p.data.tags["workbench.end_reason"]) for p in parents] == [
            ("KILLED", INTERRUPTED)
        ]
        assert runs[0].info.status == "KILLED"
        assert runs[0].data.tags["workbench.end_reason"] == "interrupted (Ctrl-C)"

        assert execute(f"handle = run_study({call}, background=True)")["status"] == "ok"
        stopped = execute("handle.result()", interrupt_at=(1, 1))
        assert (stopped["status"], stopped["ename"]) == ("error", "KeyboardInterrupt")
        assert _states(root) == {0: "FAIL", 1: "FAIL"}  # the study ended before the cell did
        parents, runs = _runs(root)
        assert [p.info.status for p in parents] == ["KILLED"]
        assert {n: r.info.status for n, r in runs.items()} == {0: "KILLED", 1: "KILLED"}

        resumed = execute(f"assert run_study({call}).n_complete == 1")
        assert resumed["status"] == "ok", resumed
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert _states(root) == {0: "FAIL", 1: "FAIL", 2: "COMPLETE"}
    parents, runs = _runs(root)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert {n: r.info.status for n, r in runs.items()} == {0: "KILLED", 1: "KILLED", 2: "FINISHED"}
