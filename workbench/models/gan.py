"""A DCGAN (Radford et al., 2016) for small grayscale images, with Lightning manual optimisation.

The generator maps ``latent``-dim noise to images through transposed convolutions with batch
norm; the discriminator mirrors it with strided convolutions and leaky ReLU. Each has its own
Adam optimiser (lr 2e-4, β1 = 0.5 as in the paper) and they take turns on every batch.

Sample quality is judged by a trained ``cnn`` classifier (``judge_checkpoint``): on a fixed set of
generated images, its mean top-class probability (``confidence``: do they look like digits?) and
the share of the rarest predicted class (``min_class_share``: are all digits made, or did the
generator collapse onto a few modes?). A minibatch-standard-deviation feature in the
discriminator works against that collapse; dropout and differentiable shifts of every image the
discriminator sees (DiffAugment) keep it from memorising a small training set. What is judged and
exported is a moving average of the generator's weights.

With ``info_codes: k`` it is an InfoGAN (Chen et al., 2016): the first k noise dimensions become
a categorical code (their argmax, one-hot), and a head on the discriminator's features is trained
with both networks to recover the code from the image. The generator must then make k kinds of
image that can be told apart; on MNIST many codes come to stand for one digit each (others mix
two or three), and the digits come out more distinct: the judge's confidence rises.
"""

from __future__ import annotations

import copy
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

from workbench.data.arrays import random_affine
from workbench.models.gan_networks import Discriminator, Generator
from workbench.models.supervised import running_mean
from workbench.registry import register_model

# The frozen judge stays in eval mode during training on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


