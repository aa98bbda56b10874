"""A classifier on a pretrained backbone: another model's feature extractor and a new head sized
for this task (``model.name: transfer`` with a ``backbone:`` section in the spec).

The backbone is rebuilt from the base model's registered architecture and hyperparameters
(``base``, ``base_params``, which the spec's ``backbone.source`` supplies), so a checkpoint of a
fine-tuned model loads like any other; the pretrained weights are copied in once, when training
starts (``start_from``). With ``backbone.pretrained: false`` the same network starts from random
weights: the from-scratch baseline of a transfer experiment.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workbench.contracts import HasBackbone
from workbench.models.freezing import Unfreezing, feature_size, frozen_count, param_groups
from workbench.models.supervised import SupervisedModule, adamw_with_cosine
from workbench.registry import create_model, register_model


class TransferNet(nn.Module):
    """Backbone blocks, then a head on their flattened output. ``frozen`` blocks (from the input
    up) stay in eval mode whatever ``train()`` is called with, so batch-norm statistics of a
    frozen block never move."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.frozen = 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            inputs = block(inputs)
        return self.head(inputs)

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        for block in self.blocks[: self.frozen]:
            block.eval()
        return self


@register_model("transfer")
class TransferModule(SupervisedModule):
    """Base model ``base``'s backbone (``backbone_blocks()``) with a new linear head (or one
    hidden layer of ``head_hidden`` units); ``freeze``, ``lr_factor`` and ``unfreeze_every`` as in
    ``workbench.models.freezing``."""

    def __init__(
        self,
        input_shape: tuple[int, ...] = (1, 28, 28),
        num_classes: int = 10,
        task: str = "classification",
        base: str = "cnn",
        base_params: dict[str, Any] | None = None,
        freeze: str = "none",
        lr_factor: float = 1.0,
        unfreeze_every: int = 0,
        head_hidden: int = 0,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        base_params = dict(base_params or {})
        expected = base_params.get("input_shape")
        if expected is not None and tuple(expected) != tuple(input_shape):
            raise ValueError(
                f"backbone.source: the {base!r} backbone takes inputs of shape {tuple(expected)}; "
                f"the data gives {tuple(input_shape)}"
            )
        base_params["input_shape"] = tuple(input_shape)
        blocks = self._blocks_of(create_model(base, **base_params), base)
        width = feature_size(blocks, torch.zeros(2, *input_shape))
        outputs = self.output_size(num_classes, task)
        layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(dropout)]
        if head_hidden:
            layers += [nn.Linear(width, head_hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = head_hidden
        self.net = TransferNet(blocks, nn.Sequential(*layers, nn.Linear(width, outputs)))
        self.unfreezing = Unfreezing(
            self.net.blocks, frozen_count(freeze, len(blocks)), unfreeze_every
        )
        self._set_frozen(0)

    @staticmethod
    def _blocks_of(model: nn.Module, name: str) -> list[nn.Module]:
        if not isinstance(model, HasBackbone):
            raise ValueError(
                f"backbone.source: a {name!r} model has no backbone to transfer "
                "(its class defines no backbone_blocks())"
            )
        return model.backbone_blocks()

    def backbone_blocks(self) -> list[nn.Module]:
        """Its own backbone, so a fine-tuned model can start yet another model."""
        return list(self.net.blocks)

    def start_from(self, pretrained: nn.Module) -> None:
        """Copy the backbone weights of ``pretrained`` (a module of architecture ``base``)."""
        blocks = nn.ModuleList(self._blocks_of(pretrained, self.hparams.base))
        self.net.blocks.load_state_dict(blocks.state_dict())

    def _set_frozen(self, epoch: int) -> None:
        self.net.frozen = self.unfreezing.apply(epoch)
        self.net.train(self.net.training)  # unfrozen blocks take the network's mode again

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._set_frozen(self.current_epoch)

    def configure_optimizers(self):
        groups = param_groups(
            self.net.blocks, self.net.head, self.hparams.lr, self.hparams.lr_factor
        )
        return adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay, groups)
