"""Contrastive self-supervised pretraining (SimCLR; Chen et al., 2020) on unlabelled images.

Two random views of each image (affine crop, rotation, noise, a cut-out patch: drawn on the
batch's device) go through the encoder and a projection head; the NT-Xent loss pulls the two
views of an image together and pushes the other 2N-2 apart. Labels are never read. The encoder is
the autoencoder's (``ConvEncoder``), so both pretraining objectives give the same backbone to
``model.name: transfer``; the projection head is dropped there (``backbone_blocks``).

Logs ``stage/loss`` (NT-Xent) and ``stage/pair_acc``: how often a view's nearest other view is its
partner, a label-free measure of how well the views are told apart.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from workbench.models.autoencoder import ConvEncoder
from workbench.models.supervised import adamw_with_cosine, running_mean
from workbench.registry import register_model


def random_views(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view per image: rotate ±20°, scale 0.8-1.2, shift ±15 %, add noise (σ 0.1)
    and blank a random 30 % × 30 % patch. Works on normalised or [0, 1] inputs alike."""
    n, device = images.shape[0], images.device
    # Training views are drawn on the batch's device; a seeded generator (validation) is a CPU
    # one, so those few numbers are drawn there and moved.
    source = "cpu" if generator is not None else device

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=source).to(device)

    angle = (uniform(n) * 2 - 1) * math.radians(20)
    scale = 0.8 + 0.4 * uniform(n)
    shift = (uniform(n, 2) * 2 - 1) * 0.3  # the grid spans [-1, 1]: ±15 % of the image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    noise = torch.randn(views.shape, generator=generator, device=source).to(device)
    views = views + 0.1 * views.std() * noise
    height, width = images.shape[-2:]
    size_h, size_w = max(1, int(0.3 * height)), max(1, int(0.3 * width))
    top = (uniform(n) * (height - size_h + 1)).long()
    left = (uniform(n) * (width - size_w + 1)).long()
    rows = torch.arange(height, device=device)[None, :, None]
    cols = torch.arange(width, device=device)[None, None, :]
    patch = (
        (rows >= top[:, None, None])
        & (rows < (top + size_h)[:, None, None])
        & (cols >= left[:, None, None])
        & (cols < (left + size_w)[:, None, None])
    )
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    return torch.where(patch[:, None], background, views)


def nt_xent(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over 2N projections (rows i and i+N are the two views of one image); also the
    share of rows whose most similar other row is their partner."""
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    loss = F.cross_entropy(similarity, partners)
    accuracy = (similarity.argmax(dim=1) == partners).float().mean()
    return loss, accuracy


class SimCLRNet(nn.Module):
    """The encoder (what transfers) and the projection head (what the loss sees)."""

    def __init__(
        self, input_shape: tuple[int, int, int], width: int, code: int, projection: int
    ) -> None:
        super().__init__()
        self.encoder = ConvEncoder(input_shape, width, code)
        self.projector = nn.Sequential(
            nn.ReLU(), nn.Linear(code, code), nn.ReLU(), nn.Linear(code, projection)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Representations (N, code): what a downstream model starts from."""
        return self.encoder(images)


@register_model("simclr")
class SimCLRModule(pl.LightningModule):
    """SimCLR pretraining of a ``ConvEncoder``; ``stage/loss`` is the NT-Xent loss."""

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        code: int = 64,
        width: int = 32,
        projection: int = 32,
        temperature: float = 0.5,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SimCLRNet(tuple(input_shape), width, code, projection)
        self.metrics = nn.ModuleDict(
            {f"{s}_{m}": running_mean() for s in ("train", "val", "test") for m in ("loss", "acc")}
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def example_input(self, data=None, n: int = 2) -> torch.Tensor:
        """``n`` test images of ``data``, or seeded random inputs of the model's shape."""
        if data is not None:
            return data.split("test")[0][:n]
        seeded = torch.Generator().manual_seed(0)
        return torch.randn(n, *self.hparams.input_shape, generator=seeded)

    def backbone_blocks(self) -> list[nn.Module]:
        """The encoder's blocks (as the autoencoder's); the projection head stays behind."""
        return self.net.encoder.blocks()

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, _ = batch  # labels are never read
        # Validation and test views are drawn the same way every epoch: comparable losses.
        seeded = None if stage == "train" else torch.Generator().manual_seed(len(images))
        views = torch.cat([random_views(images, seeded), random_views(images, seeded)])
        projections = self.net.projector(self.net.encoder(views))
        loss, accuracy = nt_xent(projections, self.hparams.temperature)
        self.metrics[f"{stage}_loss"].update(loss.detach(), len(images))
        self.metrics[f"{stage}_acc"].update(accuracy.detach(), len(images))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log(self, stage: str) -> None:
        loss, acc = self.metrics[f"{stage}_loss"], self.metrics[f"{stage}_acc"]
        self.log_dict({f"{stage}/loss": loss.compute(), f"{stage}/pair_acc": acc.compute()})
        loss.reset()
        acc.reset()

    def on_train_epoch_end(self):
        self._log("train")

    def on_validation_epoch_end(self):
        self._log("val")

    def on_test_epoch_end(self):
        self._log("test")

    def configure_optimizers(self):
        return adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay)
