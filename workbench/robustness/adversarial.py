"""Adversarial training as a Lightning callback: before each training step, a share ``mix`` of
the batch is replaced by its adversarial version (PGD, Madry et al. 2018; or FGSM with a random
start, Wong et al. 2020), crafted in the natural scale against the model as it is now, in eval
mode (batch-norm statistics and dropout untouched by the attack)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from workbench.robustness.attacks import make_attack, natural_scale


class AdversarialTraining(pl.Callback):
    def __init__(self, spec, data) -> None:
        self.method, self.eps, self.mix, self.steps = (
            spec.train,
            spec.epsilon,
            spec.mix,
            spec.train_steps,
        )
        self.data = data
        self._scaled = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        inputs, labels = batch[0], batch[1]
        k = int(round(self.mix * len(inputs)))
        if k == 0:
            return
        if self._scaled is None or self._scaled.net is not pl_module.net:
            self._scaled = natural_scale(pl_module.net, self.data).to(inputs.device)
        model = self._scaled
        modes = {module: module.training for module in model.modules()}  # frozen blocks stay eval
        attack = make_attack(
            "pgd" if self.method == "pgd" else "fgsm_rs", model, self.eps, self.steps
        )
        with torch.enable_grad():
            adversarial = attack(model.to_natural(inputs[:k]).detach(), labels[:k])
        for module, training in modes.items():
            module.train(training)
        with torch.no_grad():
            inputs[:k] = model.to_inputs(adversarial).to(inputs.dtype)
