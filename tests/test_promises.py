"""What the README promises and no other test checks, each through the real path: a diverging
trial inside a study, `workbench export` and `workbench compress` from the command line,
`--workers 2` on the default SQLite store, the CMA-ES sampler, every pruner actually pruning, and
checkpoint loading that refuses a pickle."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from tests.test_cli import _run, _sets
from workbench import tracking
from workbench.spec import load_spec
from workbench.study import run_study, storage_url

DIGITS = EXPERIMENTS / "digits_cnn.yaml"
MNIST = EXPERIMENTS / "mnist_cnn.yaml"
GOOD_LR = "{lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}}"
WIDE_LR = "{lr: {type: float, low: 1.0e-8, high: 1.0e10, log: true}}"


def _digits(root: Path, **extra):
    """The 8×8 digits CNN at a size where one epoch learns (over 50 % validation accuracy)."""
    settings = {"data.max_samples": 600, "data.augment": False, "explain.enabled": False, **extra}
    return load_spec(DIGITS, tiny(root, **settings))


def _good_trial_then_queued(root: Path, *learning_rates: float, **extra):
    """Run trial 0 with a learning rate that learns, then widen the search space and queue
    trials with these learning rates for the resume: the order of good and bad trials is the
    test's, not the sampler's. Returns the spec to resume with."""
    run_study(_digits(root, search_space=GOOD_LR, **extra), trials=1)
    spec = _digits(root, search_space=WIDE_LR, **extra)
    study = optuna.load_study(study_name=spec.name, storage=storage_url(spec))
    for lr in learning_rates:
        study.enqueue_trial({"lr": lr})
    return spec


def _trial_runs(result) -> dict[int, object]:
    """Each trial's MLflow child run, by trial number; exactly one run per trial."""
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_run(result.parent_run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"
    )
    runs = {int(r.data.tags[tracking.TRIAL]): r for r in children}
    assert len(runs) == len(children), "a trial has more than one run"
    return runs


# --- a diverging trial ------------------------------------------------------------------------
def test_a_diverging_trial_fails_and_the_study_goes_on(tmp_path: Path):
    # Trial 1's loss becomes NaN within its first epoch; trials 2 and 3 learn.
    spec = _good_trial_then_queued(tmp_path / "mlruns", 1e10, 3e-3, 3e-3, name="diverging")
    result = run_study(spec, trials=3)

    assert (result.n_complete, result.n_pruned, result.n_failed) == (3, 0, 1)
    states = [t.state for t in result.load_study().trials]
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert states == [complete, fail, complete, complete]
    runs = _trial_runs(result)
    statuses = {n: r.info.status for n, r in runs.items()}
    assert statuses == {0: "FINISHED", 1: "FAILED", 2: "FINISHED", 3: "FINISHED"}
    reason = runs[1].data.tags["workbench.end_reason"]
    assert reason.startswith("FloatingPointError: train/loss became nan"), reason
    # The champion is a finished trial's model, never the diverged one's.
    client = MlflowClient(result.tracking_uri)
    champion = client.get_model_version_by_alias(result.registered_model, "champion")
    assert champion.run_id == result.best_run_id
    assert champion.run_id != runs[1].info.run_id
    assert client.get_run(champion.run_id).info.status == "FINISHED"
    assert client.get_run(result.parent_run_id).info.status == "FINISHED"


# --- export and compress from the command line ------------------------------------------------
@pytest.fixture(scope="module")
def cnn_store(tmp_path_factory) -> tuple[list[str], object]:
    """A finished one-trial MNIST CNN study: the overrides that name it, and its result."""
    root = tmp_path_factory.mktemp("cli_store") / "mlruns"
    overrides = tiny(root, **{"explain.enabled": False, "data.augment": False})
    return overrides, run_study(load_spec(MNIST, overrides), trials=1)


def _best_network(result):
    from workbench.registry import load_module

    trial = result.load_study().trials[result.best_trial]
    return load_module(trial.user_attrs["checkpoint"], "cnn").net.eval()


