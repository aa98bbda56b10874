"""The spine end to end: spec → data → model → Trainer → Optuna → MLflow, on real digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, tiny
from workbench import tracking
from workbench.registry import load_module
from workbench.spec import load_spec
from workbench.study import run_study
from workbench.train import data_from_spec

SPEC = EXPERIMENTS / "mnist_cnn.yaml"


def _children(result) -> list:
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'",
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("study") / "mlruns"
    spec = load_spec(SPEC, tiny(root, **{"data.max_samples": 600, "trainer.max_epochs": 2}))
    return spec, run_study(spec, trials=2)


def test_study_runs_every_trial_into_a_nested_finished_run(finished):
    spec, result = finished
    assert (result.n_complete, result.n_pruned, result.n_failed) == (2, 0, 0)
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert (
        parent.data.tags[tracking.ROLE] == "study" and parent.data.tags[tracking.STUDY] == spec.name
    )
    children = _children(result)
    assert sorted(int(r.data.tags[tracking.TRIAL]) for r in children) == [0, 1]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["data.fingerprint"] and run.data.tags["seed"] == "42"
        assert run.data.tags["git_commit"]
        assert {"lr", "width", "dropout", "weight_decay"} <= set(run.data.params)
        # Real learning on 480 training digits in 2 epochs: far above chance (0.1).
        assert 0.3 < run.data.metrics["test/acc"] <= 1.0
        assert 0.0 < run.data.metrics["test/loss"] < 2.3
        # What a reviewer expects, for every class of the test split.
        assert 0.5 < run.data.metrics["test/auroc"] <= 1.0
        assert 0.0 <= run.data.metrics["test/ece"] <= 1.0
        for k in range(10):
            for name in ("precision", "recall", "f1"):
                assert 0.0 <= run.data.metrics[f"test/class_{k}/{name}"] <= 1.0
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [m.step for m in history] == [0, 1]


def test_trials_and_runs_agree(finished):
    spec, result = finished
    study = result.load_study()
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    run_ids = {r.info.run_id: r for r in _children(result)}
    for trial in trials:
        run = run_ids[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags[tracking.TRIAL] == str(trial.number)
        # The trial's value is the best epoch's val/acc, as logged per epoch in its run.
        history = MlflowClient(result.tracking_uri).get_metric_history(run.info.run_id, "val/acc")
        assert trial.value == pytest.approx(max(m.value for m in history))
    assert result.best_value == pytest.approx(max(t.value for t in trials))


CHAMPION_PLOTS = {
    "plots/learning_curves.png",
    "plots/confusion_matrix.png",
    "plots/reliability.png",
}


def _logged(client, run_id: str) -> tuple[set[str], list]:
    plots = {f.path for f in client.list_artifacts(run_id, "plots")}
    run = client.get_run(run_id)
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    return plots, models


def test_the_champion_holds_its_model_plots_and_explanations(finished):
    """``tracking.log_models: best`` (the default): only the champion's run holds a model and
    figures, logged from its checkpoint when the study ends; the other trials paid for neither."""
    spec, result = finished
    assert spec.tracking.log_models == "best"
    client = MlflowClient(result.tracking_uri)
    for run in _children(result):
        plots, models = _logged(client, run.info.run_id)
        if run.info.run_id == result.best_run_id:
            assert plots == CHAMPION_PLOTS
            assert [f"models:/{m.model_id}" for m in models] == [result.model_uri]
            # Logged into the finished run, which keeps its status and the end of its trial.
            trial = result.load_study().trials[result.best_trial]
            assert run.info.status == "FINISHED"
            assert run.info.end_time <= trial.datetime_complete.timestamp() * 1000
        else:
            assert plots == set() and models == []
    explained = {f.path for f in client.list_artifacts(result.best_run_id, "explain")}
    assert {
        "explain/shap.png",
        "explain/lime.png",
        "explain/shap_vs_lime.png",
        "explain/attributions.npz",
    } <= explained
    local = client.download_artifacts(result.best_run_id, "explain/attributions.npz")
    arrays = np.load(local)
    assert arrays["shap"].shape == arrays["lime"].shape == (2, 28, 28)
    assert np.isfinite(arrays["shap"]).all() and np.abs(arrays["shap"]).sum() > 0
    png = Path(client.download_artifacts(result.best_run_id, "explain/shap.png")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    summary = {f.path for f in client.list_artifacts(result.parent_run_id)}
    assert {"trials.csv", "spec.json"} <= summary


def test_best_model_is_registered_and_serves_the_same_predictions(finished):
    spec, result = finished
    client = MlflowClient(result.tracking_uri)
    version = client.get_model_version_by_alias(result.registered_model, "champion")
    assert int(version.version) == result.registered_version
    assert version.run_id == result.best_run_id
    network = tracking.load_network(f"models:/{result.registered_model}@champion")
    data = data_from_spec(spec)
    inputs = data.split("test")[0][:16]
    trial = result.load_study().trials[result.best_trial]
    module = load_module(trial.user_attrs["checkpoint"], "cnn")
    with torch.no_grad():
        assert torch.allclose(network(inputs), module(inputs), atol=1e-5)


def test_resume_runs_only_the_missing_trials_in_the_same_parent(tmp_path: Path):
    overrides = tiny(tmp_path / "mlruns", **{"explain.enabled": False})
    first = run_study(SPEC, trials=1, overrides=overrides)
    second = run_study(SPEC, trials=2, overrides=overrides)
    assert second.parent_run_id == first.parent_run_id
    assert second.n_complete == 2
    assert len(_children(second)) == 2
    third = run_study(SPEC, trials=2, overrides=overrides)  # already there: nothing to run
    assert third.n_complete == 2 and len(_children(third)) == 2
    # The registry keeps one version per best-model change, not one per invocation.
    assert third.registered_version == second.registered_version
    assert third.best_run_id == second.best_run_id
    versions = MlflowClient(third.tracking_uri).search_model_versions("name = 'mnist_cnn'")
    champions = {first.best_run_id, second.best_run_id}
    assert sorted(v.run_id for v in versions) == sorted(champions)


def test_log_models_all_logs_every_trial_and_a_new_champion_is_logged_on_resume(tmp_path: Path):
    root = tmp_path / "mlruns"
    every = run_study(SPEC, trials=2, overrides=tiny(root, **{"tracking.log_models": "all",
                      "explain.enabled": False, "name": "every"}))  # fmt: skip
    client = MlflowClient(every.tracking_uri)
    for run in _children(every):
        plots, models = _logged(client, run.info.run_id)
        assert plots == CHAMPION_PLOTS
        assert len(models) == 1
    # Under "best", a resumed study whose champion changes logs the new champion once.
    overrides = tiny(root, **{"explain.enabled": False, "name": "resumed"})
    first = run_study(SPEC, trials=1, overrides=overrides)
    later = run_study(SPEC, trials=3, overrides=overrides)
    logged = {r.info.run_id: len(_logged(client, r.info.run_id)[1]) for r in _children(later)}
    champions = {first.best_run_id, later.best_run_id}
    assert logged == {run_id: int(run_id in champions) for run_id in logged}
    again = run_study(SPEC, trials=3, overrides=overrides)  # nothing new: nothing logged twice
    assert again.model_uri == later.model_uri
    assert len(_logged(client, later.best_run_id)[1]) == 1


def test_pruned_trials_end_killed_not_failed(tmp_path: Path):
    overrides = tiny(
        tmp_path / "mlruns",
        **{
            "study.pruner": "threshold",
            # val/acc can never reach 2.0: every trial is pruned at its first report.
            "study.pruner_options": "{lower: 2.0}",
            "explain.enabled": False,
        },
    )
    result = run_study(SPEC, trials=2, overrides=overrides)
    assert (result.n_complete, result.n_pruned) == (0, 2)
    assert result.registered_model is None
    children = _children(result)
    assert [r.info.status for r in children] == ["KILLED", "KILLED"]
    assert all("pruned" in r.data.tags["workbench.end_reason"] for r in children)


def test_each_trials_cyclic_garbage_is_freed_before_the_next_and_the_freeze_is_undone():
    """The collection between trials (in place of Optuna's gc_after_trial) frees a trial's
    model held in a reference cycle, as Lightning's module and trainer are, before the next
    trial starts; objects that survived the first collection are frozen during the study and
    given back to the collector after it."""
    import gc
    import weakref

    from workbench.study.workers import CollectBetweenTrials

    previous: list[weakref.ref] = []
    alive_at_start = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1000))
            self.me = self  # a cycle: only the collector frees it

    def objective(trial):
        alive_at_start.append([ref() is not None for ref in previous])
        model = Model()
        previous.append(weakref.ref(model))
        return float(trial.number)

    gc.disable()  # no automatic collection may free the cycles for us
    collect = CollectBetweenTrials()
    try:
        study = optuna.create_study()
        study.optimize(objective, n_trials=3, callbacks=[collect])
        assert gc.get_freeze_count() > 0  # the first trial's survivors are frozen
    finally:
        collect.release()
        gc.enable()
    assert alive_at_start == [[], [False], [False, False]]
    assert gc.get_freeze_count() == 0

    # In a thread (a notebook's background study) nothing is frozen: freezing is process-wide
    # and would hold the kernel's own objects; each trial's garbage is still collected.
    import threading

    previous.clear()
    alive_at_start.clear()
    frozen = []

    def in_a_thread():
        collect = CollectBetweenTrials()
        study = optuna.create_study()
        study.optimize(
            objective,
            n_trials=3,
            callbacks=[collect, lambda s, t: frozen.append(gc.get_freeze_count())],
        )
        collect.release()

    gc.disable()
    try:
        thread = threading.Thread(target=in_a_thread)
        thread.start()
        thread.join()
    finally:
        gc.enable()
    assert alive_at_start == [[], [False], [False, False]]
    assert frozen == [0, 0, 0]


def test_garbage_from_before_the_study_is_freed_by_its_first_collection():
    """The collection after the first trial is a full one: it also frees what was garbage when
    the study started (a Lightning module from an earlier study, say, holding GPU memory).
    Freezing at the study's start instead (tried: 0.68 s less a study) kept such garbage frozen
    through back-to-back studies, since each new study froze it again."""
    import gc
    import weakref

    from workbench.study.workers import CollectBetweenTrials

    class Cycle:
        def __init__(self):
            self.me = self

    gc.disable()
    collect = None
    try:
        for _ in range(2):  # two studies back to back, as a search and its confirmation
            before = Cycle()
            from_before = weakref.ref(before)
            del before  # garbage, in a cycle: only the collector frees it
            collect = CollectBetweenTrials()
            collect(None, None)  # the first trial ends
            assert from_before() is None
            collect.release()
    finally:
        if collect is not None:
            collect.release()
        gc.enable()


def test_epoch_metrics_are_written_in_batches_and_kept_however_the_block_ends(tmp_path: Path):
    """Per-epoch metrics wait in memory and reach the run in one write at the block's end (or
    after flush_s, or MLflow's 1000 a batch); a run ended by an exception keeps every epoch."""
    store = tracking.open_store(tmp_path / "mlruns", "epochs")
    client = store.client

    def history(run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]

    run = tracking.start_run(store, "batched", {})
    with tracking.EpochMetrics(store, run, flush_s=3600) as epochs:
        for epoch in range(3):
            epochs.add({"val/loss": 1.0 / (epoch + 1), "train/loss": 2.0}, epoch)
        assert history(run, "val/loss") == []  # nothing written yet: one write at the end
    assert history(run, "val/loss") == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]

    pruned = tracking.start_run(store, "pruned", {})
    with pytest.raises(optuna.TrialPruned):
        with tracking.EpochMetrics(store, pruned, flush_s=3600) as epochs:
            epochs.add({"val/loss": 0.7}, 0)
            epochs.add({"val/loss": 0.9}, 1)
            raise optuna.TrialPruned("pruned at epoch 1")
    assert history(pruned, "val/loss") == [(0, 0.7), (1, 0.9)]

    # A write that fails keeps its values: the next flush writes them.
    failing = tracking.start_run(store, "failing", {})
    epochs = tracking.EpochMetrics(store, failing, flush_s=3600)
    epochs.add({"val/loss": 0.3}, 0)
    client.delete_run(failing)  # MLflow refuses to log to a deleted run
    with pytest.raises(Exception, match="deleted|active"):
        epochs.flush()
    client.restore_run(failing)
    epochs.flush()
    assert history(failing, "val/loss") == [(0, 0.3)]

    every = tracking.start_run(store, "immediate", {})
    with tracking.EpochMetrics(store, every, flush_s=0) as epochs:
        epochs.add({"val/loss": 0.5}, 0)
        assert history(every, "val/loss") == [(0, 0.5)]  # flush_s passed: written at once

    many = tracking.start_run(store, "many", {})
    with tracking.EpochMetrics(store, many, flush_s=3600) as epochs:
        for epoch in range(700):  # 1400 values: more than MLflow takes in one batch
            epochs.add({"a": epoch, "b": -epoch}, epoch)
        assert len(epochs.waiting) == 400  # the first 1000 were written when they filled a batch
    assert len(history(many, "a")) == len(history(many, "b")) == 700


