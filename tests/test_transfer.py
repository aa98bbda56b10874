"""Transfer learning: freezing policies, the backbone learning rate, gradual unfreezing, few-label
data, the spec's backbone checks, a study that searches how to fine-tune a pretrained backbone,
its lineage through MLflow's own client, and the label-efficiency command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.conftest import EXPERIMENTS, save_checkpoint, tiny
from workbench.models.freezing import frozen_count
from workbench.registry import create_model
from workbench.spec import SpecError, load_spec
from workbench.train import data_from_spec


def _transfer(freeze: str = "none", unfreeze_every: int = 0, lr_factor: float = 1.0):
    pl.seed_everything(0, verbose=False)
    base = create_model("autoencoder", input_shape=(1, 8, 8), code=4, width=4)
    return create_model(
        "transfer", input_shape=(1, 8, 8), num_classes=3, base="autoencoder",
        base_params=dict(base.hparams), freeze=freeze, unfreeze_every=unfreeze_every,
        lr_factor=lr_factor, lr=1e-2,
    )  # fmt: skip


def _train_steps(model, steps: int = 3) -> None:
    optimizer = model.configure_optimizers()["optimizer"]
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(16) % 3
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


@pytest.mark.parametrize(
    ("policy", "expected"), [("all", 3), ("none", 0), ("first_1", 1), ("first_3", 3)]
)
def test_freezing_policy_counts(policy: str, expected: int):
    assert frozen_count(policy, 3) == expected


@pytest.mark.parametrize("policy", ["first_4", "first_0", "some", "first_"])
def test_a_bad_freezing_policy_names_the_field(policy: str):
    with pytest.raises(ValueError, match="backbone.freeze"):
        frozen_count(policy, 3)


def test_frozen_blocks_keep_weights_and_batch_norm_statistics():
    model = _transfer(freeze="first_1")
    before = {k: v.clone() for k, v in model.net.blocks.state_dict().items()}
    head = [p.clone() for p in model.net.head.parameters()]
    _train_steps(model)
    after = model.net.blocks.state_dict()
    frozen = [k for k in before if k.startswith("0.")]
    trained = [k for k in before if k.startswith("1.") and k.endswith("weight")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # incl. running_mean
    assert trained and not any(torch.equal(before[k], after[k]) for k in trained)
    moved = zip(head, model.net.head.parameters(), strict=True)
    assert not any(torch.equal(a, b) for a, b in moved)
    assert not model.net.blocks[0].training and model.net.blocks[1].training


def test_the_backbone_learns_at_a_factor_of_the_heads_rate():
    model = _transfer(freeze="first_1", lr_factor=0.1)
    groups = model.configure_optimizers()["optimizer"].param_groups
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {"head": pytest.approx(1e-2), "backbone": pytest.approx(1e-3)}
    grouped = [id(p) for g in groups for p in g["params"]]  # frozen ones too, for unfreezing
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_lightning_unfreezes_at_epoch_start_and_frozen_statistics_stay():
    """Two epochs of a real Trainer: blocks frozen throughout keep weights and batch-norm
    statistics; the block released at epoch 1 trains."""
    from torch.utils.data import DataLoader, TensorDataset

    model = _transfer(freeze="all", unfreeze_every=1)
    before = {k: v.clone() for k, v in model.net.blocks.state_dict().items()}
    images = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    loader = DataLoader(TensorDataset(images, torch.arange(32) % 3), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    after = model.net.blocks.state_dict()
    assert model.net.frozen == 2  # 3 at epoch 0, 2 at epoch 1
    for key in before:
        moved = not torch.equal(before[key], after[key])
        if key.startswith(("0.", "1.")):
            assert not moved, key  # weights and running statistics
        elif key.endswith("weight"):
            assert moved, key


def test_nt_xent_by_hand():
    from workbench.models.simclr import nt_xent

    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # rows i, i+2: one image
    loss, accuracy = nt_xent(z, temperature=1.0)
    # Row 0: similarities (-inf, 0, 1, 0) to rows 0..3; its partner is row 2.
    assert float(loss) == pytest.approx(-math.log(math.e / (2 + math.e)), rel=1e-6)
    assert float(accuracy) == 1.0


def test_simclr_views_differ_and_keep_the_shape():
    from workbench.models.simclr import random_views

    images = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    first, second = random_views(images), random_views(images)
    assert first.shape == images.shape and not torch.equal(first, second)
    seeded = [random_views(images, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*seeded)  # validation views are the same every epoch


def test_digits_resized_to_the_mnist_shape():
    spec = load_spec(EXPERIMENTS / "digits_cnn.yaml", ["data.options={size: 28}"])
    data = data_from_spec(spec)
    data.setup()
    assert data.model_kwargs()["input_shape"] == (1, 28, 28)
    pixels = data.to_pixels(data.split("train")[0])
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0 + 1e-5


def test_gradual_unfreezing_releases_one_block_per_period_from_the_top():
    model = _transfer(freeze="all", unfreeze_every=2)
    counts = [model.unfreezing.frozen_at(epoch) for epoch in range(8)]
    assert counts == [3, 3, 2, 2, 1, 1, 0, 0]
    model.unfreezing.apply(4)
    trainable = [all(p.requires_grad for p in b.parameters()) for b in model.net.blocks]
    assert trainable == [False, True, True]


def test_labels_per_class_keeps_that_many_and_the_split_stays(tmp_path: Path):
    def splits(seed: int):
        spec = load_spec(
            EXPERIMENTS / "mnist_cnn.yaml",
            [f"seed={seed}", "data.split_seed=42", "data.labels_per_class=3",
             "data.max_samples=300"],
        )  # fmt: skip
        data = data_from_spec(spec)
        data.setup()
        return data

    first, second = splits(1), splits(2)
    labels = first.split("train")[1]
    assert torch.bincount(labels).tolist() == [3] * 10
    assert torch.bincount(first.split("val")[1]).tolist() == [3] * 10  # validates on as few
    assert torch.equal(first.split("test")[0], second.split("test")[0])  # one split
    assert len(first.split("test")[1]) == 30
    assert not torch.equal(first.split("train")[0], second.split("train")[0])  # other labels


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["backbone.source=study:x"], "backbone.source"),  # cnn is trained from scratch
        (["model.name=transfer"], "backbone.source"),  # transfer needs a source
        (["backbone.freeze=all"], "backbone.freeze"),  # cnn has no backbone to freeze
        (
            ["model.name=transfer", "backbone.source=nowhere.ckpt", "backbone.model=cnn"],
            "backbone.source",
        ),  # fmt: skip
        (["model.name=transfer", "backbone.source=x.ckpt"], "backbone.model"),
        (["model.name=transfer", "backbone.source=study:a/b"], "backbone.source"),
        (
            ["model.name=transfer", "backbone.source=study:x", "backbone.lr_factor=0"],
            "backbone.lr_factor",
        ),  # fmt: skip
    ],
)
def test_backbone_spec_errors_name_the_field(overrides: list[str], field: str):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        load_spec(EXPERIMENTS / "mnist_cnn.yaml", ["model.params={}", *overrides])


def test_a_backbone_from_another_split_of_the_same_data_is_refused(fine_tuned):
    """Its training images could be this spec's test images."""
    from workbench.train import backbone_of

    root, base, _, _ = fine_tuned
    spec = load_spec(
        EXPERIMENTS / "mnist_transfer.yaml",
        tiny(root, **{"backbone.source": f"study:{base.name}", "data.split_seed": 7}),
    )
    with pytest.raises(SpecError, match="data.split_seed"):
        backbone_of(spec)
    same = load_spec(spec.to_dict(), ["data.split_seed=42"])
    assert backbone_of(same).spec.name == base.name  # the same split is accepted


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory):
    """A tiny SimCLR study, then a transfer study on its champion that searches the freezing
    policy, the backbone's learning-rate factor and the head's learning rate."""
    from workbench.study import run_study

    root = tmp_path_factory.mktemp("transfer") / "mlruns"
    base = load_spec(
        EXPERIMENTS / "mnist_simclr.yaml", tiny(root, **{"study.trials": 1, "name": "pre"})
    )
    run_study(base)
    spec = load_spec(
        EXPERIMENTS / "mnist_transfer.yaml",
        tiny(
            root,
            **{
                "name": "fine",
                "backbone.source": "study:pre",
                "study.trials": 3,
                "study.pruner": "none",
                "study.pruner_options": "{}",
                "trainer.max_epochs": 2,
                "explain.enabled": False,
            },
        ),
    )
    result = run_study(spec)
    return root, base, spec, result


