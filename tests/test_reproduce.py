"""``workbench reproduce RUN_ID``: a finished trial trained again from what its run recorded gives
the same numbers on the same machine (deterministic mode), into a new run linked to the original;
a recorded difference (commit, package version) is named; a run that cannot be reproduced is
refused naming its id, before any training."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from workbench.cli import main
from workbench.study import run_study
from workbench.study.reproduce import REPRODUCES, reproduce

SPEC = EXPERIMENTS / "mnist_cnn.yaml"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two deterministic trials; the second is reproduced (it ran after another trial on the
    same data module, as any trial of a study but the first)."""
    root = tmp_path_factory.mktemp("reproduce") / "mlruns"
    overrides = tiny(
        root,
        **{
            "explain.enabled": False,
            "trainer.max_epochs": 2,
            "trainer.deterministic": True,
            "study.pruner": "none",
            "study.pruner_options": "{}",
        },
    )
    result = run_study(SPEC, trials=2, overrides=overrides)
    return root, result


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_a_reproduced_trial_gives_identical_metrics_in_a_linked_run(study):
    root, result = study
    trial = result.load_study().trials[1]
    original = trial.user_attrs["mlflow_run_id"]
    again = reproduce(original, root=root)

    assert again.identical and again.differences == []
    names = [name for name, _, _ in again.metrics]
    assert names[0] == "best val/acc" and {"test/acc", "test/loss", "test/ece"} <= set(names)
    for _, before, after in again.metrics:
        assert before == after
    client = MlflowClient(result.tracking_uri)
    new = client.get_run(again.new_run)
    assert new.info.status == "FINISHED"
    assert new.data.tags[REPRODUCES] == original
    assert new.data.tags["workbench.role"] == "reproduce"
    assert new.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert new.data.metrics["reproduce/identical"] == 1.0
    assert new.data.metrics["test/acc"] == client.get_run(original).data.metrics["test/acc"]
    # The study itself is untouched: still two trials, the same champion.
    assert len(result.load_study().trials) == 2
    assert client.get_model_version_by_alias("mnist_cnn", "champion").run_id == result.best_run_id


def test_a_recorded_commit_or_package_that_differs_is_named(study):
    root, result = study
    original = result.load_study().trials[0].user_attrs["mlflow_run_id"]
    client = MlflowClient(result.tracking_uri)
    env = json.loads(Path(client.download_artifacts(original, "environment.json")).read_text())
    real_commit, real_torch = env["git"]["commit"], env["packages"]["torch"]
    env["git"]["commit"] = "0" * 40
    env["packages"]["torch"] = "0.0.1"
    client.log_text(original, json.dumps(env), "environment.json")  # as another machine wrote it

    code, out, _ = _cli("reproduce", original, "--root", str(root))
    assert code == 0
    assert "identical metrics" in out  # the fake changed the record, not the computation
    assert f"git commit: {'0' * 40} → {real_commit}" in out
    assert f"package torch: 0.0.1 → {real_torch}" in out
    # Reproducing another run leaves the first reproduction's run as it was.
    experiments = [e.experiment_id for e in client.search_experiments()]
    reproductions = client.search_runs(experiments, "tags.`workbench.role` = 'reproduce'")
    assert len(reproductions) == 2
    assert all(r.info.status == "FINISHED" for r in reproductions)


def test_runs_that_cannot_be_reproduced_are_refused_naming_the_id(study, tmp_path: Path):
    root, result = study
    code, _, err = _cli("reproduce", "f" * 32, "--root", str(root))
    assert code == 2 and "f" * 32 in err
    code, _, err = _cli("reproduce", result.parent_run_id, "--root", str(root))
    assert code == 2 and result.parent_run_id in err and "study run" in err
    storage = f"sqlite:///{root}/optuna.db"
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    reruns = [n for n in names if ":reproduce:" in n]
    before = sum(len(optuna.load_study(study_name=n, storage=storage).trials) for n in reruns)
    code, _, err = _cli("reproduce", "x" * 32, "--root", str(tmp_path / "nowhere"))
    assert code == 2 and "no mlflow.db" in err
    after = sum(len(optuna.load_study(study_name=n, storage=storage).trials) for n in reruns)
    assert after == before  # nothing was trained
