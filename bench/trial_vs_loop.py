"""Benchmark 1: a workbench trial against a hand-written PyTorch loop.

Same network (ConvNet), optimiser (AdamW + cosine), data (MNIST subset, on the device), batch size,
epochs and seed; both validate every epoch. Prints per-epoch wall time (median over the epochs after
the first) and the ratio workbench / hand-written, measured in one run. Also times the plain
Lightning path (a DataLoader over a TensorDataset) for reference.

    python bench/trial_vs_loop.py [--epochs 6] [--batch-size 64] [--device auto] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from workbench.models.cnn import ConvNet
from workbench.registry import create_data, create_model
from workbench.spec import TrainerSpec
from workbench.train import fit


class EpochTimer(Callback):
    """Wall time of each epoch, training and validation together."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # after the epoch's validation
        _sync(pl_module.device)
        self.seconds.append(time.perf_counter() - self.started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_written(
    data, epochs: int, batch_size: int, seed: int, device: torch.device, compile_mode=None
):
    """The loop a researcher would write: data on the device, one host sync per epoch."""
    pl.seed_everything(seed, verbose=False)
    net = ConvNet(data.input_shape, 10, width=32, depth=2, hidden=128, dropout=0.25).to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    x_train, y_train = (t.to(device) for t in data.split("train"))
    x_val, y_val = (t.to(device) for t in data.split("val"))
    step = torch.compile(net, mode=compile_mode) if compile_mode else net
    generator = torch.Generator().manual_seed(seed)
    seconds, accuracy = [], 0.0
    for _ in range(epochs):
        _sync(device)
        started = time.perf_counter()
        net.train()
        order = torch.randperm(len(y_train), generator=generator).to(device)
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            loss = F.cross_entropy(step(x_train[index]), y_train[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        schedule.step()
        net.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            for i in range(0, len(y_val), batch_size):
                correct += (
                    step(x_val[i : i + batch_size]).argmax(1) == y_val[i : i + batch_size]
                ).sum()
        accuracy = correct.item() / len(y_val)  # the one host sync per epoch
        seconds.append(time.perf_counter() - started)
    return seconds, accuracy


def workbench_trial(data, epochs: int, seed: int, accelerator: str):
    pl.seed_everything(seed, verbose=False)
    model = create_model("cnn", **data.model_kwargs(), width=32, depth=2, hidden=128, dropout=0.25)
    timer = EpochTimer()
    spec = TrainerSpec(max_epochs=epochs, patience=epochs, accelerator=accelerator)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, data, spec, tmp, callbacks=[timer], test=False)
    return timer.seconds, result.history[-1]["val/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else (args.device if args.device != "auto" else "cpu")
    )
    accelerator = "gpu" if device.type == "cuda" else "cpu"

    fast = create_data("mnist_subset", seed=args.seed, batch_size=args.batch_size, on_device=True)
    plain = create_data("mnist_subset", seed=args.seed, batch_size=args.batch_size, on_device=False)
    paths = {
        "hand-written loop": lambda: hand_written(
            fast, args.epochs, args.batch_size, args.seed, device
        ),
        "workbench trial (data on device)": lambda: workbench_trial(
            fast, args.epochs, args.seed, accelerator
        ),
        "workbench, plain DataLoader": lambda: workbench_trial(
            plain, args.epochs, args.seed, accelerator
        ),
    }
    # Interleave repeats so drift in machine speed hits every path alike; keep each path's best.
    medians: dict[str, list[float]] = {name: [] for name in paths}
    accuracy: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, run in paths.items():
            seconds, accuracy[name] = run()
            medians[name].append(statistics.median(seconds[1:]))
    rows = [(name, min(medians[name]), accuracy[name]) for name in paths]

    baseline = rows[0][1]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device: {device} ({name}), "
        f"torch threads: {torch.get_num_threads()}, epochs: {args.epochs}, batch: {args.batch_size}"
    )
    print(f"{'path':36s} {'epoch s (median)':>17s} {'ratio':>7s} {'final val/acc':>14s}")
    for name, median, acc in rows:
        print(f"{name:36s} {median:17.3f} {median / baseline:7.2f} {acc:14.4f}")
    print(f"(median epoch time after the first epoch, best of {args.repeats} interleaved repeats)")


if __name__ == "__main__":
    main()
