"""Every run records where it ran: interpreter, machine, the stack against the lock, the commit
and the uncommitted changes; read back from a real study's MLflow store."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, REPO, tiny
from workbench import environment, tracking
from workbench.spec import load_spec
from workbench.study import run_study


def _head(repo: Path) -> str | None:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _git(repo: Path, *args: str) -> None:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("environment") / "mlruns"
    overrides = tiny(root, **{"data.max_samples": "null", "explain.enabled": False})
    spec = load_spec(EXPERIMENTS / "breast_cancer_mlp.yaml", overrides)
    before = _head(REPO)
    result = run_study(spec, trials=2)
    return result, {before, _head(REPO)}  # another commit may land while the study runs


def test_the_parent_and_every_trial_run_record_this_process(study, tmp_path):
    result, heads = study
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )
    assert len(children) == 2
    lock_sha256 = hashlib.sha256((REPO / "requirements.lock").read_bytes()).hexdigest()
    for run in [parent, *children]:
        folder = tmp_path / run.info.run_id
        folder.mkdir()
        path = client.download_artifacts(run.info.run_id, "environment.json", str(folder))
        env = json.loads(Path(path).read_text())
        assert env["python"] == platform.python_version()
        assert env["packages"]["torch"] == torch.__version__
        assert env["torch_threads"] >= 1 and env["cpu_count"] >= 1
        assert env["deterministic"] is False  # what train.py asks of every Trainer
        assert env["lock"]["sha256"] == lock_sha256
        git, tags = env["git"], run.data.tags
        if None in heads:  # not a git checkout: recorded as unknown, and the run still finished
            assert git["commit"] is None and tags[tracking.GIT_COMMIT] == "none"
        else:
            assert git["commit"] in heads
            assert tags[tracking.GIT_COMMIT] == git["commit"]
            assert tags["git_commit"].startswith(git["commit"])
            assert tags[tracking.GIT_DIRTY] == str(git["dirty"]).lower()
            names = {a.path for a in client.list_artifacts(run.info.run_id, "environment")}
            if git["dirty"]:
                assert git["diff"] == "environment/diff.patch"
                assert names == {"environment/diff.patch"}
            else:
                assert git["diff"] is None and not names
        assert tags[tracking.TORCH] == torch.__version__
        assert tags[tracking.LOCK_SHA256] == lock_sha256
        assert run.info.status == "FINISHED"


def test_a_changed_tree_is_dirty_and_its_diff_holds_the_change(tmp_path):
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    (tmp_path / "train.py").write_text("lr = 0.3\n")
    (tmp_path / "new_model.py").write_text("width = 64\n")
    git = environment.capture(repo=tmp_path)["git"]
    assert git["commit"] == _head(tmp_path) and git["dirty"] is True
    assert "-lr = 0.1" in git["diff"] and "+lr = 0.3" in git["diff"]
    assert "+width = 64" in git["diff"] and git["untracked"] == ["new_model.py"]


def test_a_clean_tree_is_not_dirty_and_has_no_diff(tmp_path):
    (tmp_path / "train.py").write_text("lr = 0.1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    git = environment.capture(repo=tmp_path)["git"]
    assert git["commit"] == _head(tmp_path)
    assert git["dirty"] is False and git["diff"] is None


def test_outside_a_git_checkout_the_commit_is_none_and_nothing_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    env = environment.capture(repo=tmp_path)
    assert env["git"]["commit"] is None and env["git"]["dirty"] is None
    assert env["lock"]["found"] is False and env["lock"]["sha256"] is None
    json.dumps(env)  # plain JSON, no default= needed
    assert tracking.environment_tags(env)[tracking.GIT_COMMIT] == "none"


def test_a_package_whose_version_differs_from_the_lock_is_named(tmp_path):
    import numpy

    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "# pinned\n"
        f"numpy=={numpy.__version__}\n"
        "torch==0.0.1\n"
        "Not_A-Real.Package==1.0\n"
        f"torchmetrics=={environment.installed_versions()['torchmetrics']}  # same\n"
    )
    report = environment.capture(lock=lock)["lock"]
    assert report["sha256"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    assert report["differs"] == {
        "torch": {"locked": "0.0.1", "installed": torch.__version__},
        "not-a-real-package": {"locked": "1.0", "installed": None},
    }


def test_a_local_version_label_matches_its_lock_line(tmp_path):
    """pip installs ``torch==2.13.0`` as 2.13.0+cpu: not a difference."""
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"torch=={torch.__version__.split('+')[0]}\n")
    assert environment.capture(lock=lock)["lock"]["differs"] == {}
