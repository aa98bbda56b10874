"""Compression: pruning, quantization and distillation checked against cases known by hand."""

from __future__ import annotations

import io

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from workbench.compress.prune import channel_prune, magnitude_prune, make_permanent, weight_sparsity
from workbench.compress.quantize import quantize_dynamic_int8, quantize_static_int8
from workbench.compress.report import file_size_bytes, measure
from workbench.models.cnn import ConvNet
from workbench.models.distilled_cnn import distillation_loss
from workbench.registry import create_data, create_model
from workbench.spec import TrainerSpec
from workbench.train import fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CNN trained for a few epochs on the 8×8 digits, and its data."""
    pl.seed_everything(0, verbose=False)
    data = create_data("digits", seed=0, batch_size=64)
    module = create_model("cnn", **data.model_kwargs(), width=16, hidden=64)
    fit(
        module,
        data,
        TrainerSpec(max_epochs=6, patience=6, accelerator="cpu"),
        tmp_path_factory.mktemp("ckpt"),
        test=False,
    )
    return module.net.eval(), data


def test_magnitude_pruning_hits_its_sparsity_and_masks_survive_training(trained):
    network, data = trained
    pruned = magnitude_prune(network, 0.6)
    assert weight_sparsity(pruned) == pytest.approx(0.6, abs=0.01)
    zero = [
        m.weight == 0 for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    optimiser = torch.optim.SGD(pruned.parameters(), lr=0.1)
    inputs, targets = data.split("train")
    pruned.train()
    F.cross_entropy(pruned(inputs[:64]), targets[:64]).backward()
    optimiser.step()
    after = [
        m.weight == 0 for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    assert all(torch.equal(a & b, b) for a, b in zip(after, zero, strict=True))
    permanent = make_permanent(pruned)
    assert not any(hasattr(m, "weight_mask") for m in permanent.modules())
    assert weight_sparsity(permanent) == pytest.approx(0.6, abs=0.01)
    assert weight_sparsity(network) < 0.01  # the original is untouched


def test_channel_pruning_removes_dead_channels_exactly():
    torch.manual_seed(0)
    network = ConvNet((1, 8, 8), 10, width=8, depth=2, hidden=16).eval()
    convs = [m for m in network.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in network.features if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for conv, norm in zip(convs, norms, strict=True):
            dead = torch.arange(conv.out_channels) % 2 == 1  # every other channel outputs 0
            conv.weight[dead] = 0.0
            conv.bias[dead] = 0.0
            norm.weight[dead] = 0.0
            norm.bias[dead] = 0.0
    slim = channel_prune(network, 0.5).eval()
    assert [m.out_channels for m in slim.features if isinstance(m, torch.nn.Conv2d)] == [4, 8]
    inputs = torch.randn(5, 1, 8, 8)
    assert torch.allclose(slim(inputs), network(inputs), atol=1e-5)
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * sum(
        p.numel() for p in network.parameters()
    )


def test_int8_quantization_keeps_accuracy_and_shrinks_the_file(trained):
    network, data = trained
    inputs, targets = data.split("test")
    base = measure("fp32", network, inputs, targets, repeats=3)
    # Dynamic int8 quantizes the linear layers only; static int8 quantizes convolutions too.
    dynamic = measure("dynamic", quantize_dynamic_int8(network), inputs, targets, repeats=3)
    static = measure(
        "static",
        quantize_static_int8(network, data.split("train")[0][:512]),
        inputs,
        targets,
        repeats=3,
    )
    for variant in (dynamic, static):
        assert variant.accuracy >= base.accuracy - 0.02
    assert dynamic.size_bytes < 0.75 * base.size_bytes
    assert static.size_bytes < base.size_bytes / 2


def test_distillation_loss_matches_the_formula():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 10), torch.randn(6, 10)
    targets = torch.randint(0, 10, (6,))
    same = distillation_loss(teacher, teacher, targets, temperature=3.0, alpha=0.4)
    assert same.item() == pytest.approx(0.6 * F.cross_entropy(teacher, targets).item(), rel=1e-5)
    t = 2.0
    p_teacher = F.softmax(teacher / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, dim=1))).sum(1).mean()
    soft_only = distillation_loss(student, teacher, targets, temperature=t, alpha=1.0)
    assert soft_only.item() == pytest.approx((t * t * kl).item(), rel=1e-5)


def test_report_measures_what_it_says(trained):
    network, data = trained
    inputs, targets = data.split("test")
    variant = measure("fp32", network, inputs, targets, repeats=3)
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    assert variant.size_bytes == len(buffer.getvalue()) == file_size_bytes(network)
    expected = (network(inputs).argmax(1) == targets).float().mean().item()
    assert variant.accuracy == pytest.approx(expected)
    assert variant.parameters == sum(p.numel() for p in network.parameters())
    assert 0 < variant.latency_ms_batch1 < variant.latency_ms_batch64 * 2


@pytest.mark.slow
def test_compress_best_logs_every_variant_under_the_teacher_run(tiny_study):
    from workbench.compress.pipeline import compress_best

    spec, result = tiny_study
    report = compress_best(spec, finetune_epochs=1, distill_epochs=2, repeats=3)
    names = [v.name for v in report.variants]
    assert names[0] == "original (fp32)" and "distilled student" in names and len(names) == 6
    assert report.variants[0].accuracy == pytest.approx(result.test_metrics["test/acc"], abs=1e-6)
    student = report.variants[names.index("distilled student")]
    assert student.parameters * 4 <= report.variants[0].parameters
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_run(result.best_run_id).info.experiment_id
    children = client.search_runs(
        [experiment], filter_string=f"tags.`mlflow.parentRunId` = '{result.best_run_id}'"
    )
    assert sorted(r.data.params["variant"] for r in children) == sorted(names)
    assert {r.info.status for r in children} == {"FINISHED"}
    artifacts = {f.path for f in client.list_artifacts(result.best_run_id, "compression")}
    assert {"compression/report.png", "compression/report.json"} <= artifacts