@register_model("gan")
class GANModule(pl.LightningModule):
    """DCGAN; validation and test judge ``n_judged`` samples from fixed noise."""

    def __init__(
        self,
        judge_checkpoint: str,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        latent: int = 64,
        width: int = 64,
        lr: float = 2e-4,
        beta1: float = 0.5,
        label_smoothing: float = 0.1,
        d_dropout: float = 0.3,
        augment_shift: float = 0.1,
        ema_decay: float = 0.999,
        spectral_norm: bool = False,
        d_extra_layers: int = 0,
        info_codes: int = 0,
        info_weight: float = 1.0,
        n_judged: int = 1000,
    ) -> None:
        super().__init__()
        from workbench.registry import load_module

        self.save_hyperparameters()
        self.automatic_optimization = False
        shape = tuple(input_shape)
        if d_extra_layers < 0:
            raise ValueError(f"d_extra_layers: must be 0 or more; got {d_extra_layers}")
        if info_codes == 1 or not 0 <= info_codes < latent:
            raise ValueError(
                f"info_codes: must be 0 (off) or from 2 to latent - 1 = {latent - 1}; "
                f"got {info_codes}"
            )
        if shape[1] % 4 or shape[2] % 4:
            raise ValueError(f"input_shape: height and width must be multiples of 4; got {shape}")
        self.generator = Generator(shape, latent, width, info_codes)  # trained by its optimiser
        # What is judged, logged and exported: an exponential moving average of the generator's
        # weights (Yazıcı et al., 2019), smoother than the weights at any one step.
        self.net = copy.deepcopy(self.generator).requires_grad_(False)
        self.discriminator = Discriminator(
            shape, width, d_dropout, spectral_norm, d_extra_layers, info_codes
        )
        self.judge = load_module(judge_checkpoint, "cnn").net.eval().requires_grad_(False)
        # The judge was trained on standardised pixels: their statistics are set in on_fit_start.
        self.register_buffer("pixel_mean", torch.tensor(0.0))
        self.register_buffer("pixel_std", torch.tensor(1.0))
        fixed = torch.Generator().manual_seed(1234)
        self.register_buffer("val_noise", torch.randn(n_judged, latent, generator=fixed))
        self.register_buffer("test_noise", torch.randn(n_judged, latent, generator=fixed))
        losses = ["d_loss", "g_loss"] + (["info_loss"] if info_codes else [])
        self.losses = nn.ModuleDict({name: running_mean() for name in losses})

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.net(noise)

    def example_input(self, data=None, n: int = 2) -> torch.Tensor:
        """What the exported generator takes: ``n`` seeded noise vectors."""
        return torch.randn(n, self.hparams.latent, generator=torch.Generator().manual_seed(0))

    def on_fit_start(self) -> None:
        data = self.trainer.datamodule
        images = data.split("train")[0]
        if images.min() < -1e-3 or images.max() > 1 + 1e-3:
            raise ValueError("data.normalize: the GAN generates [0, 1] pixels; set it to false")
        self.pixel_mean.fill_(float(images.mean()))
        self.pixel_std.fill_(float(images.std()))

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """Differentiable random shifts of every image the discriminator sees, real or fake
        (DiffAugment, Zhao et al. 2020): it cannot memorise 4,500 digits, and the generator's
        gradients pass through the same transform."""
        shift = self.hparams.augment_shift
        if shift <= 0:
            return images
        return random_affine(images, max_degrees=0.0, max_shift=shift)

    def training_step(self, batch, batch_idx):
        real, _ = batch
        d_opt, g_opt = self.optimizers()
        noise = torch.randn(len(real), self.hparams.latent, device=real.device)
        fake = self.generator(noise)
        codes = self.hparams.info_codes
        code = noise[:, :codes].argmax(1) if codes else None

        # Discriminator: real → 1 (smoothed, Salimans et al. 2016), fake → 0.
        real_logits = self.discriminator(self.augment(real))
        fake_logits, d_info = self._discriminate_fakes(self.augment(fake.detach()), code)
        d_loss = F.binary_cross_entropy_with_logits(
            real_logits, torch.full_like(real_logits, 1.0 - self.hparams.label_smoothing)
        ) + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
        if codes:
            d_loss = d_loss + self.hparams.info_weight * d_info
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()

        # Generator: make the discriminator call the fakes real (non-saturating loss).
        fooled, g_info = self._discriminate_fakes(self.augment(fake), code)
        g_loss = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        if codes:
            g_loss = g_loss + self.hparams.info_weight * g_info
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self._update_average()
        self.losses["d_loss"].update(d_loss.detach())
        self.losses["g_loss"].update(g_loss.detach())
        if codes:
            self.losses["info_loss"].update(g_info.detach())

    def _discriminate_fakes(self, fakes: torch.Tensor, code: torch.Tensor | None):
        """The discriminator's logits on ``fakes`` and, with InfoGAN codes, the cross-entropy
        of recovering ``code`` from them (None without codes: nothing added on the hot path)."""
        if code is None:
            return self.discriminator(fakes), None
        logits, code_logits = self.discriminator.with_codes(fakes)
        return logits, F.cross_entropy(code_logits, code)

    @torch.no_grad()
    def _update_average(self) -> None:
        decay = self.hparams.ema_decay
        for average, live in zip(self.net.parameters(), self.generator.parameters(), strict=True):
            average.lerp_(live, 1.0 - decay)
        for average, live in zip(self.net.buffers(), self.generator.buffers(), strict=True):
            average.copy_(live)  # batch-norm statistics follow the live generator

    def on_train_epoch_end(self) -> None:
        self.log_dict({f"train/{k}": m.compute() for k, m in self.losses.items()})
        for metric in self.losses.values():
            metric.reset()

    @torch.no_grad()
    def judge_samples(self, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """The judge's confidence and class shares on the images generated from ``noise``."""
        self.judge.eval()
        images = self.net(noise)
        probs = F.softmax(self.judge((images - self.pixel_mean) / self.pixel_std), dim=1)
        confidence, predicted = probs.max(dim=1)
        shares = torch.bincount(predicted, minlength=probs.shape[1]).float() / len(predicted)
        return {"confidence": confidence.mean(), "min_class_share": shares.min(), "shares": shares}

    def _judge(self, stage: str, noise: torch.Tensor) -> None:
        scores = self.judge_samples(noise)
        # One number to monitor: confidence, scaled down when any digit makes up under 3 %.
        quality = scores["confidence"] * torch.clamp(scores["min_class_share"] / 0.03, max=1.0)
        self.log_dict(
            {
                f"{stage}/confidence": scores["confidence"],
                f"{stage}/min_class_share": scores["min_class_share"],
                f"{stage}/quality": quality,
            }
        )

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self._judge("val", self.val_noise)

    def test_step(self, batch, batch_idx):
        if batch_idx == 0:
            self._judge("test", self.test_noise)

    def configure_optimizers(self):
        betas = (self.hparams.beta1, 0.999)
        return [
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas),
            torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
        ]

    def code_noise(self, per_code: int = 8) -> torch.Tensor:
        """(codes · per_code, latent) noise: the first ``per_code`` fixed vectors with each
        InfoGAN category in turn, so row c of a grid shows what code c has come to mean."""
        codes = self.hparams.info_codes
        noise = self.val_noise[:per_code].repeat(codes, 1)
        rows = torch.arange(codes, device=noise.device).repeat_interleave(per_code)
        noise[:, :codes] = F.one_hot(rows, codes).to(noise.dtype)
        return noise

    def epoch_figures(self) -> dict:
        """64 samples from the first fixed noise vectors (the same points every epoch) and, for
        an InfoGAN, one row per category code."""
        from workbench.plots import image_grid

        epoch = self.current_epoch
        with torch.no_grad():
            was_training = self.net.training
            self.net.eval()
            images = self.net(self.val_noise[:64])[:, 0].cpu()
            figures = {"samples": image_grid(images, f"samples after epoch {epoch}")}
            codes = self.hparams.info_codes
            if codes:
                rows = self.net(self.code_noise()).view(codes, -1, *images.shape[1:]).cpu()
                title = f"one row per InfoGAN code, after epoch {epoch}"
                figures["codes"] = image_grid(rows, title)
            self.net.train(was_training)
        return figures
