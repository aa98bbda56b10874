"""Training logic every classifier shares: loss, torchmetrics, optimiser and schedule.

Shared as functions, not a base class: each architecture's LightningModule stays readable on its
own and calls these from its hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)


def classification_metrics(num_classes: int, stage: str) -> torch.nn.ModuleDict:
    """Per-stage metric states: mean loss, accuracy and macro-F1, logged as ``stage/...``."""
    scores = MetricCollection(
        {
            # Inputs come from our own model: skipping validation saves a pass over every batch.
            "acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False),
            "f1": MulticlassF1Score(num_classes, average="macro", validate_args=False),
        },
        prefix=f"{stage}/",
    )
    return torch.nn.ModuleDict({"scores": scores, "loss": MeanMetric()})


def confusion_matrix_metric(num_classes: int) -> MulticlassConfusionMatrix:
    return MulticlassConfusionMatrix(num_classes, validate_args=False)


def classification_step(module, batch, stage: str) -> torch.Tensor:
    """Cross-entropy loss for one batch; metric states update on the device, nothing is logged.

    ``self.log`` costs about a millisecond per call, more than a small CNN's step on a CPU, so
    metrics are logged once per epoch by ``log_epoch_metrics``.
    """
    inputs, targets = batch
    logits = module(inputs)
    loss = F.cross_entropy(logits, targets)
    metrics = getattr(module, f"{stage}_metrics")
    metrics["scores"].update(logits.detach(), targets)
    metrics["loss"].update(loss.detach(), len(targets))
    if stage == "test":
        module.test_confusion.update(logits.detach(), targets)
    return loss


def log_epoch_metrics(module, stage: str) -> None:
    """Compute the stage's epoch metrics (one host sync), log them, and reset their states."""
    metrics = getattr(module, f"{stage}_metrics")
    module.log_dict({**metrics["scores"].compute(), f"{stage}/loss": metrics["loss"].compute()})
    metrics["scores"].reset()
    metrics["loss"].reset()


def adamw_with_cosine(module, lr: float, weight_decay: float) -> dict:
    """AdamW with decoupled weight decay and a cosine decay over the run's epochs."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    epochs = max(1, int(module.trainer.max_epochs or 1)) if module._trainer is not None else 1
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
