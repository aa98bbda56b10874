"""The DCGAN's two plain networks (used by ``models/gan.py``): a generator of transposed
convolutions with batch norm, and a discriminator of strided convolutions with leaky ReLU, a
minibatch-standard-deviation feature against mode collapse, and an optional InfoGAN code head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Generator(nn.Module):
    """(N, latent) noise → (N, C, H, W) images in [0, 1]; H and W multiples of 4.

    As in the DCGAN of the TensorFlow tutorial: a projection to 4·width channels on a quarter-size
    grid, a stride-1 transposed convolution, then two stride-2 ones up to full size.

    With ``codes`` > 0 the first ``codes`` noise entries are replaced by the one-hot of their
    argmax: a category drawn uniformly (the argmax of i.i.d. normals is uniform), so plain
    Gaussian noise still samples every category and callers need not know about the codes."""

    def __init__(
        self, input_shape: tuple[int, int, int], latent: int, width: int, codes: int = 0
    ) -> None:
        super().__init__()
        self.codes = codes
        channels, height, width_px = input_shape
        self.grid = (4 * width, height // 4, width_px // 4)
        self.project = nn.Sequential(
            nn.Linear(latent, 4 * width * self.grid[1] * self.grid[2], bias=False),
            nn.BatchNorm1d(4 * width * self.grid[1] * self.grid[2]), nn.ReLU(),
        )  # fmt: skip
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(), nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        if self.codes:
            code = F.one_hot(noise[:, : self.codes].argmax(1), self.codes).to(noise.dtype)
            noise = torch.cat([code, noise[:, self.codes :]], 1)
        return self.upsample(self.project(noise).view(-1, *self.grid))


class MinibatchStd(nn.Module):
    """Appends the batch's mean feature standard deviation as one more channel (Karras et al.,
    2018): a generator that makes the same image again and again is then easy to tell apart."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        spread = features.std(dim=0, unbiased=False).mean()
        return torch.cat([features, spread.expand(len(features), 1, *features.shape[2:])], 1)


class Discriminator(nn.Module):
    """(N, C, H, W) images → (N,) logits of "real"; dropout keeps it from memorising a small
    training set, which would leave the generator without useful gradients."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        width: int,
        dropout: float,
        spectral: bool = False,
        extra_layers: int = 0,
        codes: int = 0,
    ) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        # Spectral normalisation (Miyato et al., 2018) bounds each layer's Lipschitz constant;
        # it replaces batch norm in the discriminator when on.
        norm = nn.utils.parametrizations.spectral_norm if spectral else (lambda layer: layer)

        def block(conv: nn.Conv2d) -> list[nn.Module]:
            batch_norm = nn.Identity() if spectral else nn.BatchNorm2d(conv.out_channels)
            return [norm(conv), batch_norm, nn.LeakyReLU(0.2), nn.Dropout(dropout)]

        layers = [norm(nn.Conv2d(channels, width, 4, 2, 1)), nn.LeakyReLU(0.2), nn.Dropout(dropout)]
        layers += block(nn.Conv2d(width, 2 * width, 4, 2, 1, bias=spectral))
        out = 2 * width
        for _ in range(extra_layers):  # 3×3 convolutions on the quarter-size grid
            layers += block(nn.Conv2d(out, 4 * width, 3, 1, 1, bias=spectral))
            out = 4 * width
        self.net = nn.Sequential(
            *layers,
            MinibatchStd(),
            nn.Flatten(),
            norm(nn.Linear((out + 1) * (height // 4) * (width_px // 4), 1)),
        )
        # InfoGAN's Q head: the generator's categorical code, from the same features.
        self.code_head = nn.Linear(self.net[-1].in_features, codes) if codes else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)

    def with_codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N,) logits of "real" and (N, codes) logits of the code, from one pass."""
        features = self.net[:-1](images)
        return self.net[-1](features).squeeze(1), self.code_head(features)
