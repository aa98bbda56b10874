"""The contracts between the parts, written down as typed ``Protocol``s.

A data family (``@register_data``) returns a ``DataFamily``; a registered architecture
(``@register_model``) is a LightningModule that is also a ``TrainableModel``. The hooks below it
are optional: code asks ``isinstance(model, DrawsEpochFigures)`` instead of probing attributes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from matplotlib.figure import Figure


@runtime_checkable
class DataFamily(Protocol):
    """What every data family provides: the three Lightning loaders, the constructor arguments it
    decides for any model, and its splits as tensors (what explanation, export and baselines use).
    """

    batch_size: int

    def setup(self, stage: str | None = None) -> None:
        """Load and split once; later calls do nothing."""

    def train_dataloader(self) -> Iterable: ...

    def val_dataloader(self) -> Iterable: ...

    def test_dataloader(self) -> Iterable: ...

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments the data fixes for the model: ``input_shape``, ``num_classes``, ``task``
        (``"classification"`` or ``"regression"``) or ``env``."""

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs and targets of the ``"train"``, ``"val"`` or ``"test"`` split."""


@runtime_checkable
class ShowsPixels(Protocol):
    """Optional: data whose inputs can be shown as pixels (undoing normalisation)."""

    def to_pixels(self, inputs: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TrainableModel(Protocol):
    """What every registered architecture provides besides the LightningModule hooks: the plain
    network that is exported, explained and compressed, and an example of what it takes."""

    net: torch.nn.Module

    def example_input(self, data: DataFamily | None = None, n: int = 2) -> torch.Tensor:
        """``n`` inputs of the kind ``net`` takes: from ``data``'s test split when given (a GAN's
        generator takes noise instead), else seeded random inputs of the right shape."""


@runtime_checkable
class DrawsEpochFigures(Protocol):
    """Optional: a model that draws figures after each epoch (samples, reconstructions); the
    study logs them under ``plots/<name>/epoch_NNN.png``."""

    def epoch_figures(self) -> dict[str, Figure]: ...


@runtime_checkable
class CountsConfusion(Protocol):
    """Optional: a classifier that accumulates its test confusion matrix and the bins of its
    reliability diagram (torchmetrics metrics with ``compute`` and ``reset``); ``fit`` returns
    them with the test metrics."""

    test_confusion: Any
    test_reliability: Any


@runtime_checkable
class HasBackbone(Protocol):
    """Optional: a model whose feature extractor can start another model (``model.name:
    transfer`` with ``backbone.source``). The blocks are its own modules (sharing their weights),
    ordered from the input up; ``backbone.freeze: first_N`` counts them."""

    def backbone_blocks(self) -> list[torch.nn.Module]: ...
