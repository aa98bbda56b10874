"""Adversarial evaluation and training: FGSM against a hand-computed margin, the natural scale,
the gradient-masking checks firing on a model built to mask gradients (and quiet on the same
model without the mask), the training callback's batch surgery, and the study and CLI paths."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import EXPERIMENTS, tiny
from workbench.robustness.adversarial import AdversarialTraining
from workbench.robustness.attacks import (
    NaturalScale,
    accuracy_under,
    evaluate,
    natural_scale,
)
from workbench.spec import SpecError, load_spec


class Margin(nn.Module):
    """Two classes on one feature in [0, 1]: class 1 iff x > 0.5 (logit gap 10 (x - 0.5))."""

    def __init__(self) -> None:
        super().__init__()
        self.slope = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gap = self.slope * (x[:, :1] - 0.5)
        return torch.cat([-gap, gap], dim=1)


def test_fgsm_and_pgd_against_a_hand_computed_margin():
    # x = 0.6 (class 1) and x = 0.3 (class 0) sit 0.1 and 0.2 from the boundary: an L∞ attack
    # of radius ε flips exactly those closer than ε.
    model = NaturalScale(Margin(), torch.tensor(1.0), torch.tensor(0.0)).eval()
    x, y = torch.tensor([[0.6], [0.3]]), torch.tensor([1, 0])
    assert accuracy_under(model, None, x, y) == 1.0
    for attack in ("fgsm", "pgd"):
        assert accuracy_under(model, attack, x, y, eps=0.05) == 1.0
        assert accuracy_under(model, attack, x, y, eps=0.15) == 0.5  # only x = 0.6 flips
        assert accuracy_under(model, attack, x, y, eps=0.25) == 0.0


@pytest.fixture(scope="module")
def digits():
    from workbench.registry import create_data

    data = create_data("digits", seed=0)
    data.setup()
    return data


def _trained_mlp(inputs: torch.Tensor, labels: torch.Tensor, front: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(front, nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(inputs), labels).backward()
        optimiser.step()
    return net.eval()


class HardThreshold(nn.Module):
    """Binarises the input: its gradient is zero everywhere, so gradient attacks go nowhere."""

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.at).float() + 0 * x  # in the graph, with a zero gradient


def test_masking_checks_fire_on_a_masked_model_and_not_on_the_same_model_unmasked(digits):
    inputs, labels = digits.split("train")
    half_grey = (0.5 - digits.mean_) / digits.std_  # pixel 0.5 in model-input units
    masked = _trained_mlp(inputs, labels, HardThreshold(half_grey))
    plain = _trained_mlp(inputs, labels, nn.Identity())
    options = {"epsilons": [0.05, 0.1, 0.2], "pgd_steps": 10, "n_examples": 200}
    masked_report = evaluate(masked, digits, **options)
    plain_report = evaluate(plain, digits, **options)
    assert masked_report.clean > 0.8 and plain_report.clean > 0.9  # both are real classifiers
    assert any("gradients may be masked" in w for w in masked_report.warnings)
    assert masked_report.checks["pgd_acc_eps_0.5"] > 0.1
    assert plain_report.warnings == [], plain_report.warnings
    assert plain_report.checks["pgd_acc_eps_0.5"] <= 0.1
    pgd, fgsm = plain_report.accuracy["pgd"], plain_report.accuracy["fgsm"]
    assert all(p <= f + 0.01 for p, f in zip(pgd, fgsm, strict=True))  # PGD at least as strong
    assert "robust/pgd_acc_eps_0.1" in plain_report.metrics()


def test_natural_scale_is_pixels_for_images_and_min_max_for_tables(digits):
    from workbench.registry import create_data

    inputs = digits.split("test")[0][:5]
    model = natural_scale(nn.Identity(), digits)
    pixels = digits.to_pixels(inputs).clamp(0, 1)
    assert torch.allclose(model.to_natural(inputs), pixels, atol=1e-5)
    assert torch.allclose(model.to_inputs(pixels), inputs, atol=1e-4)
    table = create_data("breast_cancer", seed=0)
    table.setup()
    train = table.split("train")[0]
    scaled = natural_scale(nn.Identity(), table).to_natural(train)
    assert torch.allclose(scaled.min(dim=0).values, torch.zeros(train.shape[1]), atol=1e-6)
    assert torch.allclose(scaled.max(dim=0).values, torch.ones(train.shape[1]), atol=1e-6)


def test_adversarial_training_replaces_a_share_of_the_batch_within_epsilon(digits):
    from workbench.registry import create_model
    from workbench.spec.types import RobustnessSpec

    module = create_model("cnn", **digits.model_kwargs())
    module.net.train()
    module.net.features[0].eval()  # a frozen first block stays in eval mode through the attack
    inputs, labels = (t[:20].clone() for t in digits.split("train"))
    before = inputs.clone()
    spec = RobustnessSpec(train="pgd", epsilon=0.1, mix=0.25, train_steps=3)
    AdversarialTraining(spec, digits).on_train_batch_start(None, module, (inputs, labels), 0)
    scale = natural_scale(module.net, digits)
    moved = (scale.to_natural(inputs) - scale.to_natural(before)).abs().flatten(1).amax(dim=1)
    assert torch.all(moved[:5] <= 0.1 + 1e-4) and torch.any(moved[:5] > 0.05)
    assert torch.equal(inputs[5:], before[5:])  # 25 % of 20 rows attacked, the rest untouched
    assert module.net.training and not module.net.features[0].training


def test_bad_robustness_and_privacy_values_are_named():
    path = EXPERIMENTS / "mnist_cnn.yaml"
    for overrides, field in (
        (["robustness.epsilons=[-0.1]"], "robustness.epsilons"),
        (["robustness.attacks=[deepfool]"], "robustness.attacks"),
        (["robustness.train=trades"], "robustness.train"),
        (["robustness.mix=1.5"], "robustness.mix"),
        (["privacy.epsilon=8"], "privacy.delta"),
        (["privacy.epsilon=-1", "privacy.delta=1e-5"], "privacy.epsilon"),
    ):
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            load_spec(path, overrides)


@pytest.mark.slow
def test_robust_study_two_objectives_and_the_attack_command(tmp_path):
    """A two-objective study (clean against robust validation accuracy, NSGA-II) with
    adversarial training searched, every trial attacked; then `workbench attack` on a run."""
    from mlflow.tracking import MlflowClient

    from workbench.study import run_study

    root = tmp_path / "mlruns"
    overrides = tiny(
        root,
        **{
            "data.max_samples": 400,
            "trainer.max_epochs": 2,
            "study.sampler": "nsga2",
            "study.pruner": "none",
            "study.extra_objectives": {"robust/val_acc": "maximize"},
            "robustness.epsilons": [0.1, 0.3],
            "robustness.pgd_steps": 5,
            "robustness.n_examples": 40,
            "search_space": {
                "robustness.mix": {"type": "float", "low": 0.0, "high": 1.0},
                "robustness.epsilon": {"type": "categorical", "choices": [0.05, 0.1]},
            },
        },
    )
    spec = load_spec(EXPERIMENTS / "mnist_cnn_robust.yaml", overrides)
    result = run_study(spec, trials=2)
    trials = result.load_study().trials
    assert [len(t.values) for t in trials] == [2, 2]
    assert all(0 <= t.values[1] <= 1 for t in trials)
    client = MlflowClient(result.tracking_uri)
    run_id = trials[0].user_attrs["mlflow_run_id"]
    metrics = client.get_run(run_id).data.metrics
    assert {"robust/clean_acc", "robust/pgd_acc_eps_0.1", "robust/val_acc"} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(run_id, "robustness")}
    assert "robustness/accuracy_vs_epsilon.png" in artifacts

    command = [sys.executable, "-m", "workbench.cli", "attack", run_id, "--root", str(root)]
    done = subprocess.run(
        [*command, "--epsilons", "0.2", "--attacks", "pgd", "--steps", "3", "--n", "30"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "0.2" in done.stdout and f"logged to run {run_id}" in done.stdout
    assert "robust/pgd_acc_eps_0.2" in client.get_run(run_id).data.metrics
    refused = subprocess.run([*command, "--epsilons", "-0.1"], capture_output=True, text=True)
    assert refused.returncode == 2 and "robustness.epsilons" in refused.stderr
    assert np.isfinite(metrics["robust/clean_acc"])
