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


def _renamed(value, old: str, new: str):
    """``value`` with ``old`` replaced by ``new`` in every string of it, keys included."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {_renamed(k, old, new): _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_renamed(v, old, new) for v in value)
    return value


def _same(ours, theirs, path: str = "") -> None:
    """Nested checkpoint contents equal, tensors element for element."""
    assert type(ours) is type(theirs), path
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), path
        for key in ours:
            _same(ours[key], theirs[key], f"{path}/{key}")
    elif isinstance(ours, list | tuple):
        assert len(ours) == len(theirs), path
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _same(a, b, f"{path}/{index}")
    elif isinstance(ours, torch.Tensor):
        assert torch.equal(ours, theirs), path
    else:
        assert ours == theirs, path


def test_the_best_checkpoint_is_written_once_as_lightning_would_have_written_it(
    tmp_path: Path, monkeypatch
):
    """Every improvement is kept in memory and the file written when training ends: the same
    weights, optimiser state, epoch, step and callback states as Lightning's ModelCheckpoint
    (one write per improvement) leaves; a run stopped by an error still leaves its best."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint

    import workbench.train as train
    from workbench.train.checkpoint import BestInMemory

    writes: list[str] = []
    write = TorchCheckpointIO.save_checkpoint

    def counted(self, checkpoint, path, storage_options=None):
        writes.append(str(path))
        write(self, checkpoint, path, storage_options)

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", counted)
    spec = TrainerSpec(max_epochs=8, patience=8, accelerator="cpu")
    saved = {}
    for name, kind in (("ours", BestInMemory), ("lightning", ModelCheckpoint)):
        monkeypatch.setattr(train, "BestInMemory", kind)
        pl.seed_everything(0, verbose=False)
        data = create_data("breast_cancer", seed=0, batch_size=32)
        model = create_model("mlp", **data.model_kwargs())
        writes.clear()
        result = fit(model, data, spec, tmp_path / name, monitor="val/loss", mode="min")
        text = torch.load(result.checkpoint, weights_only=True)
        # The folders differ, nothing else may.
        saved[name] = (list(writes), _renamed(text, str(tmp_path / name), "FOLDER"))
    (our_writes, ours), (their_writes, theirs) = saved["ours"], saved["lightning"]
    assert len(our_writes) == 1 and len(their_writes) > 1
    assert ours["epoch"] > 0
    _same(ours, theirs)

    monkeypatch.setattr(train, "BestInMemory", BestInMemory)

    def stop(epoch, metrics):
        if epoch == 3:
            raise RuntimeError("pruned")

    writes.clear()
    pl.seed_everything(0, verbose=False)
    model = create_model("mlp", **data.model_kwargs())
    with pytest.raises(RuntimeError, match="pruned"):
        fit(model, data, spec, tmp_path / "stopped", monitor="val/loss", on_epoch=stop)
    assert writes == [str(tmp_path / "stopped" / "best.ckpt")]
    assert torch.load(writes[0], weights_only=True)["epoch"] <= 3