def test_a_study_searches_freezing_and_both_learning_rates(fine_tuned):
    import optuna

    root, _, spec, result = fine_tuned
    study = optuna.load_study(study_name="fine", storage=f"sqlite:///{root}/optuna.db")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 3
    for trial in trials:
        assert set(trial.params) == {"backbone.freeze", "backbone.lr_factor", "lr"}
        assert trial.params["backbone.freeze"] in {"all", "none", "first_2"}
        assert 0.03 <= trial.params["backbone.lr_factor"] <= 1.0
        assert 0.0 <= trial.user_attrs["test_metrics"]["test/acc"] <= 1.0


def test_a_frozen_backbone_holds_the_pretrained_weights(fine_tuned):
    """Trials that froze every block end with the base champion's encoder weights unchanged;
    the others moved them."""
    import optuna

    from workbench.registry import read_checkpoint

    root, base, _, _ = fine_tuned
    pre = optuna.load_study(study_name="pre", storage=f"sqlite:///{root}/optuna.db")
    encoder = read_checkpoint(pre.best_trial.user_attrs["checkpoint"])["state_dict"]
    first_conv = encoder["net.encoder.features.0.weight"]
    study = optuna.load_study(study_name="fine", storage=f"sqlite:///{root}/optuna.db")
    statistics = encoder["net.encoder.features.1.running_mean"]
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len({t.params["backbone.freeze"] for t in trials}) >= 2  # both outcomes are checked
    for trial in trials:
        tuned = read_checkpoint(trial.user_attrs["checkpoint"])["state_dict"]
        frozen = trial.params["backbone.freeze"] in {"all", "first_2"}
        assert torch.equal(tuned["net.blocks.0.0.weight"], first_conv) == frozen
        assert torch.equal(tuned["net.blocks.0.1.running_mean"], statistics) == frozen


