"""train.fit on its own: history, checkpoints, a diverged run stopped with a clear error."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from workbench.registry import create_data, create_model, load_module
from workbench.spec import TrainerSpec
from workbench.train import fit


def test_fit_records_one_history_row_per_epoch_and_keeps_the_best_checkpoint(tmp_path: Path):
    pl.seed_everything(0, verbose=False)
    data = create_data("digits", seed=0, batch_size=64)
    model = create_model("cnn", **data.model_kwargs(), width=8)
    result = fit(model, data, TrainerSpec(max_epochs=3, patience=3, accelerator="cpu"), tmp_path)
    assert [row["epoch"] for row in result.history] == [0, 1, 2]
    for row in result.history:
        assert {
            "train/loss",
            "train/acc",
            "train/f1",
            "val/loss",
            "val/acc",
            "val/f1",
            "lr",
        } <= set(row)
    assert result.best_score == pytest.approx(max(row["val/acc"] for row in result.history))
    assert result.history[0]["lr"] > result.history[2]["lr"]  # cosine decay per epoch
    assert result.confusion.sum() == len(data.split("test")[1])
    assert result.test_metrics["test/acc"] == pytest.approx(
        result.confusion.trace() / result.confusion.sum(), abs=1e-6
    )
    reloaded = load_module(result.checkpoint, "cnn")
    inputs = data.split("val")[0][:8]
    model.eval()
    assert torch.equal(reloaded(inputs), model(inputs))  # fit leaves the best weights loaded


def test_a_diverged_run_stops_with_floating_point_error(tmp_path: Path):
    data = create_data("digits", seed=0, batch_size=64)
    model = create_model("cnn", **data.model_kwargs(), width=8)
    with torch.no_grad():
        model.net.head[-1].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="train/loss became nan"):
        fit(model, data, TrainerSpec(max_epochs=3, accelerator="cpu"), tmp_path, test=False)


def test_one_nan_step_makes_the_epoch_loss_nan():
    """torchmetrics' default would drop the NaN step and report a finite epoch loss."""
    from workbench.models.supervised import running_mean

    mean = running_mean()
    for value in (1.0, float("nan"), 3.0):
        mean.update(torch.tensor(value))
    assert torch.isnan(mean.compute())
    mean.reset()
    mean.update(torch.tensor([1.0, 2.0, 6.0]))
    assert mean.compute().item() == pytest.approx(3.0)


def test_running_mean_weights_each_step_and_lets_a_nan_through():
    """A loss averaged over an epoch's batches counts each row once: a last batch of 1 row
    weighs 1/4 of the mean when the other batch held 3. torchmetrics' MeanMetric with
    nan_strategy="disable" dropped the weights (it gave 0.5 here)."""
    from workbench.models.supervised import running_mean

    mean = running_mean()
    mean.update(torch.tensor(1.0), 3)
    mean.update(torch.tensor(0.0), 1)
    assert float(mean.compute()) == pytest.approx(0.75)
    mean.reset()
    mean.update(torch.tensor(float("nan")), 2)
    mean.update(torch.tensor(1.0), 2)
    assert torch.isnan(mean.compute())
