"""Fine-tuning a pretrained backbone: which of its blocks stay frozen, the backbone's learning
rate as a factor of the head's, and gradual unfreezing (Howard & Ruder, 2018).

A backbone is an ordered list of blocks, from the input up. ``freeze`` names how many are frozen
from the bottom: ``all``, ``none`` or ``first_N``. Frozen blocks keep ``requires_grad=False`` and
stay in eval mode, so their batch-norm statistics do not drift either. With ``unfreeze_every: E``
one more frozen block, from the top down, becomes trainable every E epochs. Every parameter is in
the optimiser from the start (a frozen one has no gradient, so AdamW leaves it alone): unfreezing
needs no new optimiser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.spec.types import FREEZE_RULE

FREEZE_TEXT = "all, none or first_N (N >= 1 blocks from the input up)"


def check_freeze(policy: str, where: str = "backbone.freeze") -> None:
    """Refuse a freezing policy outside ``FREEZE_RULE``, naming the field."""
    if not isinstance(policy, str) or FREEZE_RULE.fullmatch(policy) is None:
        raise ValueError(f"{where}: must be {FREEZE_TEXT}; got {policy!r}")


def frozen_count(policy: str, blocks: int, where: str = "backbone.freeze") -> int:
    """How many of ``blocks`` blocks ``policy`` freezes (``first_N`` may not exceed them)."""
    check_freeze(policy, where)
    if policy == "all":
        return blocks
    if policy == "none":
        return 0
    count = int(policy.removeprefix("first_"))
    if count > blocks:
        raise ValueError(f"{where}: {policy} but the backbone has {blocks} blocks")
    return count


def set_frozen(blocks: Sequence[nn.Module], count: int) -> None:
    """Freeze the first ``count`` blocks (no gradients, eval mode); make the rest trainable."""
    for index, block in enumerate(blocks):
        frozen = index < count
        for parameter in block.parameters():
            parameter.requires_grad_(not frozen)
        if frozen:
            block.eval()


def param_groups(
    backbone: Sequence[nn.Module], head: nn.Module, lr: float, lr_factor: float
) -> list[dict]:
    """Optimiser groups: the backbone at ``lr * lr_factor``, the head at ``lr``."""
    backbone_params = [p for block in backbone for p in block.parameters()]
    groups = [{"params": list(head.parameters()), "lr": lr, "name": "head"}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": lr * lr_factor, "name": "backbone"})
    return groups


class Unfreezing:
    """The frozen-block count over epochs: ``initial`` at first, one fewer every ``every`` epochs
    (0: never). ``blocks`` is what ``frozen_at(epoch)`` applies to."""

    def __init__(self, blocks: Sequence[nn.Module], initial: int, every: int = 0) -> None:
        if every < 0:
            raise ValueError(f"backbone.unfreeze_every: must be >= 0; got {every}")
        self.blocks, self.initial, self.every = list(blocks), initial, every

    def frozen_at(self, epoch: int) -> int:
        if self.every == 0:
            return self.initial
        return max(0, self.initial - epoch // self.every)

    def apply(self, epoch: int) -> int:
        """Set the blocks for ``epoch`` (call at each training epoch's start); the count frozen."""
        count = self.frozen_at(epoch)
        set_frozen(self.blocks, count)
        return count


def trainable_fraction(module: nn.Module) -> float:
    """The share of ``module``'s parameters that receive gradients."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable / total if total else 0.0


def feature_size(blocks: Sequence[nn.Module], example: torch.Tensor) -> int:
    """The width of the backbone's output for one example (blocks end in a flat vector)."""
    modes = [block.training for block in blocks]
    with torch.no_grad():
        out = example[:1]
        for block in blocks:
            out = block.eval()(out)
    for block, mode in zip(blocks, modes, strict=True):
        block.train(mode)
    return int(out.flatten(1).shape[1])
