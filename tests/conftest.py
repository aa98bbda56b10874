"""Shared fixtures: tiny, fast settings that still go through the real path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars (the study's, SHAP's) flood test logs

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the CI's two cores
    import torch

    torch.set_num_threads(1)  # two all-core thread pools on two cores slow both down


def tiny(root: Path, **extra: object) -> list[str]:
    """Overrides that shrink a spec to seconds: 300 images, 1 epoch, small explanations."""
    settings = {
        "tracking.root": str(root),
        "trainer.max_epochs": 1,
        "trainer.progress_bar": False,
        "data.max_samples": 300,
        "explain.n_images": 2,
        "explain.background": 16,
        "explain.shap_samples": 20,
        "explain.lime_samples": 50,
        "study.confirm.top_k": 0,  # no confirmation over seeds unless a test asks for it
        "tracking.report": False,  # no HTML report either
        "tracking.review": False,  # nor dashboard notes (tests/test_review.py turns them on)
        **extra,
    }
    return [f"{key}={value}" for key, value in settings.items()]


def save_checkpoint(model, path: Path) -> Path:
    """Save a LightningModule as a Lightning checkpoint without training it."""
    import lightning.pytorch as pl

    trainer = pl.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=0,
        accelerator="cpu",
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def teacher_checkpoint(tmp_path_factory) -> str:
    """An untrained 28×28 ``cnn`` checkpoint, for specs and models that need a teacher."""
    from workbench.registry import create_model

    path = tmp_path_factory.mktemp("teacher28") / "teacher.ckpt"
    return str(save_checkpoint(create_model("cnn", input_shape=(1, 28, 28), num_classes=10), path))


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "mlruns"


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """One short, real study shared by the compression and deployment tests: (spec, result)."""
    from workbench.spec import load_spec
    from workbench.study import run_study

    root = tmp_path_factory.mktemp("shared_study") / "mlruns"
    overrides = tiny(
        root,
        **{
            "data.max_samples": 1000,
            "trainer.max_epochs": 3,
            "explain.enabled": False,
            "data.augment": False,
        },
    )
    spec = load_spec(EXPERIMENTS / "mnist_cnn.yaml", overrides)
    return spec, run_study(spec, trials=1)
