"""Knowledge distillation (Hinton et al., 2015): a small ConvNet student trained on a frozen
teacher's softened outputs. Registered as ``distilled_cnn`` so a study can tune the temperature
and the mixing weight like any other hyperparameter."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from workbench.models.classification import (
    adamw_with_cosine,
    classification_metrics,
    classification_step,
    confusion_matrix_metric,
    log_epoch_metrics,
)
from workbench.models.cnn import ConvNet
from workbench.registry import register_model


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · cross-entropy with the labels.

    The T² factor keeps the soft term's gradients on the scale of the hard term's as T grows.
    """
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.softmax(teacher_logits / temperature, dim=1),
        reduction="batchmean",
    )
    hard = F.cross_entropy(student_logits, targets)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


@register_model("distilled_cnn")
class DistilledCNN(pl.LightningModule):
    """A ConvNet student; the teacher is a trained ``cnn`` checkpoint, loaded safely and frozen."""

    def __init__(
        self,
        teacher_checkpoint: str,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        width: int = 8,
        depth: int = 2,
        hidden: int = 32,
        dropout: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        temperature: float = 4.0,
        alpha: float = 0.7,
    ) -> None:
        super().__init__()
        from workbench.train import load_module

        self.save_hyperparameters()
        self.net = ConvNet(tuple(input_shape), num_classes, width, depth, hidden, dropout)
        self.teacher = load_module(teacher_checkpoint, "cnn").net.eval().requires_grad_(False)
        self.train_metrics = classification_metrics(num_classes, "train")
        self.val_metrics = classification_metrics(num_classes, "val")
        self.test_metrics = classification_metrics(num_classes, "test")
        self.test_confusion = confusion_matrix_metric(num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        logits = self(images)
        self.teacher.eval()  # Lightning puts every submodule in train mode each epoch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        loss = distillation_loss(
            logits, teacher_logits, targets, self.hparams.temperature, self.hparams.alpha
        )
        self.train_metrics["scores"].update(logits.detach(), targets)
        self.train_metrics["loss"].update(loss.detach(), len(targets))
        return loss

    def validation_step(self, batch, batch_idx):
        classification_step(self, batch, "val")

    def test_step(self, batch, batch_idx):
        classification_step(self, batch, "test")

    def on_train_epoch_end(self):
        log_epoch_metrics(self, "train")

    def on_validation_epoch_end(self):
        log_epoch_metrics(self, "val")

    def on_test_epoch_end(self):
        log_epoch_metrics(self, "test")

    def configure_optimizers(self):
        return adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay)
