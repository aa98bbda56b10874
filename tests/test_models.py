"""Every registered architecture: shapes, overfitting one batch, save/load, seeded determinism."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.conftest import save_checkpoint
from workbench.registry import UnknownNameError, available_models, build_model
from workbench.train import load_module

SHAPES = {
    "cnn": {"input_shape": (1, 8, 8), "num_classes": 10},
    "distilled_cnn": {"input_shape": (1, 8, 8), "num_classes": 10},
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A saved ``cnn`` checkpoint for the models that need a teacher."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    save_checkpoint(build_model("cnn", **SHAPES["cnn"], width=8), path)
    return str(path)


def _build(name: str, teacher: str, **hparams):
    extra = {"teacher_checkpoint": teacher} if name == "distilled_cnn" else {}
    return build_model(name, **SHAPES[name], **extra, **hparams)


def _batch(name: str, n: int = 32):
    shape = SHAPES[name]
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(n, *shape["input_shape"], generator=generator)
    targets = torch.randint(0, shape["num_classes"], (n,), generator=generator)
    return inputs, targets


def test_every_model_has_test_shapes():
    assert set(available_models()) <= set(SHAPES), "add the new architecture to SHAPES"


@pytest.mark.parametrize("name", available_models())
def test_output_shape(name: str, teacher: str):
    model = _build(name, teacher).eval()
    inputs, _ = _batch(name, 5)
    assert model(inputs).shape == (5, SHAPES[name]["num_classes"])


@pytest.mark.parametrize("name", available_models())
def test_a_single_batch_overfits(name: str, teacher: str):
    torch.manual_seed(0)
    model = _build(name, teacher, dropout=0.0)
    inputs, targets = _batch(name)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(150):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimiser.step()
    model.eval()
    accuracy = (model(inputs).argmax(1) == targets).float().mean().item()
    assert loss.item() < 0.05 and accuracy == 1.0


@pytest.mark.parametrize("name", available_models())
def test_checkpoint_round_trip_gives_identical_outputs(name: str, teacher: str, tmp_path: Path):
    model = _build(name, teacher, width=8).eval()
    path = tmp_path / "m.ckpt"
    save_checkpoint(model, path)
    loaded = load_module(path, name)
    inputs, _ = _batch(name, 4)
    assert loaded.hparams["width"] == 8
    assert torch.equal(model(inputs), loaded(inputs))


@pytest.mark.parametrize("name", available_models())
def test_same_seed_same_weights(name: str, teacher: str):
    pl.seed_everything(3, verbose=False)
    first = _build(name, teacher)
    pl.seed_everything(3, verbose=False)
    second = _build(name, teacher)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: .*cnn"):
        build_model("perceptron9000")