def test_a_study_trial_logs_every_epoch_of_its_history(finished):
    """Each trial's run holds one val/loss per epoch it trained (written in batches)."""
    spec, result = finished
    client = MlflowClient(result.tracking_uri)
    for run in _children(result):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
        assert steps == list(range(int(run.data.metrics["epochs"])))


def test_the_pruner_is_asked_only_once_it_can_prune_and_every_epoch_is_reported():
    """A trial worse than the median is pruned at the pruner's first step past its warm-up, as
    with optuna-integration's own callback; epochs before it are reported, not asked about."""
    import lightning.pytorch as pl

    from workbench.study.ddp import pruning_callback

    class Constant(pl.LightningModule):  # val/loss 1.0 every epoch: worse than the median
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", 1.0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(1, n_warmup_steps=3))
    done = study.ask()
    for step in range(6):
        done.report(0.1, step)
    study.tell(done, 0.1)

    trial = study.ask()
    asked = []
    should_prune = trial.should_prune
    trial.should_prune = lambda: asked.append(trial.number) or should_prune()
    rows = torch.utils.data.TensorDataset(torch.randn(8, 2))
    loader = torch.utils.data.DataLoader(rows, batch_size=4)
    trainer = pl.Trainer(
        max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        callbacks=[pruning_callback(trial, "val/loss", distributed=False)],
        num_sanity_val_steps=0, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(optuna.TrialPruned, match="epoch 3"):
        trainer.fit(Constant(), loader, loader)
    reported = study._storage.get_trial(trial._trial_id).intermediate_values
    assert reported == {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}
    assert len(asked) == 1  # at epoch 3 only, not at 0-2
