"""Pruning: unstructured magnitude pruning (masks), and structured channel pruning that rebuilds a
physically smaller ConvNet. Both take and return plain networks."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune

from workbench.models.cnn import ConvNet

PRUNABLE = (nn.Conv2d, nn.Linear)


def magnitude_prune(network: nn.Module, sparsity: float) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights across all conv/linear layers.

    The masks stay attached (as forward pre-hooks) so a fine-tune keeps pruned weights at zero;
    ``make_permanent`` folds them in before export.
    """
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    pruned = copy.deepcopy(network)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, PRUNABLE)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    return pruned


def make_permanent(network: nn.Module) -> nn.Module:
    """Fold pruning masks into the weights and drop the hooks (in place)."""
    for module in network.modules():
        if isinstance(module, PRUNABLE) and prune.is_pruned(module):
            prune.remove(module, "weight")
    return network


def weight_sparsity(network: nn.Module) -> float:
    """Fraction of conv/linear weights that are exactly zero."""
    weights = [m.weight for m in network.modules() if isinstance(m, PRUNABLE)]
    return float(sum((w == 0).sum() for w in weights) / sum(w.numel() for w in weights))


def channel_prune(network: ConvNet, fraction: float) -> ConvNet:
    """Remove ``fraction`` of each conv layer's output channels, smallest L1 filter norm first.

    Filters are ranked as in Li et al. (2017); the following batch-norm, the next conv's input
    channels and the first linear layer's input features are sliced to match, so the result is a
    smaller dense network, not a masked one.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    pruned = copy.deepcopy(network)
    layers = list(pruned.features)
    kept: torch.Tensor | None = None
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            weight = layer.weight.data if kept is None else layer.weight.data[:, kept]
            norms = layer.weight.data.abs().sum(dim=(1, 2, 3))
            count = max(1, round(layer.out_channels * (1.0 - fraction)))
            kept_out = norms.topk(count).indices.sort().values
            smaller = nn.Conv2d(
                weight.shape[1], count, layer.kernel_size, layer.stride, layer.padding
            )
            smaller.weight.data = weight[kept_out].clone()
            smaller.bias.data = layer.bias.data[kept_out].clone()
            layers[index], kept = smaller, kept_out
        elif isinstance(layer, nn.BatchNorm2d):
            norm = nn.BatchNorm2d(len(kept))
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, name).data = getattr(layer, name).data[kept].clone()
            layers[index] = norm
    pruned.features = nn.Sequential(*layers)

    first = pruned.head[2]  # Flatten, Dropout, Linear, ...
    last_conv = [m for m in network.features if isinstance(m, nn.Conv2d)][-1]
    per_channel = first.in_features // last_conv.out_channels  # flatten is channel-major
    columns = (kept[:, None] * per_channel + torch.arange(per_channel)).flatten()
    linear = nn.Linear(len(columns), first.out_features)
    linear.weight.data = first.weight.data[:, columns].clone()
    linear.bias.data = first.bias.data.clone()
    pruned.head[2] = linear
    return pruned
