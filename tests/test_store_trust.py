"""Trust in the store: names, the stores' agreement, repeated draws, registration, corrupt files.

Each test reproduces a way the store was damaged or a command crashed before the fixes
(issue 18) and checks the store is untouched or the error names the field, file or URL.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from workbench import tracking
from workbench.spec import SpecError, load_spec
from workbench.study import run_study
from workbench.study.config import make_sampler, open_storage
from workbench.study.recovery import StoresDisagree

SPEC = EXPERIMENTS / "mnist_cnn.yaml"


def _overrides(root: Path, **extra) -> list[str]:
    return tiny(root, **{"explain.enabled": False, "data.max_samples": 200, **extra})


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith((".lock", "-shm", "-wal"))
    }


def _runs(root: Path) -> dict[str, tuple]:
    """Every run of the store: status, metrics, params, tags (what another study must not touch)."""
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {
        run.info.run_id: (
            run.info.status,
            dict(run.data.metrics),
            dict(run.data.params),
            dict(run.data.tags),
        )
        for run in client.search_runs(experiments, max_results=10_000)
    }


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    """A store holding one finished study named ``mnist_cnn`` (2 trials), like the demo's."""
    root = tmp_path_factory.mktemp("demo") / "mlruns"
    run_study(SPEC, trials=2, overrides=_overrides(root))
    return root


@pytest.fixture
def store_copy(demo_store: Path, tmp_path: Path) -> Path:
    root = tmp_path / "mlruns"
    shutil.copytree(demo_store, root)
    return root


# --- names ---------------------------------------------------------------------------------


CRAFTED_NAMES = [
    "mnist_cnn' AND tags.`workbench.role` = 'study",  # matched the demo's parent run
    "it's",
    "../../escaped",  # checkpoints outside the root
    "x" * 300,  # File name too long, after the store was created
    "a b",
    "",
    "-starts-with-dash",
    "a..b",
]


@pytest.mark.parametrize("name", CRAFTED_NAMES)
def test_crafted_study_names_stop_before_any_store_is_touched(store_copy: Path, name: str):
    before, runs = _digest(store_copy), _runs(store_copy)
    with pytest.raises(SpecError, match=r"^name: "):
        run_study(SPEC, trials=1, overrides=[*_overrides(store_copy), f"name={name}"])
    assert _digest(store_copy) == before and _runs(store_copy) == runs
    assert not (store_copy.parent / "escaped").exists()


@pytest.mark.parametrize(
    "field", ["tracking.experiment", "tracking.register_as", "model.params.teacher_checkpoint"]
)
def test_every_name_follows_the_same_rule(field: str, tmp_path: Path):
    value = "study:a'b" if field.endswith("checkpoint") else "a'b"
    spec = EXPERIMENTS / ("mnist_distill.yaml" if "checkpoint" in field else "mnist_cnn.yaml")
    with pytest.raises(SpecError, match=f"^{field}: "):
        load_spec(spec, [f"tracking.root={tmp_path}", f"{field}={value}"])
    assert not any(tmp_path.iterdir())


def test_values_reaching_an_mlflow_filter_must_be_identifiers():
    assert tracking.filter_value("mnist_cnn") == "'mnist_cnn'"
    assert tracking.filter_value("0f3a9c") == "'0f3a9c'"
    for value in ["a' OR 'x' = 'x", 'a"b', "a b", "", "a`b"]:
        with pytest.raises(ValueError, match="refusing"):
            tracking.filter_value(value)


# --- the two stores ---------------------------------------------------------------------------


def _remove_optuna_db(root: Path, how: str) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{root / 'optuna.db'}{suffix}").unlink(missing_ok=True)
    if how == "lost":
        (root / "optuna.db").unlink()
    else:
        (root / "optuna.db").write_bytes(b"")


