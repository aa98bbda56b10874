"""Differentially private training: the spent ε against Opacus' own accountant, bad budgets
refused before any run, each example's gradient clipped and the calibrated noise added, batch
norm replaced as Opacus prescribes (and said so), and a DP study's budget on its MLflow run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from mlflow.tracking import MlflowClient
from opacus.accountants import create_accountant
from torch import nn

from tests.conftest import EXPERIMENTS, tiny
from workbench.registry import load_module
from workbench.robustness import training_callbacks
from workbench.robustness.privacy import DifferentialPrivacy, spent_epsilon
from workbench.spec import SpecError, load_spec
from workbench.study import run_study
from workbench.train import data_from_spec, fit, module_from_spec

SPEC = EXPERIMENTS / "breast_cancer_mlp_dp.yaml"
# Opacus' backward hook on a first layer whose inputs need no gradient: expected (privacy.py).
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.mark.filterwarnings("ignore:GDP accounting is experimental")
@pytest.mark.parametrize("accountant", ["prv", "rdp", "gdp"])
def test_spent_epsilon_is_what_opacus_accountant_says(accountant: str):
    counter = create_accountant(mechanism=accountant)
    for _ in range(300):  # as DPOptimizer's step hook counts them
        counter.step(noise_multiplier=1.1, sample_rate=0.05)
    expected = counter.get_epsilon(delta=1e-5)
    assert spent_epsilon(1.1, 0.05, 300, 1e-5, accountant) == pytest.approx(expected, rel=1e-9)
    assert spent_epsilon(1.1, 0.05, 0, 1e-5, accountant) == 0.0


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (["privacy.epsilon=-1"], r"privacy\.epsilon"),
        (["privacy.delta=null"], r"privacy\.delta"),
        (["privacy.max_grad_norm=0"], r"privacy\.max_grad_norm"),
        (["privacy.accountant=moments"], r"privacy\.accountant"),
    ],
)
def test_bad_privacy_values_name_the_field(settings: list[str], field: str):
    with pytest.raises(SpecError, match=field):
        load_spec(SPEC, settings)


def test_delta_not_below_one_over_n_stops_before_any_store_is_opened(tmp_path: Path):
    root = tmp_path / "mlruns"
    spec = load_spec(SPEC, tiny(root, **{"privacy.delta": 0.01}))
    rows = len(data_from_spec(spec).split("train")[1])
    assert 0.01 >= 1 / rows
    with pytest.raises(SpecError, match=rf"privacy\.delta: .*N = {rows} training rows"):
        run_study(spec, trials=1)
    assert not root.exists(), "no study, no MLflow run before the check"


def test_a_dp_study_logs_the_budget_opacus_accounts_for_its_steps(tmp_path: Path):
    """A real one-trial study: the run's spent ε is at most the target and is Opacus'
    accountant for the run's logged σ, q and steps; every optimiser step was a DP step."""
    root = tmp_path / "mlruns"
    overrides = {"data.max_samples": "null", "trainer.max_epochs": 4, "explain.enabled": False}
    spec = load_spec(SPEC, tiny(root, **overrides))
    result = run_study(spec, trials=1)
    assert (result.n_complete, result.n_failed) == (1, 0)
    run = MlflowClient(result.tracking_uri).get_run(result.best_run_id).data.metrics
    sigma, q, steps = (run[f"privacy/{k}"] for k in ("noise_multiplier", "sample_rate", "steps"))
    batches = math.ceil(341 / spec.data.batch_size)  # 341 training rows: Opacus' q = 1 / batches
    assert q == pytest.approx(1 / batches, rel=1e-6)
    assert steps == run["epochs"] * batches  # each epoch's steps, all of them DP-SGD steps
    assert run["privacy/delta"] == pytest.approx(1e-5, rel=1e-6)
    assert run["privacy/max_grad_norm"] == 1.0 and run["privacy/replaced_layers"] == 0
    spent = run["privacy/epsilon"]
    assert spent <= spec.privacy.epsilon
    assert spent == pytest.approx(spent_epsilon(sigma, q, int(steps), 1e-5, "prv"), rel=1e-5)
    if run["epochs"] == spec.trainer.max_epochs:  # the noise was calibrated to spend it all
        assert spent > spec.privacy.epsilon - 0.1
    assert result.test_metrics["privacy/epsilon"] == pytest.approx(spent)
    assert run["test/acc"] > 0.8  # above the majority class (63 %): it learnt through the noise


