"""The table of explainers: a method's name → one function with one signature.

A new method is one function and one entry in ``EXPLAINERS``; ``explain_model`` runs, measures
and plots every method named in the table with no other edit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from workbench.explain.methods import lime_image_patches, lime_sequence, lime_tabular, shap_values


@dataclass(frozen=True)
class ExplanationInputs:
    """What is explained, and what any method may draw on beside the network."""

    kind: str
    """``image``, ``tabular`` or ``sequence``."""
    inputs: torch.Tensor
    """(N, *S) model inputs, normalised as in training."""
    targets: np.ndarray
    """(N,) the class each input is explained for."""
    background: torch.Tensor
    """(B, *S) training inputs drawn with the seed: SHAP's reference distribution."""
    train_inputs: torch.Tensor
    """The whole training split (LIME's feature statistics for table rows)."""
    baseline: torch.Tensor
    """(1, *S) the value of a hidden unit: a blank pixel, or the training mean."""
    feature_names: list[str] | None = None
    class_names: list[str] | None = None


class Attributions(NamedTuple):
    """What an explainer returns; a plain ``(values, settings)`` pair is one too."""

    values: np.ndarray
    """Shaped like the inputs (channels and features of a step are summed) or one per unit."""
    settings: dict[str, Any]
    """What the method used, kept beside its attributions."""
    title: str = ""
    """How plots name the method; the table name when empty."""


Explainer = Callable[[torch.nn.Module, ExplanationInputs, int, Mapping[str, Any]], tuple]
"""``explainer(network, inputs, seed, settings) -> Attributions`` or ``(values, settings)``: the
seed drives the method's own sampling; ``settings`` are its options, from
``explain_model(settings={name: {...}})``."""


def _options(method: str, given: Mapping[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``given`` over ``defaults``; a name the method does not know is an error, not ignored."""
    unknown = set(given) - set(defaults)
    if unknown:
        raise ValueError(
            f"settings.{method}: unknown {sorted(unknown)}; known: {', '.join(defaults)}"
        )
    return {**defaults, **given}


_SHAP_TITLES = {"gradient": "GradientExplainer", "deep": "DeepExplainer", "kernel": "Kernel"}


def shap_attributions(
    network: torch.nn.Module, inputs: ExplanationInputs, seed: int, settings: Mapping[str, Any]
) -> Attributions:
    """SHAP values of every kind of input against the background (``methods.shap_values``)."""
    options = _options("shap", settings, {"explainer": "gradient", "nsamples": 200})
    explainer, nsamples = options["explainer"], options["nsamples"]
    values = shap_values(  # checks the explainer's name
        network, inputs.inputs, inputs.background, inputs.targets, explainer, nsamples, seed
    )
    used = {"explainer": explainer, "background": len(inputs.background), "nsamples": nsamples}
    return Attributions(values, used, f"SHAP ({_SHAP_TITLES[explainer]})")


def lime_attributions(
    network: torch.nn.Module, inputs: ExplanationInputs, seed: int, settings: Mapping[str, Any]
) -> Attributions:
    """LIME over the units a person reads: square patches of an image, quartiles of each
    feature of a table row, time steps of a sequence."""
    x, targets = inputs.inputs, inputs.targets
    if inputs.kind == "image":
        options = _options("lime", settings, {"num_samples": 1000, "patch": 4})
        samples, patch = options["num_samples"], options["patch"]
        values = lime_image_patches(network, x, targets, samples, patch, seed)
        return Attributions(values, {"num_samples": samples, "patch": patch, "seed": seed}, "LIME")
    samples = _options("lime", settings, {"num_samples": 1000})["num_samples"]
    if inputs.kind == "tabular":
        values = lime_tabular(
            network, x, inputs.train_inputs, targets, inputs.feature_names,
            inputs.class_names, samples, seed,
        )  # fmt: skip
        return Attributions(values, {"num_samples": samples, "discretizer": "quartile"}, "LIME")
    values = lime_sequence(network, x, inputs.baseline[0], targets, samples, seed)
    return Attributions(values, {"num_samples": samples, "units": "time steps"}, "LIME")


EXPLAINERS: dict[str, Explainer] = {"shap": shap_attributions, "lime": lime_attributions}
"""Every method ``explain_model`` can run, in the order it runs and plots them."""
