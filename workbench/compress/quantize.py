"""int8 quantization on the CPU: dynamic (weights int8, activations quantized on the fly) for
linear and recurrent layers, and post-training static quantization calibrated on training data.

Uses ``torch.ao.quantization``, which torch 2.13 still ships (with a note pointing to torchao);
torchao is not needed on the pinned stack.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_dynamic_int8(network: nn.Module) -> nn.Module:
    """int8 weights for every Linear/LSTM/GRU; activations are quantized per batch at run time."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(network).eval(), {nn.Linear, nn.LSTM, nn.GRU}, dtype=torch.qint8
        )


@torch.no_grad()
def quantize_static_int8(
    network: nn.Module, calibration: torch.Tensor, batch_size: int = 256
) -> nn.Module:
    """Post-training static int8 (FX graph mode, x86 backend): observers see ``calibration``
    batches (from the training split) to fix activation scales, then layers are converted."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    example = (calibration[:2],)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(
            copy.deepcopy(network).eval(), get_default_qconfig_mapping("x86"), example
        )
        for start in range(0, len(calibration), batch_size):
            prepared(calibration[start : start + batch_size])
        return convert_fx(prepared)