def test_export_writes_torchscript_and_onnx_that_compute_the_network(cnn_store, tmp_path: Path):
    from workbench.deploy.export import onnx_max_abs_difference
    from workbench.train import data_from_spec

    overrides, result = cnn_store
    out = tmp_path / "exports"
    done = _run(["export", str(MNIST), *_sets(overrides), "--out", str(out)], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    script, onnx_file = out / "mnist_cnn.pt", out / "mnist_cnn.onnx"
    assert f"TorchScript: {script}" in done.stdout and f"ONNX:        {onnx_file}" in done.stdout
    printed = re.search(r"max \|onnxruntime - torch\| on 64 test inputs: (\S+)\)", done.stdout)
    assert printed and float(printed.group(1)) <= 1e-4, done.stdout
    assert result.model_uri in done.stdout

    network = _best_network(result)
    inputs = data_from_spec(load_spec(MNIST, overrides)).split("test")[0][:16]
    with torch.no_grad():
        expected = network(inputs)
        torch.testing.assert_close(torch.jit.load(str(script))(inputs), expected, atol=1e-5, rtol=0)
    assert onnx_max_abs_difference(onnx_file, network, inputs) <= 1e-4


@pytest.mark.slow
def test_compress_prints_every_variant_and_logs_it(cnn_store, tmp_path: Path):
    overrides, result = cnn_store
    args = ["compress", str(MNIST), *_sets(overrides), "--distill-epochs", "1"]
    done = _run([*args, "--finetune-epochs", "1"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    assert lines[header].split()[1:3] == ["test", "acc"]
    table = {}
    for line in lines[header + 1 : header + 7]:
        name, numbers = line[:24].strip(), line[24:].split()
        table[name] = [float(n) for n in numbers]
    assert set(table) == {
        "original (fp32)",
        "magnitude-pruned 50%",
        "channel-pruned 50%",
        "dynamic int8",
        "static int8",
        "distilled student",
    }
    original = table["original (fp32)"]
    # The original row is the study's best model on the test split: its accuracy, no change,
    # its parameter count, ratio 1.
    assert original[0] == pytest.approx(result.test_metrics["test/acc"], abs=1e-4)
    assert original[1] == 0.0 and original[4] == 1.0
    network = _best_network(result)
    assert original[2] == sum(int((p != 0).sum()) for p in network.parameters())
    assert table["distilled student"][2] * 4 <= original[2]
    assert table["dynamic int8"][4] > 1.0 and table["static int8"][4] > 1.0  # smaller files
    for name, row in table.items():
        assert 0.0 <= row[0] <= 1.0 and row[5] > 0 and row[6] > 0, (name, row)

    client = MlflowClient(result.tracking_uri)
    experiment = client.get_run(result.best_run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{result.best_run_id}'"
    )
    assert sorted(r.data.params["variant"] for r in children) == sorted(table)
    for run in children:
        assert run.info.status == "FINISHED"
        accuracy = table[run.data.params["variant"]][0]
        assert run.data.metrics["test/acc"] == pytest.approx(accuracy, abs=1e-4)


# --- two workers on SQLite --------------------------------------------------------------------
@pytest.mark.slow
def test_two_workers_on_the_default_sqlite_store(tmp_path: Path):
    root = tmp_path / "mlruns"
    # Trials long enough (about 10 s) for the second process to start (imports, data, stores)
    # while the first still has trials to run.
    settings = {
        "data.max_samples": 1000,
        "data.augment": False,
        "trainer.max_epochs": 10,
        "trainer.patience": 10,
        "study.pruner": "none",
        "study.pruner_options": "{}",
        "explain.enabled": False,
    }
    overrides = tiny(root, **settings)
    args = ["study", str(MNIST), "--trials", "3", "--workers", "2", *_sets(overrides)]
    done = _run(args, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "running 3 more on 2 workers" in done.stdout
    assert "3 complete, 0 pruned, 0 failed" in done.stdout

    spec = load_spec(MNIST, overrides)
    trials = optuna.load_study(study_name=spec.name, storage=storage_url(spec)).get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # Two processes trained at once: some two trials overlap in time.
    spans = [(t.datetime_start, t.datetime_complete) for t in trials]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :]), (
        spans
    )
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE) == "trial"]
    assert sorted(int(r.data.tags[tracking.TRIAL]) for r in children) == [0, 1, 2]
    assert {r.info.status for r in children} == {"FINISHED"}
    parents = {r.data.tags["mlflow.parentRunId"] for r in children}
    assert len(parents) == 1  # the worker's trials sit under the same study run
    for trial in trials:
        (run,) = [r for r in children if r.info.run_id == trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags[tracking.TRIAL] == str(trial.number)


# --- CMA-ES -----------------------------------------------------------------------------------
def test_cmaes_sampler_searches_a_float_space(tmp_path: Path):
    space = (
        "{lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}, "
        "dropout: {type: float, low: 0.0, high: 0.5}}"
    )
    spec = _digits(
        tmp_path / "mlruns", **{"study.sampler": "cmaes", "search_space": space, "name": "cma"}
    )
    result = run_study(spec, trials=3)
    assert (result.n_complete, result.n_failed) == (3, 0)
    trials = result.load_study().trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    # The first trial is the sampler's random start-up; the later ones are CMA-ES proposals.
    assert all("cma:generation" in t.system_attrs for t in trials[1:]), trials[1].system_attrs
    for trial in trials:
        assert set(trial.params) == {"lr", "dropout"}
        assert 1e-3 <= trial.params["lr"] <= 1e-2 and 0.0 <= trial.params["dropout"] <= 0.5
    assert len({t.params["lr"] for t in trials}) == 3


# --- every pruner prunes ------------------------------------------------------------------------
PRUNERS = {
    # A learning trial (lr 1e-3 to 1e-2) completes first; then a trial that cannot learn
    # (lr 1e-8) is worse at every step, and each pruner must stop it.
    "median": "{n_startup_trials: 1, n_warmup_steps: 0}",
    "percentile": "{percentile: 25.0, n_startup_trials: 1, n_warmup_steps: 0}",
    "successive_halving": "{min_resource: 1, reduction_factor: 2}",  # rung 0 at epoch 1
    # Resources 1 to max_epochs (the workbench's default); a reduction factor above 3 keeps it to
    # one bracket over 3 epochs, so that both trials compete (Optuna hashes trials to brackets).
    "hyperband": "{reduction_factor: 4}",
    "threshold": "{lower: 0.3}",
}


@pytest.mark.parametrize("pruner", sorted(PRUNERS))
def test_each_pruner_prunes_a_trial_that_cannot_learn(pruner: str, tmp_path: Path):
    settings = {
        "name": f"prune-{pruner}",
        "trainer.max_epochs": 3,
        "study.pruner": pruner,
        "study.pruner_options": PRUNERS[pruner],
    }
    spec = _good_trial_then_queued(tmp_path / "mlruns", 1e-8, **settings)
    result = run_study(spec, trials=2)

    assert result.n_pruned >= 1
    assert (result.n_complete, result.n_pruned, result.n_failed) == (1, 1, 0)
    trials = result.load_study().trials
    assert [t.state for t in trials] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    ]
    assert len(trials[1].intermediate_values) < spec.trainer.max_epochs  # stopped early
    runs = _trial_runs(result)
    assert {n: r.info.status for n, r in runs.items()} == {0: "FINISHED", 1: "KILLED"}
    assert "pruned" in runs[1].data.tags["workbench.end_reason"].lower()
    assert result.best_trial == 0


