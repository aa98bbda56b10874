"""The compression path for a study's best CNN: prune, quantize and distil it, measure every
variant, and log each as a child run of the teacher's MLflow run with a comparison plot."""

from __future__ import annotations

import dataclasses
import tempfile

import lightning.pytorch as pl
import torch

from workbench.compress.prune import channel_prune, magnitude_prune, make_permanent
from workbench.compress.quantize import quantize_dynamic_int8, quantize_static_int8
from workbench.compress.report import CompressionReport, measure
from workbench.spec import ExperimentSpec


def _fine_tune(network: torch.nn.Module, teacher, data, spec: ExperimentSpec, epochs: int):
    """A short fine-tune of a pruned network through the same Trainer path (masks stay applied)."""
    from workbench.registry import create_model
    from workbench.train import fit

    module = create_model(
        spec.model.name, **{**dict(teacher.hparams), "lr": teacher.hparams.lr / 3}
    )
    module.net = network
    trainer_spec = dataclasses.replace(spec.trainer, max_epochs=epochs, patience=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        fit(module, data, trainer_spec, tmp, monitor=spec.study.metric, test=False)
    return module.net


def compress_best(
    spec: ExperimentSpec,
    sparsity: float = 0.5,
    channel_fraction: float = 0.5,
    finetune_epochs: int = 2,
    distill_epochs: int = 10,
    repeats: int = 30,
    log: bool = True,
) -> CompressionReport:
    """Compress the best trial of ``spec``'s study; return (and log) the report."""
    from workbench import tracking
    from workbench.models.distilled_cnn import DistilledCNNModule
    from workbench.train import fit
    from workbench.trained_model import trained

    best = trained(spec)
    checkpoint, data, teacher = best.checkpoint, best.data, best.module
    inputs, targets = data.split("test")
    calibration = data.split("train")[0][:1024]

    pl.seed_everything(spec.seed, verbose=False)
    variants = {"original (fp32)": teacher.net}
    pruned = _fine_tune(
        magnitude_prune(teacher.net, sparsity), teacher, data, spec, finetune_epochs
    )
    variants[f"magnitude-pruned {sparsity:.0%}"] = make_permanent(pruned)
    slim = _fine_tune(
        channel_prune(teacher.net, channel_fraction), teacher, data, spec, finetune_epochs
    )
    variants[f"channel-pruned {channel_fraction:.0%}"] = slim
    variants["dynamic int8"] = quantize_dynamic_int8(teacher.net)
    variants["static int8"] = quantize_static_int8(teacher.net, calibration)
    student = DistilledCNNModule(checkpoint, **data.model_kwargs())
    student_spec = dataclasses.replace(
        spec.trainer, max_epochs=distill_epochs, patience=distill_epochs
    )
    with tempfile.TemporaryDirectory() as tmp:
        fit(student, data, student_spec, tmp, monitor=spec.study.metric, test=False)
    variants["distilled student"] = student.net

    report = CompressionReport(
        [measure(name, net, inputs, targets, repeats) for name, net in variants.items()]
    )
    if log:
        store, teacher_run = best.store, best.run_id
        for variant in report.variants:
            run_id = tracking.start_run(
                store,
                f"compress: {variant.name}",
                {tracking.ROLE: "compression", tracking.STUDY: spec.name},
                parent=teacher_run,
            )
            tracking.log_params(
                store,
                run_id,
                {
                    "variant": variant.name,
                    "sparsity": sparsity,
                    "channel_fraction": channel_fraction,
                    "finetune_epochs": finetune_epochs,
                    "distill_epochs": distill_epochs,
                },
            )
            tracking.log_metrics(store, run_id, variant.as_metrics())
            tracking.end_run(store, run_id, "FINISHED")
        tracking.log_figure(store, teacher_run, report.plot(), "compression/report.png")
        tracking.log_json(store, teacher_run, report.rows(), "compression/report.json")
    return report
