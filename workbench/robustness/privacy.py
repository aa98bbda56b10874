"""Differentially private training (DP-SGD, Abadi et al. 2016) through Opacus, as a Lightning
callback: Poisson-sampled batches, per-example gradients clipped and noised so that the whole
run spends at most the target (ε, δ), and the budget actually spent reported on the run."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
from torch import nn

from workbench.spec import SpecError

# Opacus computes per-example gradients in backward hooks on every layer with weights: on the
# first layer, whose inputs need no gradient, torch says so once per run. Expected, not a fault.
warnings.filterwarnings("ignore", message=r"Full backward hook is firing when gradients")

# Poisson sampling draws each row with probability q = batch / N: a batch is empty with
# probability (1 - q)^N ≈ exp(-batch) per step, and an empty batch has no mean loss. From 16
# rows on that is below 1e-7 per step.
MIN_EXPECTED_BATCH = 16


@dataclass
class PrivacyReport:
    """What a DP-SGD run spent (ε at δ, from Opacus' accountant) and the settings that decide
    it: noise multiplier σ, sampling rate q, optimiser steps, clipping norm."""

    epsilon: float
    delta: float
    target_epsilon: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    accountant: str
    replaced: list[str] = field(default_factory=list)
    """The layers Opacus cannot train, and what replaced them."""

    def metrics(self) -> dict[str, float]:
        """The report as ``privacy/*`` metrics of the run."""
        return {
            "privacy/epsilon": self.epsilon,
            "privacy/delta": self.delta,
            "privacy/target_epsilon": self.target_epsilon,
            "privacy/noise_multiplier": self.noise_multiplier,
            "privacy/sample_rate": self.sample_rate,
            "privacy/steps": float(self.steps),
            "privacy/max_grad_norm": self.max_grad_norm,
            "privacy/replaced_layers": float(len(self.replaced)),
        }


def spent_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """The ε that ``steps`` steps of the sampled Gaussian mechanism spend at ``delta``, by Opacus'
    accountant (``prv``, ``rdp`` or ``gdp``)."""
    from opacus.accountants import create_accountant

    if steps == 0:
        return 0.0
    counter = create_accountant(mechanism=accountant)
    counter.history = [(noise_multiplier, sample_rate, steps)]
    with _quiet_accounting():
        return float(counter.get_epsilon(delta=delta))


@contextlib.contextmanager
def _quiet_accounting() -> Iterator[None]:
    """Opacus' PRV accountant sizes its numerical domain with an RDP bound, which warns when
    its best order is the largest tried: a wider domain, not a larger ε (with ``rdp`` itself,
    an ε a little above the tightest, still an upper bound). Without torchcsprng every engine
    warns that its RNG is not cryptographically secure (``secure_mode``): fine for research,
    not for a release trained on real people's data."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Optimal order is the largest alpha")
        warnings.filterwarnings("ignore", message=r"Secure RNG turned off")
        yield


def check_privacy(privacy: Any, data: Any, batch_size: int | None = None) -> int:
    """The number of training rows N, after checking the spec's privacy settings against the
    data: δ below 1/N, and batches large enough for Poisson sampling. Errors name the field."""
    if not hasattr(data, "split"):
        raise SpecError(
            f"privacy.epsilon: DP-SGD samples rows of an in-memory training split; "
            f"{type(data).__name__} has none"
        )
    rows = len(data.split("train")[1])
    if privacy.delta >= 1 / rows:
        raise SpecError(
            f"privacy.delta: must be below 1/N, N = {rows} training rows (1/N = {1 / rows:.3g}); "
            f"got {privacy.delta:g}"
        )
    batch = data.batch_size if batch_size is None else batch_size
    expected = rows / math.ceil(rows / batch)  # Opacus' rate: one over the batches per epoch
    if expected < MIN_EXPECTED_BATCH:
        raise SpecError(
            f"data.batch_size: DP-SGD's Poisson batches of {expected:.1f} rows on average are "
            f"empty too often; use at least {MIN_EXPECTED_BATCH}"
        )
    return rows


def private_network(network: nn.Module) -> tuple[nn.Module, list[str]]:
    """``network`` with the layers Opacus cannot train (batch norm) replaced as Opacus prescribes
    (``ModuleValidator.fix``: GroupNorm), and a line per replacement; the same network when
    nothing needs replacing. An error names any layer that remains unsupported."""
    from opacus.validators import ModuleValidator

    if ModuleValidator.is_valid(network):
        return network, []
    before = dict(network.named_modules())
    fixed = ModuleValidator.fix(network)
    replaced = [
        f"{name}: {_layer(before[name])} → {_layer(module)}"
        for name, module in fixed.named_modules()
        if name in before and type(module) is not type(before[name])
    ]
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise ValueError(f"privacy: Opacus cannot train this network: {errors[0]}")
    return fixed, replaced


def _layer(module: nn.Module) -> str:
    if isinstance(module, nn.GroupNorm):
        return f"GroupNorm({module.num_groups}, {module.num_channels})"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{type(module).__name__}({module.num_features})"
    return type(module).__name__


class DifferentialPrivacy(pl.Callback):
    """Turns a Lightning fit into DP-SGD with Opacus' ``PrivacyEngine``.

    ``setup``: checks δ < 1/N and replaces batch norm (before the optimiser exists; a model with
    a ``norm`` option records ``norm=group`` so its checkpoint rebuilds). ``on_fit_start``: the
    noise multiplier for the target ε over ``max_epochs`` (Opacus' accountant), per-example
    gradients by hooks on the plain network (its state dict stays loadable), the optimiser
    wrapped in ``DPOptimizer`` and the training batches Poisson-sampled with q = 1 / (batches per
    epoch). ``on_train_end``: the spent ε for the steps actually taken (early stopping spends
    less), in ``report``; the test pass logs it as ``privacy/*`` metrics.
    """

    def __init__(self, spec: Any, data: Any = None) -> None:
        self.spec, self.data = spec, data
        self.report: PrivacyReport | None = None
        self.replaced: list[str] = []
        self._engine = self._hooks = self._datamodule = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.world_size > 1:
            raise SpecError("trainer.devices: DP-SGD here trains on one process")
        self._datamodule = self.data if trainer.datamodule is None else trainer.datamodule
        check_privacy(self.spec, self._datamodule)
        network, self.replaced = private_network(pl_module.net)
        if not self.replaced:
            return
        if "norm" not in pl_module.hparams:
            raise SpecError(
                f"model.name: {type(pl_module).__name__} has layers DP-SGD cannot train "
                f"({'; '.join(self.replaced)}) and no `norm` option to be rebuilt with what "
                "Opacus puts in their place; use a model without batch norm"
            )
        pl_module.net = network
        pl_module.hparams["norm"] = "group"  # the checkpoint rebuilds the network trained
        warnings.warn(
            "privacy: batch norm mixes the examples of a batch, so DP-SGD cannot train it; "
            f"replaced as Opacus' ModuleValidator.fix prescribes: {'; '.join(self.replaced)}. "
            "The checkpoint records norm=group (the run's logged params show the spec's "
            "norm); set model.params.norm: group to train this network from the start.",
            stacklevel=2,
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        if len(trainer.optimizers) != 1:
            raise ValueError("privacy: DP-SGD wraps a single optimiser")
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ValueError("trainer.max_epochs: DP-SGD calibrates its noise to a set length")
        data = self._datamodule
        loader = DataLoader(TensorDataset(*data.split("train")), batch_size=data.batch_size)
        with _quiet_accounting():
            self._engine = PrivacyEngine(accountant=self.spec.accountant)
            self._hooks, optimizer, private_loader = self._engine.make_private_with_epsilon(
                module=pl_module.net,
                optimizer=trainer.optimizers[0],
                data_loader=loader,
                target_epsilon=self.spec.epsilon,
                target_delta=self.spec.delta,
                epochs=trainer.max_epochs,
                max_grad_norm=self.spec.max_grad_norm,
                wrap_model=False,  # hooks on the network itself: its state dict keys stay
            )
        trainer.strategy.optimizers = [optimizer]
        # Lightning asks the data module for the training batches after this hook: for this
        # fit only, they are Opacus' Poisson-sampled ones (undone in ``_release``).
        data.train_dataloader = lambda: private_loader

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        history = self._engine.accountant.history  # [(σ, q, steps)]: one σ and q throughout
        steps = sum(count for _, _, count in history)
        if steps != trainer.global_step:
            raise RuntimeError(
                f"privacy: {steps} of {trainer.global_step} optimiser steps were DP-SGD steps; "
                "the privacy budget does not hold (a compiled or wrapped network?)"
            )
        optimizer = trainer.optimizers[0]
        sample_rate = history[0][1] if history else 1 / len(trainer.train_dataloader)
        spec = self.spec
        self.report = PrivacyReport(
            epsilon=spent_epsilon(
                optimizer.noise_multiplier, sample_rate, steps, spec.delta, spec.accountant
            ),
            delta=spec.delta,
            target_epsilon=spec.epsilon,
            noise_multiplier=optimizer.noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            max_grad_norm=spec.max_grad_norm,
            accountant=spec.accountant,
            replaced=list(self.replaced),
        )

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.report is not None:  # with the test metrics, onto the run
            pl_module.log_dict(self.report.metrics())

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc) -> None:
        self._release()

    def _release(self) -> None:
        """The network without Opacus' hooks, the data module with its own training batches."""
        if self._hooks is not None:
            self._hooks.cleanup()
            self._hooks = None
        if self._datamodule is not None:
            vars(self._datamodule).pop("train_dataloader", None)