@pytest.mark.parametrize("how", ["lost", "emptied"])
def test_a_lost_optuna_store_stops_the_rerun_and_overwrites_nothing(store_copy: Path, how: str):
    client = MlflowClient(f"sqlite:///{store_copy / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("mnist_cnn", "champion").version
    checkpoints = {k: v for k, v in _digest(store_copy).items() if k.startswith("checkpoints")}
    runs = _runs(store_copy)
    _remove_optuna_db(store_copy, how)
    with pytest.raises(StoresDisagree) as raised:
        run_study(SPEC, trials=3, overrides=_overrides(store_copy))
    message = str(raised.value)
    assert "optuna.db" in message and "mlflow.db" in message and "Nothing was written" in message
    assert _runs(store_copy) == runs  # no trial-0 duplicate, no metric moved
    after = {k: v for k, v in _digest(store_copy).items() if k.startswith("checkpoints")}
    assert after == checkpoints
    assert client.get_model_version_by_alias("mnist_cnn", "champion").version == champion


def test_a_lost_mlflow_store_stops_the_rerun(store_copy: Path):
    for name in ("mlflow.db", "mlflow.db-wal", "mlflow.db-shm"):
        (store_copy / name).unlink(missing_ok=True)
    optuna_before = _digest(store_copy)["optuna.db"]
    with pytest.raises(StoresDisagree, match="mlflow.db"):
        run_study(SPEC, trials=3, overrides=_overrides(store_copy))
    assert not (store_copy / "mlflow.db").exists()
    assert _digest(store_copy)["optuna.db"] == optuna_before


def test_swapped_stores_of_two_studies_with_one_name_are_refused(store_copy: Path, tmp_path: Path):
    other = tmp_path / "other"
    run_study(SPEC, trials=1, overrides=_overrides(other))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store_copy / 'optuna.db'}{suffix}").unlink(missing_ok=True)
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{other / 'optuna.db'}{suffix}").exists():
            shutil.copy(f"{other / 'optuna.db'}{suffix}", f"{store_copy / 'optuna.db'}{suffix}")
    runs = _runs(store_copy)
    with pytest.raises(StoresDisagree, match="different studies"):
        run_study(SPEC, trials=3, overrides=_overrides(store_copy))
    assert _runs(store_copy) == runs


# --- resume, repeats, registration, workers ----------------------------------------------------


def test_two_processes_on_one_study_draw_different_configurations(tmp_path: Path):
    spec = load_spec(SPEC, _overrides(tmp_path))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = optuna.create_study(study_name="s", storage=url, sampler=make_sampler(spec))
    second = optuna.load_study(study_name="s", storage=url, sampler=make_sampler(spec))
    space = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "dropout": optuna.distributions.FloatDistribution(0.1, 0.5),
    }
    a, b = first.ask(space), second.ask(space)  # two processes, started at the same moment
    assert a.params != b.params


def test_a_resumed_study_continues_the_sequence_instead_of_repeating_it(tmp_path: Path):
    overrides = _overrides(tmp_path / "mlruns")
    run_study(SPEC, trials=1, overrides=overrides)
    result = run_study(SPEC, trials=3, overrides=overrides)
    params = [tuple(sorted(t.params.items())) for t in result.load_study().trials]
    assert len(params) == 3 and len(set(params)) == 3, params


def test_a_configuration_already_finished_is_not_run_again(tmp_path: Path):
    root = tmp_path / "mlruns"
    space = "{width: {type: categorical, choices: [8, 16]}}"
    overrides = _overrides(root, search_space=space, **{"study.sampler": "random"})
    result = run_study(SPEC, trials=4, overrides=overrides)
    trials = result.load_study().trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({t.params["width"] for t in complete}) == len(complete) <= 2
    skipped = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(complete) + len(skipped) == 4 and skipped
    client = MlflowClient(result.tracking_uri)
    for trial in skipped:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED"
        reason = run.data.tags["workbench.end_reason"]
        assert "repeats the configuration of finished trial" in reason
        assert "train/loss" not in run.data.metrics  # nothing was trained


def test_rerunning_a_finished_study_registers_no_new_version(store_copy: Path):
    client = MlflowClient(f"sqlite:///{store_copy / 'mlflow.db'}")
    before = client.search_model_versions("name = 'mnist_cnn'")
    assert len(before) == 1
    for _ in range(2):
        result = run_study(SPEC, trials=2, overrides=_overrides(store_copy))
    after = client.search_model_versions("name = 'mnist_cnn'")
    assert [v.version for v in after] == [v.version for v in before]
    assert result.registered_version == int(before[0].version)
    assert client.get_model_version_by_alias("mnist_cnn", "champion").run_id == result.best_run_id


def test_workers_are_capped_by_the_trials_left(tmp_path: Path, capsys):
    result = run_study(SPEC, trials=1, workers=8, overrides=_overrides(tmp_path / "mlruns"))
    assert "study.workers: 8 capped to 1" in capsys.readouterr().out
    assert result.n_complete == 1


