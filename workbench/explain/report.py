"""The explanation report: the attributions of each method in the table, plotted and measured.

``explain_model`` takes a module (or network) with its data module and returns an
``ExplanationReport``: the attributions of each method named in ``EXPLAINERS``, their plots, and
how far they can be trusted (faithfulness against random orders, run-to-run stability under
another seed, SHAP-LIME agreement, and the randomised-weights sanity check). Starting from a study
or an MLflow run is the door's business (``workbench.trained(...).explain()``), which also logs
the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from workbench.contracts import ShowsPixels
from workbench.explain.core import Explanation, predict_proba, shap_summary_plots, side_by_side
from workbench.explain.explainers import EXPLAINERS, Attributions, ExplanationInputs
from workbench.explain.methods import SHAP_METHODS, grid_segments
from workbench.explain.trust import (
    faithfulness,
    plot_curves,
    randomized_copy,
    rank_agreement,
    to_units,
)


@dataclass
class ExplanationReport:
    """Everything one explanation run produced."""

    kind: str
    explanations: dict[str, Explanation]
    """Method name (a key of ``EXPLAINERS``) → its explanation, in the table's order."""
    trust: dict[str, float]
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self):
        """The trust metrics as a one-column DataFrame (for a notebook)."""
        import pandas as pd

        return pd.Series(self.trust, name="value").to_frame()

    def scores_by_method(self) -> dict[str, dict[str, float]]:
        """``trust`` split per method: ``{"shap": {"deletion_auc": ...}, ...}``."""
        return {
            m: {k.split("/", 1)[1]: v for k, v in self.trust.items() if k.startswith(f"{m}/")}
            for m in self.explanations
        }

    def figures(self) -> dict[str, Figure]:
        """Each method's plot, all methods side by side (``shap_vs_lime``), the faithfulness
        curves and, for table rows, SHAP's own summary plots."""
        figures = {name: e.plot() for name, e in self.explanations.items()}
        if len(self.explanations) > 1:
            figures["_vs_".join(self.explanations)] = side_by_side(*self.explanations.values())
        if self.curves:
            figures["faithfulness"] = plot_curves(self.curves, self.scores_by_method())
        if self.kind == "tabular" and "shap" in self.explanations:
            figures.update(shap_summary_plots(self.explanations["shap"]))
        return figures


def _kind(data, inputs: torch.Tensor) -> str:
    if getattr(data, "feature_names", None) is not None:
        return "tabular"
    if inputs.ndim == 4:
        return "image"
    if inputs.ndim == 3:
        return "sequence"
    raise ValueError(f"data: cannot explain inputs shaped {tuple(inputs.shape)}")


def _network(source) -> torch.nn.Module:
    network = getattr(source, "net", source)
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"explain: expected a module or a network; got {type(source)}")
    return network


def explain_model(
    source,
    data=None,
    methods: tuple[str, ...] = ("shap", "lime"),
    n: int = 20,
    shap_method: str = "gradient",
    background: int = 64,
    shap_samples: int = 200,
    lime_samples: int = 1000,
    trust: bool = True,
    steps: int = 20,
    seed: int = 0,
    target_class: int | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    rows: torch.Tensor | None = None,
) -> ExplanationReport:
    """Explain the first ``n`` test inputs of a classifier with the ``methods`` of ``EXPLAINERS``.

    ``source``: a LightningModule (its ``.net`` is explained) or a plain network; ``data``: the
    data module it was trained on. SHAP uses a background of ``background`` training inputs.
    Each input is explained for its predicted class, or for ``target_class`` when given (SHAP
    and LIME values are per class: explaining another class answers "what speaks for class k?").
    ``settings``: per method options over the defaults, e.g. ``{"lime": {"patch": 2}}``.
    ``rows``: model inputs to explain in place of the test inputs (e.g. synthetic rows under a
    data policy: ``workbench.trained(...).explain()``); they have no true labels.
    """
    known = ", ".join(repr(name) for name in EXPLAINERS)
    if set(methods) - set(EXPLAINERS) or not methods:
        raise ValueError(f"methods: choose from {known}; got {list(methods)}")
    if set(settings or {}) - set(EXPLAINERS):
        raise ValueError(f"settings: keys are methods of {known}; got {list(settings)}")
    if shap_method not in SHAP_METHODS:
        raise ValueError(f"shap_method: one of {', '.join(SHAP_METHODS)}; got {shap_method!r}")
    network = _network(source)
    if data is None:
        raise ValueError("data: pass the data module the model was trained on")
    if data.model_kwargs().get("task") == "regression":
        raise ValueError("data: explanations are built for classifiers, not regression targets")
    subject, probabilities, labels, display = _prepare(
        network, data, n, background, seed, target_class, rows
    )
    options = {
        "shap": {"explainer": shap_method, "nsamples": shap_samples},
        "lime": {"num_samples": lime_samples},
    }
    for name, given in (settings or {}).items():
        options[name] = {**options.get(name, {}), **given}
    kind, inputs = subject.kind, subject.inputs
    unit_shape = {
        "image": tuple(inputs.shape[2:]),
        "tabular": tuple(inputs.shape[1:]),
        "sequence": (inputs.shape[1],),
    }[kind]

    def attribute(name: str, net: torch.nn.Module, method_seed: int) -> Attributions:
        """One method's attributions, one value per unit (pixel, feature, time step)."""
        found = Attributions(*EXPLAINERS[name](net, subject, method_seed, options.get(name, {})))
        return found._replace(values=to_units(kind, found.values).reshape(-1, *unit_shape))

    explanations, timings = {}, {}
    for name in (name for name in EXPLAINERS if name in methods):
        started = time.perf_counter()
        found = attribute(name, network, seed)
        timings[name] = time.perf_counter() - started
        explanations[name] = Explanation(
            method=found.title or name, kind=kind, display=display, attributions=found.values,
            targets=subject.targets, probabilities=probabilities, labels=labels,
            feature_names=subject.feature_names, class_names=subject.class_names,
            settings=found.settings,
        )  # fmt: skip

    scores: dict[str, float] = {f"seconds/{k}": v for k, v in timings.items()}
    curves = {}
    if trust:
        found, curves = _trust(network, subject, explanations, attribute, steps, seed)
        scores.update(found)
    used = {"n": len(inputs), "seed": seed, "steps": steps, "methods": list(methods)}
    used["rows"] = "test" if rows is None else "given"
    return ExplanationReport(kind, explanations, scores, curves, used)


