"""The fast path: batches on the device, device-aware precision, cheap imports, same results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from tests.conftest import EXPERIMENTS
from workbench.data.device import DeviceBatches
from workbench.registry import create_data, create_model
from workbench.spec import SpecError, TrainerSpec, load_spec
from workbench.train import device_defaults, fit


def test_device_batches_cover_every_sample_once_and_reshuffle_each_epoch():
    inputs = torch.arange(10).float().unsqueeze(1)
    targets = torch.arange(10)
    batches = DeviceBatches(inputs, targets, batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    epoch = list(batches)
    first = [y for _, y in epoch]
    second = [y for _, y in batches]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert torch.cat(first).tolist() != torch.cat(second).tolist()  # a new order per epoch
    for x, y in epoch:
        assert torch.equal(x[:, 0].long(), y)  # inputs stay paired with their targets
    again = DeviceBatches(inputs, targets, batch_size=4, shuffle=True, seed=0)
    assert torch.cat([b[1] for b in again]).tolist() == torch.cat(first).tolist()
    ordered = DeviceBatches(inputs, targets, batch_size=4)
    assert torch.cat([b[1] for b in ordered]).tolist() == list(range(10))


def test_auto_precision_on_cpu_is_full_float32():
    assert device_defaults(TrainerSpec(accelerator="cpu")) == ("32-true", "highest")
    assert (
        device_defaults(TrainerSpec(accelerator="cpu", precision="bf16-mixed"))[0] == "bf16-mixed"
    )


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("trainer.compile=fast", "trainer.compile"),
        ("trainer.precision=8", "trainer.precision"),
        ("trainer.matmul_precision=low", "trainer.matmul_precision"),
    ],
)
def test_bad_speed_switches_are_named(override: str, field: str):
    with pytest.raises(SpecError, match=field):
        load_spec(EXPERIMENTS / "mnist_cnn.yaml", [override])


def _train(on_device: bool, tmp_path: Path) -> float:
    pl.seed_everything(0, verbose=False)
    data = create_data("digits", seed=0, batch_size=32, on_device=on_device)
    model = create_model("cnn", **data.model_kwargs(), width=16)
    spec = TrainerSpec(max_epochs=4, patience=4, accelerator="cpu")
    return fit(model, data, spec, tmp_path / str(on_device)).test_metrics["test/acc"]


def test_fast_path_learns_as_well_as_the_plain_dataloader(tmp_path: Path):
    fast, plain = _train(True, tmp_path), _train(False, tmp_path)
    # 180 test digits after 4 epochs: both learn (chance is 0.1) and agree within noise.
    assert fast > 0.85 and plain > 0.85
    assert abs(fast - plain) <= 0.05


def test_import_workbench_loads_no_heavy_library():
    probe = (
        "import sys, workbench; "
        "print(sorted(m for m in ('torch', 'lightning', 'mlflow', 'optuna', 'shap', 'lime') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_keeps_batches_on_the_device(tmp_path: Path):
    data = create_data("digits", seed=0, batch_size=64)
    model = create_model("cnn", **data.model_kwargs(), width=16)
    seen = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0].device.type)

    spec = TrainerSpec(max_epochs=1, accelerator="gpu")
    result = fit(model, data, spec, tmp_path, callbacks=[Probe()])
    assert set(seen) == {"cuda"} and result.test_metrics["test/acc"] > 0.3
    assert device_defaults(spec)[1] == "high"


class _ThreadsSeen(pl.Callback):
    """Records the intra-op thread count during training and test steps."""

    def __init__(self) -> None:
        self.train: list[int] = []
        self.test: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(torch.get_num_threads())

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        self.test.append(torch.get_num_threads())


@pytest.mark.parametrize(("model", "small"), [("mlp", True), ("cnn", False)])
def test_a_run_of_small_tensors_uses_one_thread_and_restores_the_count(
    tmp_path: Path, model: str, small: bool
):
    """An MLP on breast-cancer rows (every tensor below ATen's grain size) trains and tests on
    one thread after its first step; a CNN's activations are large enough to keep them. The
    process's count is back afterwards, also when the run ended with an error."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data = create_data("breast_cancer" if model == "mlp" else "digits", seed=0, batch_size=32)
        module = create_model(model, **data.model_kwargs())
        seen = _ThreadsSeen()
        spec = TrainerSpec(max_epochs=2, patience=2, accelerator="cpu")
        fit(module, data, spec, tmp_path / "ok", callbacks=[seen])
        assert seen.train[0] == 2  # the first step is measured with the process's count
        assert set(seen.train[1:]) == {1 if small else 2}
        assert set(seen.test) == {1 if small else 2}
        assert torch.get_num_threads() == 2

        def fail(epoch, metrics):
            raise RuntimeError("stopped")

        with pytest.raises(RuntimeError, match="stopped"):
            fit(module, data, spec, tmp_path / "failed", on_epoch=fail)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