RACE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from workbench import tracking
    from workbench.study.config import open_storage
    root, me, other = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    me.touch()
    while not other.exists():  # both have imported: go at the same moment
        time.sleep(0.001)
    open_storage(f"sqlite:///{root / 'optuna.db'}")
    tracking.open_store(root, "workbench")
    """
)


def test_two_first_commands_on_a_fresh_store_both_open_it(tmp_path: Path):
    for attempt in range(2):
        root = tmp_path / f"fresh{attempt}"
        ready = [tmp_path / f"ready{attempt}-{i}" for i in range(2)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", RACE, str(root), str(ready[i]), str(ready[1 - i])],
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(2)
        ]
        for process in processes:
            _, err = process.communicate(timeout=120)
            assert process.returncode == 0, err[-2000:]
        client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
        assert [e.name for e in client.search_experiments()].count("workbench") == 1


# --- corrupt and unreachable files --------------------------------------------------------------


@pytest.mark.parametrize("database", ["optuna.db", "mlflow.db"])
def test_a_corrupt_database_is_named(store_copy: Path, database: str):
    path = store_copy / database
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(os.urandom(4096))
    before = _digest(store_copy)
    with pytest.raises(ConnectionError, match=f"{path}: not an SQLite database"):
        run_study(SPEC, trials=3, overrides=_overrides(store_copy))
    assert _digest(store_copy) == before


@pytest.mark.parametrize(
    "content, message",
    [(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a YAML text file"), (b"a: [1, 2\n", "not valid")],
)
def test_a_spec_file_that_is_not_yaml_is_named(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "broken.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=f"{path}: {message}"):
        load_spec(path)


def test_a_bad_override_value_is_named():
    with pytest.raises(SpecError, match="override data.batch_size"):
        load_spec(SPEC, ["data.batch_size=[unclosed"])
    with pytest.raises(SpecError, match="field path"):
        load_spec(SPEC, ["data..batch_size=3"])


def test_a_dead_tracking_server_is_named_at_once(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"no MLflow tracking server answers at {url}"):
        run_study(SPEC, trials=1, overrides=[*_overrides(tmp_path), f"tracking.mlflow_uri={url}"])
    assert time.perf_counter() - started < 30


def test_a_dead_optuna_database_server_is_named(tmp_path: Path):
    with pytest.raises(ConnectionError, match="tracking.optuna_storage: postgresql"):
        open_storage("postgresql+psycopg2://user:secret@127.0.0.1:1/optuna")


def test_a_truncated_checkpoint_is_named(tmp_path: Path, demo_store: Path):
    from workbench.registry import load_module

    source = next((demo_store / "checkpoints").rglob("*.ckpt"))
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(source.read_bytes()[:1000])
    with pytest.raises(ValueError, match=str(broken)):
        load_module(broken, "cnn")


def test_trials_that_fail_on_their_own_are_not_run_again(tmp_path: Path):
    overrides = _overrides(tmp_path / "mlruns", search_space="{}", **{"model.params.lr": "1.0e+30"})
    result = run_study(EXPERIMENTS / "breast_cancer_mlp.yaml", trials=2, overrides=overrides)
    states = [t.state for t in result.load_study().trials]
    assert states == [optuna.trial.TrialState.FAIL] * 2  # was 4: the failures were re-run
    assert result.n_complete == 0 and result.registered_model is None


def test_the_workbench_reads_its_artifacts_without_printing_progress_bars(tmp_path):
    """MLflow draws a progress bar for every download; a study's end read a dozen small files
    and printed a dozen bars. (In a fresh process: tqdm reads TQDM_DISABLE, which the tests
    set, once at import.)"""
    script = textwrap.dedent(
        f"""
        from workbench import tracking
        store = tracking.open_store({str(tmp_path / "mlruns")!r}, "quiet")
        run_id = store.client.create_run(store.experiment_id).info.run_id
        tracking.log_json(store, run_id, {{"a": 1}}, "notes/a.json")
        print("READ", tracking.read_json(store, run_id, "notes/a.json"))
        print("READ", tracking.read_artifacts(store, run_id, "notes"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "READ {'a': 1}" in done.stdout and "notes/a.json" in done.stdout
    assert "Downloading artifacts" not in done.stdout + done.stderr
