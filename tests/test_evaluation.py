"""The test pass's reviewer metrics against hand-computed cases: per-class precision, recall and
F1, one-vs-rest ROC-AUC, the expected calibration error and its reliability bins; RMSE and R²
for regression."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from workbench import plots
from workbench.models.supervised import SupervisedModule


class Fixed(SupervisedModule):
    """Outputs its inputs: given log-probabilities, its softmax is exactly those probabilities."""

    def __init__(self, num_classes: int = 2, task: str = "classification") -> None:
        super().__init__(num_classes, task)
        self.net = torch.nn.Identity()


def _test(model: SupervisedModule, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
    trainer = pl.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu"
    )
    loader = DataLoader(TensorDataset(inputs, targets), batch_size=2)  # two batches
    return trainer.test(model, dataloaders=loader, verbose=False)[0]


def test_classification_metrics_by_hand():
    # Rows: (p0, p1), target. Predicted 0, 0, 1, 1; right, wrong, right, wrong.
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    targets = torch.tensor([0, 1, 1, 0])
    model = Fixed()
    scores = _test(model, probabilities.log(), targets)
    # Each confidence (0.9, 0.8, 0.7, 0.6) alone in its bin of 15: ECE = mean |right - conf|.
    assert scores["test/ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.6) / 4, abs=1e-6)
    # Class 1 ranks positives (0.2, 0.7) above negatives (0.1, 0.6) in 3 of 4 pairs; class 0 too.
    assert scores["test/auroc"] == pytest.approx(0.75)
    for k in (0, 1):  # each class: 1 of its 2 predictions right, 1 of its 2 rows found
        for name in ("precision", "recall", "f1"):
            assert scores[f"test/class_{k}/{name}"] == pytest.approx(0.5)
    assert scores["test/acc"] == pytest.approx(0.5)
    bins = model.test_reliability.compute().numpy()
    count, confidence, correct = bins
    assert count.sum() == 4 and set(np.flatnonzero(count)) == {9, 10, 12, 13}
    assert confidence[13] == pytest.approx(0.9) and correct[13] == 1 and correct[12] == 0
    figure = plots.reliability_diagram(bins)
    assert "ECE 0.450" in figure.axes[0].get_title()


def test_regression_metrics_by_hand():
    predictions = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    targets = torch.tensor([1.0, 2.0, 4.0, 4.0])
    scores = _test(Fixed(1, "regression"), predictions, targets)
    # Errors 0, 0, -1, 1: MSE 0.5; targets' mean 2.75, total sum of squares 6.75.
    assert scores["test/rmse"] == pytest.approx(0.5**0.5)
    assert scores["test/mae"] == pytest.approx(0.5)
    assert scores["test/r2"] == pytest.approx(1 - 2 / 6.75)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_reliability_bins_take_probabilities_of_any_precision(dtype):
    from workbench.models.supervised import ReliabilityBins

    bins = ReliabilityBins()
    bins.update(torch.tensor([[0.9, 0.1], [0.3, 0.7]], dtype=dtype), torch.tensor([0, 0]))
    count, confidence, correct = bins.compute()
    assert count.sum() == 2 and correct.sum() == 1
    assert float(confidence.sum()) == pytest.approx(1.6, abs=1e-2)
