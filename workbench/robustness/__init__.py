"""Robust and private models: adversarial evaluation (``attacks``) and training
(``adversarial``), differentially private training (``privacy``). They plug into training as
Lightning callbacks chosen from the spec, and know nothing of Optuna or MLflow."""

from __future__ import annotations

from typing import Any


def training_callbacks(spec: Any, data: Any) -> list:
    """The callbacks the spec's ``robustness`` and ``privacy`` sections add to a training run."""
    callbacks: list = []
    if spec.robustness.train != "none":
        from workbench.robustness.adversarial import AdversarialTraining

        callbacks.append(AdversarialTraining(spec.robustness, data))
    if spec.privacy.enabled:
        from workbench.robustness.privacy import DifferentialPrivacy

        callbacks.append(DifferentialPrivacy(spec.privacy, data))
    return callbacks
