"""Training logic every classifier shares: loss, torchmetrics, optimiser and schedule.

Shared as functions, not a base class: each architecture's LightningModule stays readable on its
own and calls these from its hooks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)


def classification_metrics(num_classes: int, stage: str) -> MetricCollection:
    """Accuracy and macro-F1 logged as ``stage/acc`` and ``stage/f1``; one collection per stage."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        },
        prefix=f"{stage}/",
    )


def confusion_matrix_metric(num_classes: int) -> MulticlassConfusionMatrix:
    return MulticlassConfusionMatrix(num_classes)


def classification_step(module, batch, stage: str) -> torch.Tensor:
    """Cross-entropy loss and epoch-level metrics for one batch; returns the loss."""
    inputs, targets = batch
    logits = module(inputs)
    loss = F.cross_entropy(logits, targets)
    metrics = getattr(module, f"{stage}_metrics")
    metrics.update(logits.detach(), targets)
    # on_epoch logging accumulates on the device: no per-step host synchronisation.
    module.log(
        f"{stage}/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=len(targets)
    )
    module.log_dict(metrics, on_step=False, on_epoch=True)
    if stage == "test":
        module.test_confusion.update(logits.detach(), targets)
    return loss


def adamw_with_cosine(module, lr: float, weight_decay: float) -> dict:
    """AdamW with decoupled weight decay and a cosine decay over the run's epochs."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    epochs = max(1, int(module.trainer.max_epochs or 1)) if module._trainer is not None else 1
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
