"""Recurrent networks over sequences (N, T, F): plain RNN (tanh), LSTM and GRU.

The last layer's final hidden state reads out the class logits or the regression value. The
three share one module; the registered names ``rnn``, ``lstm`` and ``gru`` fix the cell.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.models.supervised import SupervisedModule
from workbench.registry import register_model

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentNet(nn.Module):
    """A stacked recurrent layer and a linear read-out of its last hidden state."""

    def __init__(
        self, cell: str, features: int, hidden: int, layers: int, outputs: int, dropout: float
    ) -> None:
        super().__init__()
        self.recurrent = CELLS[cell](
            features, hidden, num_layers=layers, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )  # fmt: skip
        self.head = nn.Linear(hidden, outputs)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        states, _ = self.recurrent(sequences)
        return self.head(states[:, -1])


class _RecurrentModule(SupervisedModule):
    cell = "lstm"

    def __init__(
        self,
        input_shape: tuple[int, int] = (28, 28),
        num_classes: int = 10,
        task: str = "classification",
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        grad_clip: float = 1.0,
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        outputs = self.output_size(num_classes, task)
        self.net = RecurrentNet(self.cell, input_shape[-1], hidden, layers, outputs, dropout)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        # Recurrent gradients can explode over long sequences: clip their global norm.
        if self.hparams.grad_clip > 0:
            self.clip_gradients(optimizer, self.hparams.grad_clip, "norm")


@register_model("rnn")
class RNNModule(_RecurrentModule):
    """Elman RNN with tanh: the baseline whose gradients vanish over long sequences."""

    cell = "rnn"


@register_model("lstm")
class LSTMModule(_RecurrentModule):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997)."""

    cell = "lstm"


@register_model("gru")
class GRUModule(_RecurrentModule):
    """Gated recurrent unit (Cho et al., 2014)."""

    cell = "gru"