def test_lineage_runs_from_pretraining_to_the_registered_fine_tuned_model(fine_tuned):
    from workbench.cli import main

    root, _, _, result = fine_tuned
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    champion = client.get_model_version_by_alias("fine", "champion")
    fine_run = client.get_run(champion.run_id)
    tags = fine_run.data.tags
    base_version = client.get_model_version_by_alias("pre", "champion")
    assert tags["workbench.base.run"] == base_version.run_id
    assert tags["workbench.base.version"] == f"pre/{base_version.version}"
    base_model_id = tags["workbench.base.model"].removeprefix("models:/")
    assert client.get_logged_model(base_model_id).source_run_id == base_version.run_id
    assert [m.model_id for m in fine_run.inputs.model_inputs] == [base_model_id]

    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["lineage", "models:/fine@champion", "--root", str(root)]) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"pretraining run {base_version.run_id}")
    assert f"base model models:/pre/{base_version.version}" in lines[1]
    assert f"fine-tuning run {champion.run_id}" in lines[2]
    assert f"registered model models:/fine/{champion.version}@champion" in lines[3]


def test_a_fine_tuned_model_explains_and_exports_like_any_other(fine_tuned, tmp_path: Path):
    from workbench.deploy.export import export_onnx, onnx_max_abs_difference
    from workbench.trained_model import trained

    root, _, _, _ = fine_tuned
    model = trained("models:/fine@champion", root=root)
    assert model.spec.model.name == "transfer"
    report = model.explain(log=False, n=2, background=8, lime_samples=30, methods=("shap",))
    shap_scores = report.scores_by_method()["shap"]
    assert shap_scores and all(np.isfinite(v) for v in shap_scores.values())
    assert report.explanations["shap"].attributions.shape[0] == 2
    inputs = model.module.example_input(model.data, 8)
    path = export_onnx(model.network.eval(), inputs[:2], tmp_path / "fine.onnx")
    assert onnx_max_abs_difference(path, model.network, inputs) < 1e-4


def test_mean_interval_by_hand():
    from workbench.stats import mean_interval

    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) s/√n
    assert mean_interval([0.5]) == (0.5, 0.0)


