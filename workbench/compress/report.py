"""Measure compressed variants side by side: test accuracy, parameters, file size, CPU latency.

``measure`` returns plain numbers; ``CompressionReport.plot`` draws accuracy against latency and
against size on the axes a notebook passes (or a new figure).
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from matplotlib.figure import Figure
from torch import nn


@dataclass
class VariantMetrics:
    """One compressed (or original) network, measured."""

    name: str
    accuracy: float
    parameters: int
    nonzero_parameters: int
    size_bytes: int
    latency_ms_batch1: float
    latency_ms_batch64: float

    def as_metrics(self) -> dict[str, float]:
        """MLflow metric keys, ``stage/metric`` style."""
        return {
            "test/acc": self.accuracy,
            "params/count": self.parameters,
            "params/nonzero": self.nonzero_parameters,
            "size/bytes": self.size_bytes,
            "latency/batch1_ms": self.latency_ms_batch1,
            "latency/batch64_ms": self.latency_ms_batch64,
        }


@torch.no_grad()
def accuracy(network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    network.eval()
    predictions = torch.cat(
        [network(inputs[i : i + 256]).argmax(1) for i in range(0, len(inputs), 256)]
    )
    return float((predictions == targets).float().mean())


def file_size_bytes(network: nn.Module) -> int:
    """Bytes of the network's saved state dict (what a deployment ships)."""
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    return len(buffer.getvalue())


@torch.no_grad()
def latency_ms(
    network: nn.Module, example: torch.Tensor, repeats: int = 30, warmup: int = 5
) -> float:
    """Median wall time of one forward pass on the CPU, in milliseconds."""
    network.eval()
    for _ in range(warmup):
        network(example)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        network(example)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def count_parameters(network: nn.Module) -> tuple[int, int]:
    """(all, non-zero) parameters; quantized layers count their packed int8 weights."""
    total = nonzero = 0
    tensors = list(network.parameters())
    for module in network.modules():
        weight = getattr(module, "weight", None)
        if callable(weight):  # quantized modules expose weight() returning a qtensor
            tensors.append(weight().dequantize())
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            if bias is not None:
                tensors.append(bias)
    for tensor in tensors:
        total += tensor.numel()
        nonzero += int((tensor != 0).sum())
    return total, nonzero


def measure(
    name: str, network: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, repeats: int = 30
) -> VariantMetrics:
    """Accuracy on (inputs, targets), size, and median CPU latency at batch 1 and 64."""
    network = network.cpu().eval()
    total, nonzero = count_parameters(network)
    return VariantMetrics(
        name=name,
        accuracy=accuracy(network, inputs, targets),
        parameters=total,
        nonzero_parameters=nonzero,
        size_bytes=file_size_bytes(network),
        latency_ms_batch1=latency_ms(network, inputs[:1], repeats),
        latency_ms_batch64=latency_ms(network, inputs[:64], repeats),
    )


@dataclass
class CompressionReport:
    """All variants of one teacher, the first being the original."""

    variants: list[VariantMetrics]

    def rows(self) -> list[dict]:
        base = self.variants[0]
        return [
            {
                **asdict(v),
                "accuracy_change_points": 100 * (v.accuracy - base.accuracy),
                "size_ratio": base.size_bytes / v.size_bytes,
                "speedup_batch64": base.latency_ms_batch64 / v.latency_ms_batch64,
            }
            for v in self.variants
        ]

    def plot(self, axes=None) -> Figure:
        """Accuracy against batch-64 latency and against file size, one point per variant."""
        if axes is None:
            figure = Figure(figsize=(11, 4.2))
            axes = figure.subplots(1, 2)
            figure.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.9, wspace=0.25)
        figure = axes[0].figure
        for ax, key, label in (
            (axes[0], "latency_ms_batch64", "CPU latency, batch of 64 (ms)"),
            (axes[1], "size_bytes", "file size (KiB)"),
        ):
            for v in self.variants:
                x = getattr(v, key) / (1024 if key == "size_bytes" else 1)
                ax.scatter(x, 100 * v.accuracy, s=40)
                ax.annotate(
                    v.name,
                    (x, 100 * v.accuracy),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
            ax.set_xlabel(label)
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
        axes[0].set_title("accuracy vs latency")
        axes[1].set_title("accuracy vs size")
        return figure
