"""Export a plain network to TorchScript and ONNX, and check the ONNX file with onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def export_torchscript(network: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace ``network`` on ``example`` and save it; the trace must reproduce the outputs."""
    network = network.eval().cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is in maintenance mode; it still runs
        traced = torch.jit.trace(network, example)
    if not torch.allclose(traced(example), network(example), atol=1e-5):
        raise RuntimeError("the traced TorchScript module does not reproduce the network")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    traced.save(str(path))
    return path


def export_onnx(network: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Export to ONNX with a dynamic batch dimension (input ``images``, output ``logits``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            network.eval().cpu(),
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


@torch.no_grad()
def onnx_max_abs_difference(path: str | Path, network: nn.Module, inputs: torch.Tensor) -> float:
    """Run the ONNX file with onnxruntime; the largest difference from PyTorch's outputs."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": inputs.numpy().astype(np.float32)})[0]
    torch_out = network.eval().cpu()(inputs).numpy()
    return float(np.abs(onnx_out - torch_out).max())