def _prepare(
    network, data, n: int, background: int, seed: int, target_class: int | None, given=None
):
    """The inputs to explain (the first ``n`` test inputs, or those ``given``) with what the
    methods draw on, the model's probabilities, the true labels and the inputs as a person reads
    them."""
    test_x, test_y = data.split("test")
    train_x, _ = data.split("train")
    kind = _kind(data, test_x)
    inputs, labels = test_x[:n].cpu(), test_y[:n].numpy()
    if given is not None:
        inputs, labels = given.cpu(), None
    try:
        probabilities = predict_proba(network, inputs)
    except RuntimeError as exc:
        raise ValueError(
            f"data: inputs shaped {tuple(inputs.shape[1:])} do not fit the model: {exc}"
        ) from exc
    targets = probabilities.argmax(1)
    if target_class is not None:
        if not 0 <= target_class < probabilities.shape[1]:
            raise ValueError(
                f"target_class: must be in [0, {probabilities.shape[1]}); got {target_class}"
            )
        targets = np.full_like(targets, target_class)
    generator = torch.Generator().manual_seed(seed)
    chosen = train_x[torch.randperm(len(train_x), generator=generator)[:background]].cpu()
    display = (data.to_pixels(inputs) if isinstance(data, ShowsPixels) else inputs).numpy()
    if kind == "image":
        display = display[:, 0]
        baseline = torch.full_like(inputs[:1], float(train_x.min()))
    else:
        baseline = train_x.mean(0, keepdim=True).cpu()
    subject = ExplanationInputs(
        kind, inputs, targets, chosen, train_x, baseline,
        getattr(data, "feature_names", None), getattr(data, "class_names", None),
    )  # fmt: skip
    return subject, probabilities, labels, display


def _trust(
    network: torch.nn.Module,
    subject: ExplanationInputs,
    explanations: dict[str, Explanation],
    attribute: Callable[[str, torch.nn.Module, int], Attributions],
    steps: int,
    seed: int,
) -> tuple[dict[str, float], dict[str, dict[str, np.ndarray]]]:
    """Faithfulness and stability of every method; SHAP-LIME agreement; SHAP's sanity check."""
    kind, scores, curves = subject.kind, {}, {}
    for name, explanation in explanations.items():
        units = to_units(kind, explanation.attributions)
        found, curves[name] = faithfulness(
            network, subject.inputs, units, subject.targets, subject.baseline, kind, steps,
            seed=seed,
        )  # fmt: skip
        scores.update({f"{name}/{k}": v for k, v in found.items()})
        # Run-to-run stability: the same method, the same inputs and background, another
        # seed for its own sampling (SHAP's expected-gradient draws, LIME's perturbations).
        again = attribute(name, network, seed + 1).values
        scores[f"{name}/stability"] = rank_agreement(units, to_units(kind, again))
    if {"shap", "lime"} <= explanations.keys():
        scores["agreement/spearman"] = rank_agreement(
            *_comparable(kind, explanations["shap"], explanations["lime"])
        )
    if "shap" in explanations:
        trained_units = to_units(kind, explanations["shap"].attributions)
        randomized = attribute("shap", randomized_copy(network, seed), seed).values
        random_units = to_units(kind, randomized)
        scores["sanity/spearman"] = rank_agreement(trained_units, random_units)
        scores["sanity/spearman_abs"] = rank_agreement(np.abs(trained_units), np.abs(random_units))
    return scores, curves


def _comparable(kind: str, shap_exp: Explanation, lime_exp: Explanation):
    """Both methods on LIME's units: for images, SHAP summed over each LIME patch."""
    if kind != "image":
        return to_units(kind, shap_exp.attributions), to_units(kind, lime_exp.attributions)
    height, width = shap_exp.attributions.shape[1:]
    segments = grid_segments(height, width, lime_exp.settings.get("patch", 4)).ravel()
    count = segments.max() + 1
    flat_shap = shap_exp.attributions.reshape(len(shap_exp.attributions), -1)
    flat_lime = lime_exp.attributions.reshape(len(lime_exp.attributions), -1)
    per_patch = np.stack([np.bincount(segments, row, count) for row in flat_shap])
    lime_patch = np.stack([np.bincount(segments, row, count) for row in flat_lime])
    return per_patch, lime_patch
