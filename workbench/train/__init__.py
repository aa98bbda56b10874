"""One training run: a Lightning Trainer with early stopping and checkpointing, then a test pass.

Knows nothing of Optuna or MLflow: the study passes extra callbacks (pruning) and an
``on_epoch`` function (tracking) in. ``trainer.strategy: ddp`` trains on several processes
(``ddp.py``); this process stays rank 0, so checkpoints and ``on_epoch`` happen here only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from workbench import registry
from workbench.contracts import CountsConfusion
from workbench.spec import ExperimentSpec, SpecError, TrainerSpec
from workbench.train.checkpoint import BestInMemory
from workbench.train.ddp import CountsValidation, check_ddp, ddp_strategy, is_ddp
from workbench.train.threads import SmallStepThreads

# Lightning announces GPU/TPU availability and product tips at INFO for every Trainer: once per
# trial that drowns the study's own progress lines. Warnings and errors still show.
for _name in ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")


@dataclass
class FitResult:
    """What one run produced: the best checkpoint, its score, per-epoch history, test metrics."""

    checkpoint: str
    best_score: float
    history: list[dict[str, float]]
    test_metrics: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    reliability: np.ndarray | None = None
    """Per confidence bin: count, summed confidence, correct (``ReliabilityBins``)."""

    @property
    def epochs(self) -> int:
        return len(self.history)


class EpochHistory(Callback):
    """Collects every epoch-level metric once per epoch (one host sync per epoch).

    Modules log epoch metrics in their own ``on_*_epoch_end`` hooks, which Lightning runs after
    ordinary callbacks' hooks; so an epoch is recorded when the next starts, when training ends,
    or when training is interrupted (a pruned trial raises during validation). A training loss
    (``train/loss``, or any ``train/*loss``: the GAN's two) that became NaN/inf stops the run with
    ``FloatingPointError`` instead of training on garbage.
    """

    def __init__(self, on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> None:
        self.rows: list[dict[str, float]] = []
        self.on_epoch = on_epoch
        self._epoch: int | None = None
        self._lr = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:  # a DDP fork: rank 0 records (metrics are synced)
            return
        self._record(trainer)
        self._epoch = trainer.current_epoch
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exc) -> None:
        self._record(trainer, stages=("val/",))  # the epoch's train metrics were never computed

    def _record(
        self, trainer: pl.Trainer, stages: tuple[str, ...] = ("train/", "val/", "ddp/")
    ) -> None:
        if self._epoch is None:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(stages)}
        metrics["lr"] = self._lr
        self.rows.append({"epoch": self._epoch, **metrics})
        epoch, self._epoch = self._epoch, None  # recorded once, even if on_epoch raises
        if self.on_epoch is not None:
            self.on_epoch(epoch, metrics)
        for name, value in metrics.items():
            if name.startswith("train/") and name.endswith("loss") and not math.isfinite(value):
                raise FloatingPointError(f"{name} became {value} at epoch {epoch}")


def data_from_spec(spec: ExperimentSpec) -> pl.LightningDataModule:
    """The spec's data module; its set-up (loading, splitting) happens once, on first use."""
    options = dataclasses.asdict(spec.data)
    name = options.pop("name")
    if options["path"] is None:
        options.pop("path")
    extra = options.pop("options")
    for unset in ("labels_per_class", "split_seed", "k_anonymity"):  # only families that
        if options[unset] is None:  # take them, when set
            options.pop(unset)
    for empty in ("identifiers", "quasi_identifiers", "hash_identifiers"):  # tables only
        if not options[empty]:
            options.pop(empty)
    try:
        return registry.create_data(name, seed=spec.seed, **extra, **options)
    except TypeError as exc:  # an option the data family does not take
        for field_name, families in TABLE_FIELDS.items():
            if field_name in options and f"'{field_name}'" in str(exc):
                raise SpecError(
                    f"data.{field_name}: applies to tables only ({families}), not {name!r}"
                ) from exc
        raise SpecError(f"data.options: {exc}") from exc


# Data fields only table families take, and which take them.
TABLE_FIELDS = {
    "identifiers": "csv",
    "hash_identifiers": "csv",
    "quasi_identifiers": "csv, breast_cancer, wine",
    "k_anonymity": "csv, breast_cancer, wine",
}


def module_from_spec(
    spec: ExperimentSpec, data: pl.LightningDataModule, backbone=None, **hparams: Any
) -> pl.LightningModule:
    """The spec's model, sized by the data, with the spec's fixed params and a trial's params.

    With ``backbone.source`` the model is built on that model's backbone (``backbone``, the
    ``TrainedModel`` it names, is resolved here unless given) and starts from its weights
    unless ``backbone.pretrained`` is false. The ``backbone:`` fine-tuning fields reach every
    model whose constructor takes them.
    """
    accepted = registry.constructor_arguments(spec.model.name)
    sized = {k: v for k, v in data.model_kwargs().items() if k in accepted}
    sized |= {k: getattr(spec.backbone, k) for k in registry.BACKBONE_ARGS if k in accepted}
    if spec.backbone.source is not None:
        backbone = backbone or backbone_of(spec)
        sized |= {"base": backbone.spec.model.name, "base_params": dict(backbone.module.hparams)}
    model = registry.create_model(spec.model.name, **sized, **{**spec.model.params, **hparams})
    if spec.backbone.source is not None and spec.backbone.pretrained:
        model.start_from(backbone.module)
    return model


def backbone_of(spec: ExperimentSpec):
    """The trained model ``backbone.source`` names (a ``workbench.TrainedModel``); an error
    naming the field when it cannot be found or does not fit the spec's data."""
    from workbench.trained_model import trained

    source = spec.backbone.source
    try:
        base = trained(
            source,
            root=spec.tracking.root,
            experiment=spec.tracking.experiment,
            model=spec.backbone.model,
        )
        base.module  # noqa: B018 -- load it now, so a bad checkpoint is named here
    except (LookupError, FileNotFoundError, ValueError) as exc:
        raise SpecError(f"backbone.source: {source}: {exc}") from exc
    if source.endswith(".ckpt"):
        return base
    check_split(base.spec, spec)
    if base.spec.data.normalize != spec.data.normalize:
        raise SpecError(
            f"data.normalize: the backbone {source} was trained with data.normalize="
            f"{str(base.spec.data.normalize).lower()}; set the same here"
        )
    return base


def check_split(base: ExperimentSpec, spec: ExperimentSpec) -> None:
    """A backbone pretrained on the same data must have seen the same training split, or the
    test images here may be among the images it was trained on."""

    def split(s: ExperimentSpec) -> dict[str, Any]:
        d = s.data
        return {
            "data.split_seed": s.split_seed(),
            "data.val_fraction": d.val_fraction,
            "data.test_fraction": d.test_fraction,
            "data.max_samples": d.max_samples,
            "data.path": d.path,
            "data.options": d.options,
        }

    if base.data.name != spec.data.name:
        return
    theirs, ours = split(base), split(spec)
    differ = [f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in ours if ours[k] != theirs[k]]
    if differ:
        raise SpecError(
            f"{differ[0].split()[0]}: the backbone {spec.backbone.source} was pretrained on "
            f"another split of {spec.data.name!r} ({'; '.join(differ)}); its training images "
            "could be in this test split. Use the same split (data.split_seed fixes it while "
            "seed varies)."
        )


def build_trainer(
    spec: TrainerSpec,
    monitor: str,
    mode: str,
    checkpoint_dir: str | Path,
    callbacks: Sequence[Callback] = (),
) -> tuple[pl.Trainer, ModelCheckpoint]:
    """A Trainer that stops early on ``monitor`` and keeps the best checkpoint in a directory."""
    checkpoint = BestInMemory(
        dirpath=str(checkpoint_dir),
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    precision, matmul = device_defaults(spec)
    torch.set_float32_matmul_precision(matmul)
    distributed = is_ddp(spec)
    trainer = pl.Trainer(
        max_epochs=spec.max_epochs,
        accelerator="cpu" if distributed else spec.accelerator,
        devices=spec.devices,
        strategy=ddp_strategy() if distributed else "auto",
        # The data modules shard each split by rank themselves; Lightning's sampler would pad.
        use_distributed_sampler=False,
        precision=precision,
        logger=False,  # tracking.py logs to MLflow, with statuses decided by the study
        callbacks=[
            EarlyStopping(monitor=monitor, mode=mode, patience=spec.patience),
            checkpoint,
            *([CountsValidation()] if distributed else []),
            SmallStepThreads(),
            *callbacks,
        ],
        enable_progress_bar=spec.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=spec.deterministic,
    )
    return trainer, checkpoint


def device_defaults(spec: TrainerSpec) -> tuple[str, str]:
    """Resolve ``auto`` precision settings for the device the Trainer will use.

    On CUDA: bf16 autocast where the GPU supports it and TF32 matmuls (``high``); on a CPU, full
    float32, where bf16 autocast is usually slower and less accurate.
    """
    cuda = spec.accelerator in {"auto", "gpu", "cuda"} and torch.cuda.is_available()
    precision = spec.precision
    if precision == "auto":
        precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    matmul = spec.matmul_precision
    if matmul == "auto":
        matmul = "high" if cuda else "highest"
    return precision, matmul


def fit(
    model: pl.LightningModule,
    data: pl.LightningDataModule,
    spec: TrainerSpec,
    checkpoint_dir: str | Path,
    monitor: str = "val/acc",
    mode: str = "max",
    callbacks: Sequence[Callback] = (),
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    test: bool = True,
) -> FitResult:
    """Train with early stopping, reload the best checkpoint, and evaluate it on the test split.

    Under DDP the test pass runs in this process alone, on the whole test split.
    """
    if is_ddp(spec):
        check_ddp(spec, data)
    history = EpochHistory(on_epoch)
    trainer, checkpoint = build_trainer(spec, monitor, mode, checkpoint_dir, [history, *callbacks])
    # A compiled module shares its parameters with ``model``; checkpoint and test use ``model``.
    trained = model if spec.compile == "off" else torch.compile(model, mode=spec.compile)
    _run_interruptibly(trainer, lambda: trainer.fit(trained, datamodule=data))
    best_path = checkpoint.best_model_path
    if not best_path:
        raise RuntimeError(f"no checkpoint was written: is {monitor!r} logged by the model?")
    best_score = float(checkpoint.best_model_score)
    if not math.isfinite(best_score):
        raise FloatingPointError(f"{monitor} was never finite: best value {best_score}")
    load_checkpoint_weights(model, best_path)
    result = FitResult(best_path, best_score, history.rows)
    if test:
        if is_ddp(spec):
            one = dataclasses.replace(spec, devices=1, strategy="auto", accelerator="cpu")
            trainer = build_trainer(one, monitor, mode, checkpoint_dir)[0]
        scores = _run_interruptibly(
            trainer, lambda: trainer.test(model, datamodule=data, verbose=False)
        )
        result.test_metrics = {k: float(v) for k, v in scores[0].items()}
        if isinstance(model, CountsConfusion):
            result.confusion = model.test_confusion.compute().cpu().numpy()
            result.reliability = model.test_reliability.compute().cpu().numpy()
            model.test_confusion.reset()
            model.test_reliability.reset()
    return result


def load_checkpoint_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load a Lightning checkpoint's weights safely (``weights_only=True``: no pickled code)."""
    model.load_state_dict(registry.read_checkpoint(path)["state_dict"])


class StopTraining(BaseException):
    """Raised by a callback to end training as Ctrl-C does, from any thread: ``fit`` turns it
    into KeyboardInterrupt. (Lightning answers a KeyboardInterrupt itself by installing a signal
    handler, which only the main thread may do.)"""


def _run_interruptibly(trainer: pl.Trainer, call: Callable[[], Any]) -> Any:
    """Run a Trainer entry point, turning Lightning's Ctrl-C handling back into KeyboardInterrupt.

    On Ctrl-C Lightning shuts down, ignores SIGINT from then on and raises SystemExit(1). Optuna
    does not catch SystemExit, so the trial would stay RUNNING forever and a notebook kernel would
    lose Ctrl-C. Restoring the handler and re-raising KeyboardInterrupt lets the study record it.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if in_main_thread else None
    try:
        return call()
    except SystemExit as exc:
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted") from exc
        raise
    except StopTraining as exc:
        raise KeyboardInterrupt(str(exc) or "training stopped") from exc
    finally:
        if in_main_thread and handler is not None:
            signal.signal(signal.SIGINT, handler)
