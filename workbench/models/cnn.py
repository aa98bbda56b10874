"""A convolutional classifier for small grayscale images (MNIST 28×28, scikit-learn 8×8).

``ConvNet`` is the plain network that export, explanation and compression take; ``CNNModule``
wraps it with the loss, metrics and optimiser.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workbench.models.supervised import SupervisedModule
from workbench.registry import register_model


class ConvNet(nn.Module):
    """``depth`` blocks of conv, batch-norm, ReLU, 2×2 max-pool; channels double from ``width``.

    ``norm="group"`` puts GroupNorm where batch norm was, as Opacus' ``ModuleValidator.fix``
    does: differentially private training (DP-SGD) cannot train batch norm.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        width: int = 32,
        depth: int = 2,
        hidden: int = 128,
        dropout: float = 0.25,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"norm: must be batch or group; got {norm!r}")
        channels, height, width_px = input_shape
        layers: list[nn.Module] = []
        for block in range(depth):
            out = width * 2**block
            # A fresh, non-in-place ReLU per use: SHAP's DeepExplainer mis-attributes shared or
            # in-place activations (shap#1479, shap#3466).
            normalise = (
                nn.BatchNorm2d(out) if norm == "batch" else nn.GroupNorm(math.gcd(32, out), out)
            )
            layers += [nn.Conv2d(channels, out, 3, padding=1), normalise, nn.ReLU()]
            if min(height, width_px) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width_px = height // 2, width_px // 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(channels * height * width_px, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@register_model("cnn")
class CNNModule(SupervisedModule):
    """ConvNet trained with cross-entropy (or MSE for regression), AdamW and a cosine schedule."""

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        task: str = "classification",
        width: int = 32,
        depth: int = 2,
        hidden: int = 128,
        dropout: float = 0.25,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        norm: str = "batch",
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        outputs = self.output_size(num_classes, task)
        self.net = ConvNet(tuple(input_shape), outputs, width, depth, hidden, dropout, norm)

    def backbone_blocks(self) -> list[nn.Module]:
        """The convolutional blocks (conv, batch norm, ReLU, pool), each one a block."""
        layers, blocks = list(self.net.features), []
        for layer in layers:
            if isinstance(layer, nn.Conv2d):
                blocks.append([])
            blocks[-1].append(layer)
        return [nn.Sequential(*block) for block in blocks]