def test_label_efficiency_trains_each_arm_and_logs_table_and_figure(fine_tuned):
    from workbench.label_efficiency import label_efficiency

    root, _, spec, _ = fine_tuned
    tiny_spec = load_spec(spec.to_dict(), ["trainer.max_epochs=1", "search_space={}"])
    result = label_efficiency(
        tiny_spec,
        labels=(2, None),
        seeds=2,
        arms=("scratch", "frozen"),
        progress=False,
        min_steps=6,
    )
    assert len(result.rows) == 2 * 2 * 2
    sizes = {(r["labels"], r["seed"]) for r in result.rows}
    assert sizes == {(2, 42), (2, 43), (None, 42), (None, 43)}
    assert {(s["arm"], s["labels"], s["n"]) for s in result.summary} == {
        ("scratch", 2, 2), ("scratch", None, 2), ("frozen", 2, 2), ("frozen", None, 2)
    }  # fmt: skip
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"label_efficiency.png", "label_efficiency.csv"} <= artifacts
    csv = Path(client.download_artifacts(result.run_id, "label_efficiency.csv")).read_text()
    assert len(csv.strip().splitlines()) == 1 + 8
    for row in result.rows:  # each run is a finished child with its test accuracy
        run = client.get_run(row["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == result.run_id
        assert run.data.metrics["test/acc"] == pytest.approx(row["test_acc"])
        train_size = int(run.data.params["train_size"])
        assert train_size == (20 if row["labels"] == 2 else 240)
        assert int(run.data.params["val_size"]) == (20 if row["labels"] == 2 else 30)
        steps = math.ceil(train_size / tiny_spec.data.batch_size)
        assert int(run.data.params["max_epochs"]) == max(1, math.ceil(6 / steps))  # min_steps
        pretrained = run.data.tags["workbench.base.pretrained"] == "true"
        assert pretrained == (row["arm"] == "frozen")
    assert len({r["test_fingerprint"] for r in result.rows}) == 1  # one test split for all


def test_save_checkpoint_of_a_transfer_model_needs_no_backbone_source(tmp_path: Path):
    """A fine-tuned checkpoint rebuilds from its own hyperparameters: the base study may be
    gone."""
    from workbench.registry import load_module

    model = _transfer(freeze="first_1")
    path = save_checkpoint(model, tmp_path / "t.ckpt")
    loaded = load_module(path, "transfer")
    images = torch.rand(2, 1, 8, 8)
    model.eval()
    assert torch.equal(loaded(images), model(images))
    assert loaded.net.frozen == 1


def test_each_trial_run_records_its_training_data_as_a_dataset_input(fine_tuned):
    root, _, spec, result = fine_tuned
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.get_run(client.get_model_version_by_alias("fine", "champion").run_id)
    (dataset,) = [d.dataset for d in run.inputs.dataset_inputs]
    assert dataset.name == "mnist_subset"
    assert run.data.tags["data.fingerprint"].startswith(dataset.digest)
    assert json.loads(dataset.profile) == {"train_rows": 240, "val_rows": 30, "test_rows": 30}


def test_the_arms_differ_only_in_weights_and_what_trains():
    from workbench.label_efficiency import variant

    spec = load_spec(
        EXPERIMENTS / "mnist_transfer.yaml",
        ["backbone.unfreeze_every=2", "model.params.head_hidden=16", "backbone.lr_factor=0.3"],
    )
    scratch, frozen, tuned = (variant(spec, arm, 10, 7) for arm in ("scratch", "frozen",
                                                                     "finetuned"))  # fmt: skip
    assert (scratch.backbone.pretrained, scratch.backbone.lr_factor) == (False, 1.0)
    assert scratch.backbone.unfreeze_every == 0 and scratch.backbone.freeze == "none"
    assert frozen.backbone.freeze == "all" and frozen.backbone.unfreeze_every == 0
    assert frozen.model.params["head_hidden"] == 0  # a linear probe
    assert tuned.backbone.lr_factor == 0.3 and tuned.backbone.pretrained
    for one in (scratch, frozen, tuned):
        assert (one.seed, one.data.split_seed, one.data.labels_per_class) == (7, 42, 10)
