"""A multilayer perceptron for rows of features (tabular data)."""

from __future__ import annotations

import math

from torch import nn

from workbench.models.supervised import SupervisedModule
from workbench.registry import register_model


def mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear layers of ``sizes``; ReLU and dropout between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


@register_model("mlp")
class MLPModule(SupervisedModule):
    """``depth`` hidden layers of ``hidden`` units on flattened inputs."""

    def __init__(
        self,
        input_shape: tuple[int, ...] = (30,),
        num_classes: int = 2,
        task: str = "classification",
        hidden: int = 64,
        depth: int = 2,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        inputs = math.prod(input_shape)
        sizes = [inputs, *[hidden] * depth, self.output_size(num_classes, task)]
        self.net = nn.Sequential(nn.Flatten(), mlp(sizes, dropout))
