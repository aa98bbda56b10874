"""Knowledge distillation (Hinton et al., 2015): a small ConvNet student trained on a frozen
teacher's softened outputs. Registered as ``distilled_cnn`` so a study can tune the temperature
and the mixing weight like any other hyperparameter."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.models.cnn import ConvNet
from workbench.models.supervised import SupervisedModule
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
class DistilledCNNModule(SupervisedModule):
    """A ConvNet student; the teacher is a trained ``cnn`` checkpoint, loaded safely and frozen."""

    def __init__(
        self,
        teacher_checkpoint: str,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        task: str = "classification",
        width: int = 8,
        depth: int = 2,
        hidden: int = 32,
        dropout: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        temperature: float = 4.0,
        alpha: float = 0.7,
    ) -> None:
        if task != "classification":
            raise ValueError("task: distillation of soft labels needs a classification task")
        super().__init__(num_classes)
        from workbench.registry import load_module

        self.save_hyperparameters()
        self.net = ConvNet(tuple(input_shape), num_classes, width, depth, hidden, dropout)
        self.teacher = load_module(teacher_checkpoint, "cnn").net.eval().requires_grad_(False)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        self.teacher.eval()  # Lightning puts every submodule in train mode each epoch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self(images)
        loss = distillation_loss(
            logits, teacher_logits, targets, self.hparams.temperature, self.hparams.alpha
        )
        self.keep_scores("train", logits.detach(), targets)
        self.train_metrics["loss"].update(loss.detach(), len(targets))
        return loss
