"""A convolutional autoencoder for [0, 1] images, optionally denoising (Vincent et al., 2008).

Two stride-2 convolutions and a linear layer encode an image to a ``code``-dim vector; the
decoder mirrors them and ends in a sigmoid. ``noise`` > 0 corrupts training inputs with Gaussian
noise while the target stays the clean image. The encoder is a pretrained backbone for
``model.name: transfer`` (``backbone_blocks``).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from workbench.contracts import DataFamily
from workbench.models.supervised import adamw_with_cosine, running_mean
from workbench.registry import register_model


class ConvEncoder(nn.Module):
    """(N, C, H, W) → (N, code): conv(s2) → conv(s2) → linear."""

    def __init__(self, input_shape: tuple[int, int, int], width: int, code: int) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        if height % 4 or width_px % 4:
            raise ValueError(
                f"input_shape: height and width must be multiples of 4; got {input_shape}"
            )
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.BatchNorm2d(2 * width),
            nn.ReLU(), nn.Flatten(),
        )  # fmt: skip
        self.code = nn.Linear(2 * width * (height // 4) * (width_px // 4), code)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.code(self.features(images))

    def blocks(self) -> list[nn.Module]:
        """Two strided convolution blocks, then the linear layer to the code (a backbone)."""
        return [self.features[:3], self.features[3:6], nn.Sequential(self.features[6], self.code)]


class ConvDecoder(nn.Module):
    """(N, code) → (N, C, H, W) in [0, 1]: the encoder's mirror image."""

    def __init__(self, input_shape: tuple[int, int, int], width: int, code: int) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        self.grid = (2 * width, height // 4, width_px // 4)
        self.expand = nn.Sequential(
            nn.Linear(code, 2 * width * self.grid[1] * self.grid[2]), nn.ReLU()
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.BatchNorm2d(width),
            nn.ReLU(), nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.expand(codes).view(-1, *self.grid))


class AutoencoderNet(nn.Module):
    def __init__(self, input_shape: tuple[int, int, int], width: int, code: int) -> None:
        super().__init__()
        self.encoder = ConvEncoder(input_shape, width, code)
        self.decoder = ConvDecoder(input_shape, width, code)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


@register_model("autoencoder")
class AutoencoderModule(pl.LightningModule):
    """Reconstruction with mean squared error on [0, 1] pixels; logs ``stage/mse``."""

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        code: int = 32,
        width: int = 32,
        noise: float = 0.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-5,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = AutoencoderNet(tuple(input_shape), width, code)
        self.mse = nn.ModuleDict({f"{s}_mse": running_mean() for s in ("train", "val", "test")})
        self.last_batch: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def example_input(self, data=None, n: int = 2) -> torch.Tensor:
        """``n`` test images of ``data``, or seeded random [0, 1] pixels."""
        if data is not None:
            return data.split("test")[0][:n]
        seeded = torch.Generator().manual_seed(0)
        return torch.rand(n, *self.hparams.input_shape, generator=seeded)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.encoder(images)

    def backbone_blocks(self) -> list[nn.Module]:
        """The encoder's blocks; the decoder stays behind."""
        return self.net.encoder.blocks()

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, _ = batch
        corrupted = images
        if stage == "train" and self.hparams.noise > 0:
            corrupted = (images + self.hparams.noise * torch.randn_like(images)).clamp(0, 1)
        loss = F.mse_loss(self.net(corrupted), images)
        self.mse[f"{stage}_mse"].update(loss.detach(), len(images))
        if stage == "val":
            self.last_batch = images[:8].detach()
        return loss

    def on_fit_start(self) -> None:
        data = self.trainer.datamodule
        if isinstance(data, DataFamily):
            images = data.split("train")[0]
            if images.min() < -1e-3 or images.max() > 1 + 1e-3:
                raise ValueError(
                    "data.normalize: the autoencoder reconstructs [0, 1] pixels; set it to false"
                )

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _log(self, stage: str) -> None:
        mse = self.mse[f"{stage}_mse"].compute()
        self.log_dict({f"{stage}/mse": mse, f"{stage}/loss": mse})
        self.mse[f"{stage}_mse"].reset()

    def on_train_epoch_end(self):
        self._log("train")

    def on_validation_epoch_end(self):
        self._log("val")

    def on_test_epoch_end(self):
        self._log("test")

    def configure_optimizers(self):
        return adamw_with_cosine(self, self.hparams.lr, self.hparams.weight_decay)

    def epoch_figures(self) -> dict:
        """Validation images (top) over their reconstructions (bottom)."""
        from workbench.plots import image_grid

        if self.last_batch is None:
            return {}
        with torch.no_grad():
            was_training = self.net.training
            self.net.eval()
            rebuilt = self.net(self.last_batch)
            self.net.train(was_training)
        rows = torch.stack([self.last_batch, rebuilt]).cpu()[:, :, 0]
        return {"reconstructions": image_grid(rows, "inputs (top) and reconstructions (bottom)")}
