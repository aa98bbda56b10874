"""A Transformer encoder (Vaswani et al., 2017) over sequences (N, T, F).

Each time step is embedded linearly, sinusoidal positional encodings are added, pre-norm encoder
layers apply multi-head self-attention, and the mean over non-padded steps reads out the result.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from workbench.models.supervised import SupervisedModule
from workbench.registry import register_model


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """PE[t, 2i] = sin(t / 10000^(2i/dim)), PE[t, 2i+1] = cos(...), shaped (length, dim)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class TransformerNet(nn.Module):
    """Embedding, positional encoding, encoder layers, masked mean pooling, linear head."""

    def __init__(
        self,
        length: int,
        features: int,
        outputs: int,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_mult: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        self.embed = nn.Linear(features, d_model)
        self.register_buffer("positions", sinusoidal_positions(length, d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, ff_mult * d_model, dropout, batch_first=True, norm_first=True
        )
        # enable_nested_tensor=False: the padded fast path changes results slightly per batch.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, outputs)

    def forward(
        self, sequences: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``padding_mask`` (N, T) is True at padded steps, which attention and pooling skip."""
        steps = sequences.shape[1]
        tokens = self.embed(sequences) + self.positions[:steps]
        encoded = self.norm(self.encoder(tokens, src_key_padding_mask=padding_mask))
        if padding_mask is None:
            pooled = encoded.mean(dim=1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(encoded.dtype)
            pooled = (encoded * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)


@register_model("transformer")
class TransformerModule(SupervisedModule):
    """Transformer encoder classifier/regressor for sequences."""

    def __init__(
        self,
        input_shape: tuple[int, int] = (28, 28),
        num_classes: int = 10,
        task: str = "classification",
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_mult: int = 2,
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        length, features = input_shape
        outputs = self.output_size(num_classes, task)
        self.net = TransformerNet(
            length, features, outputs, d_model, heads, layers, ff_mult, dropout
        )