# --- checkpoints refuse pickles -----------------------------------------------------------------
class _Payload:
    """Pickles as a call of ``os.mkdir(marker)``: unpickling it runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("loader", ["load_module", "load_checkpoint_weights"])
def test_checkpoint_loading_refuses_a_pickle_without_running_it(loader: str, tmp_path: Path):
    from workbench.registry import create_model, load_module
    from workbench.train import load_checkpoint_weights

    marker = tmp_path / "code-ran"
    model = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, width=8)
    checkpoint = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": {"width": _Payload(marker)}},
        checkpoint,
    )
    with pytest.raises((ValueError, pickle.UnpicklingError)) as refused:
        if loader == "load_module":
            load_module(checkpoint, "cnn")
        else:
            load_checkpoint_weights(model, checkpoint)
    chain = [refused.value, refused.value.__cause__, refused.value.__context__]
    assert any("mkdir" in str(e) for e in chain if e is not None), refused.value  # why: the call
    assert not marker.exists(), "the pickled code ran"
    # The payload is live: an unsafe load would have run it.
    torch.load(checkpoint, weights_only=False)
    assert marker.is_dir()


def test_an_honest_checkpoint_still_loads(tmp_path: Path):
    from tests.conftest import save_checkpoint
    from workbench.registry import create_model, load_module

    model = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, width=8).eval()
    path = save_checkpoint(model, tmp_path / "honest.ckpt")
    inputs = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype("f4"))
    with torch.no_grad():
        assert torch.equal(load_module(path, "cnn")(inputs), model(inputs))