class Probe(pl.Callback):
    """After each DP step: per-example gradients, their clipped sum and the noised gradient."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        params = [p for p in pl_module.net.parameters() if p.requires_grad]
        self.steps.append(
            {
                "optimizer": optimizer,
                "per_example": torch.cat([p.grad_sample.flatten(1) for p in params], 1).clone(),
                "summed": torch.cat([p.summed_grad.flatten() for p in params]).clone(),
                "grad": torch.cat([p.grad.flatten() for p in params]).clone(),
            }
        )


def _breast_cancer(tmp_path: Path, **settings):
    spec = load_spec(SPEC, tiny(tmp_path / "mlruns", **settings))
    data = data_from_spec(spec)
    data.setup()
    pl.seed_everything(spec.seed, verbose=False)
    return spec, data, module_from_spec(spec, data, hidden=16, depth=1)


def test_each_example_is_clipped_and_the_calibrated_noise_is_added(tmp_path: Path):
    spec, data, model = _breast_cancer(tmp_path, **{"privacy.max_grad_norm": 0.05})
    privacy, probe = DifferentialPrivacy(spec.privacy, data), Probe()
    fit(model, data, spec.trainer, tmp_path / "ckpt", "val/loss", "min", [privacy, probe])
    clip = spec.privacy.max_grad_norm
    noise = []
    for step in probe.steps:
        optimizer = step["optimizer"]
        norms = step["per_example"].norm(dim=1)
        assert (norms > clip).any(), "a clipping norm this small clips some examples"
        clipped = step["per_example"] * (clip / (norms + 1e-6)).clamp(max=1.0)[:, None]
        torch.testing.assert_close(step["summed"], clipped.sum(0), rtol=1e-4, atol=1e-6)
        noise.append(step["grad"] * optimizer.expected_batch_size - step["summed"])
    noise = torch.cat(noise)
    sigma = privacy.report.noise_multiplier
    assert noise.std().item() == pytest.approx(sigma * clip, rel=0.1)
    assert abs(noise.mean().item()) < 0.1 * sigma * clip
    assert privacy.report.steps == len(probe.steps)
    # Afterwards: the network without Opacus' hooks, the data module with its own batches.
    assert not any(hasattr(p, "grad_sample") for p in model.net.parameters())
    assert "train_dataloader" not in vars(data)


def test_batch_norm_is_replaced_as_opacus_prescribes_and_the_run_says_so(tmp_path: Path):
    overrides = {"privacy.epsilon": 8, "privacy.delta": 1e-5, "data.augment": False}
    spec = load_spec(EXPERIMENTS / "digits_cnn.yaml", tiny(tmp_path / "mlruns", **overrides))
    data = data_from_spec(spec)
    data.setup()
    pl.seed_everything(spec.seed, verbose=False)
    model = module_from_spec(spec, data, width=8, hidden=16)
    assert model.hparams.norm == "batch"
    with pytest.warns(UserWarning, match=r"BatchNorm2d\(8\) → GroupNorm\(8, 8\).*norm=group"):
        callbacks = training_callbacks(spec, data)
        result = fit(model, data, spec.trainer, tmp_path / "ckpt", callbacks=callbacks)
    (privacy,) = callbacks
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.net.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.net.modules()) == 2
    assert len(privacy.report.replaced) == 2
    assert result.test_metrics["privacy/replaced_layers"] == 2
    # The checkpoint rebuilds the network that was trained (norm=group), weights and all.
    rebuilt = load_module(result.checkpoint, "cnn")
    assert rebuilt.hparams.norm == "group"
    inputs = data.split("test")[0][:4]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.net(inputs), model.eval().net(inputs))


class WithBatchNorm(pl.LightningModule):
    """A model with batch norm and no ``norm`` option to be rebuilt without it."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(30, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_a_model_that_cannot_be_rebuilt_without_batch_norm_is_refused(tmp_path: Path):
    spec, data, _ = _breast_cancer(tmp_path)
    trainer = SimpleNamespace(world_size=1, datamodule=data)
    with pytest.raises(SpecError, match=r"model\.name: .*BatchNorm1d\(8\) → GroupNorm"):
        DifferentialPrivacy(spec.privacy, data).setup(trainer, WithBatchNorm(), "fit")
