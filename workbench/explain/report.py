"""The explanation report: SHAP and LIME attributions of a classifier, plotted and measured.

``explain_model`` takes a module (or network) with its data module and returns an
``ExplanationReport``: the attributions of each method, their plots, and how far they can be
trusted (faithfulness against random orders, run-to-run stability under another seed, SHAP-LIME
agreement, and the randomised-weights sanity check). Starting from a study or an MLflow run is
the door's business (``workbench.trained(...).explain()``), which also logs the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from workbench.explain.core import Explanation, predict_proba, side_by_side
from workbench.explain.images import grid_segments, lime_images
from workbench.explain.methods import SHAP_METHODS, lime_sequence, lime_tabular, shap_values
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
    trust: dict[str, float]
    curves: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def shap(self) -> Explanation | None:
        return self.explanations.get("shap")

    @property
    def lime(self) -> Explanation | None:
        return self.explanations.get("lime")

    def table(self):
        """The trust metrics as a one-column DataFrame (for a notebook)."""
        import pandas as pd

        return pd.Series(self.trust, name="value").to_frame()

    def figures(self) -> dict[str, Figure]:
        figures = {name: e.plot() for name, e in self.explanations.items()}
        if len(self.explanations) > 1:
            figures["shap_vs_lime"] = side_by_side(*self.explanations.values())
        if self.curves:
            per_method = {
                m: {k.split("/", 1)[1]: v for k, v in self.trust.items() if k.startswith(f"{m}/")}
                for m in self.curves
            }
            figures["faithfulness"] = plot_curves(self.curves, per_method)
        if self.kind == "tabular" and self.shap is not None:
            figures.update(shap_summary_plots(self.shap))
        return figures


def shap_summary_plots(explanation: Explanation) -> dict[str, Figure]:
    """SHAP's own beeswarm and bar plots for table rows."""
    import matplotlib.pyplot as plt
    import shap

    values = shap.Explanation(
        values=explanation.attributions,
        data=explanation.display,
        feature_names=explanation.feature_names,
    )
    figures = {}
    for name, draw in (("shap_beeswarm", shap.plots.beeswarm), ("shap_bar", shap.plots.bar)):
        plt.figure()
        draw(values, max_display=12, show=False)
        figure = plt.gcf()
        figure.suptitle(f"{explanation.method}, explained class per row", fontsize=9)
        plt.close(figure)  # detached from pyplot, still drawable and savable
        figures[name] = figure
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
) -> ExplanationReport:
    """Explain the first ``n`` test inputs of a classifier with SHAP and/or LIME.

    ``source``: a LightningModule (its ``.net`` is explained) or a plain network; ``data``: the
    data module it was trained on. SHAP uses a background of ``background`` training inputs.
    Each input is explained for its predicted class, or for ``target_class`` when given (SHAP
    and LIME values are per class: explaining another class answers "what speaks for class k?").
    """
    unknown = set(methods) - {"shap", "lime"}
    if unknown or not methods:
        raise ValueError(f"methods: choose from 'shap' and 'lime'; got {list(methods)}")
    if shap_method not in SHAP_METHODS:
        raise ValueError(f"shap_method: one of {', '.join(SHAP_METHODS)}; got {shap_method!r}")
    network = _network(source)
    if data is None:
        raise ValueError("data: pass the data module the model was trained on")
    if hasattr(data, "model_kwargs") and data.model_kwargs().get("task") == "regression":
        raise ValueError("data: explanations are built for classifiers, not regression targets")

    test_x, test_y = data.split("test")
    train_x, _ = data.split("train")
    kind = _kind(data, test_x)
    inputs, labels = test_x[:n].cpu(), test_y[:n].numpy()
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
    display = data.to_pixels(inputs).numpy()
    if kind == "image":
        display = display[:, 0]
        blank = float(train_x.min())
        baseline = torch.full_like(inputs[:1], blank)
    else:
        baseline = train_x.mean(0, keepdim=True).cpu()
    names = getattr(data, "feature_names", None)
    classes = getattr(data, "class_names", None)

    def wrap(method: str, attributions: np.ndarray, settings: dict) -> Explanation:
        return Explanation(
            method=method, kind=kind, display=display, attributions=attributions,
            targets=targets, probabilities=probabilities, labels=labels,
            feature_names=names, class_names=classes, settings=settings,
        )  # fmt: skip

    label = {"gradient": "GradientExplainer", "deep": "DeepExplainer", "kernel": "Kernel"}

    def attribute(method: str, net: torch.nn.Module, method_seed: int) -> tuple[np.ndarray, dict]:
        """One method's attributions, one value per unit (pixel, feature, time step), and its
        settings."""
        if method == "shap":
            values = shap_values(
                net, inputs, chosen, targets, shap_method, shap_samples, method_seed
            )
            per_unit = to_units(kind, values).reshape(-1, *_unit_shape(kind, inputs))
            return per_unit, {
                "explainer": shap_method, "background": len(chosen), "nsamples": shap_samples,
            }  # fmt: skip
        if kind == "image":
            found = lime_images(net, inputs, num_samples=lime_samples, seed=method_seed)
            return found.attributions, found.settings
        if kind == "tabular":
            units = lime_tabular(
                net, inputs, train_x, targets, names, classes, lime_samples, method_seed
            )
            return units, {"num_samples": lime_samples, "discretizer": "quartile"}
        units = lime_sequence(net, inputs, baseline[0], targets, lime_samples, method_seed)
        return units, {"num_samples": lime_samples, "units": "time steps"}

    explanations, timings = {}, {}
    for method in ("shap", "lime"):
        if method in methods:
            started = time.perf_counter()
            attributions, settings = attribute(method, network, seed)
            timings[method] = time.perf_counter() - started
            title = f"SHAP ({label[shap_method]})" if method == "shap" else "LIME"
            explanations[method] = wrap(title, attributions, settings)

    scores: dict[str, float] = {f"seconds/{k}": v for k, v in timings.items()}
    curves = {}
    if trust:
        for name, explanation in explanations.items():
            units = to_units(kind, explanation.attributions)
            found, curves[name] = faithfulness(
                network, inputs, units, targets, baseline, kind, steps, seed=seed
            )
            scores.update({f"{name}/{k}": v for k, v in found.items()})
            # Run-to-run stability: the same method, the same inputs and background, another
            # seed for its own sampling (SHAP's expected-gradient draws, LIME's perturbations).
            again = attribute(name, network, seed + 1)[0]
            scores[f"{name}/stability"] = rank_agreement(units, to_units(kind, again))
        if len(explanations) == 2:
            scores["agreement/spearman"] = rank_agreement(
                *_comparable(kind, explanations["shap"], explanations["lime"])
            )
        if "shap" in explanations:
            trained_units = to_units(kind, explanations["shap"].attributions)
            random_units = to_units(
                kind, attribute("shap", randomized_copy(network, seed), seed)[0]
            )
            scores["sanity/spearman"] = rank_agreement(trained_units, random_units)
            scores["sanity/spearman_abs"] = rank_agreement(
                np.abs(trained_units), np.abs(random_units)
            )
    report = ExplanationReport(
        kind,
        explanations,
        scores,
        curves,
        {"n": len(inputs), "seed": seed, "steps": steps, "methods": list(methods)},
    )
    return report


def _unit_shape(kind: str, inputs: torch.Tensor) -> tuple[int, ...]:
    return {
        "image": tuple(inputs.shape[2:]),
        "tabular": tuple(inputs.shape[1:]),
        "sequence": (inputs.shape[1],),
    }[kind]


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


def explain_images(
    network: torch.nn.Module,
    data,
    n_images: int = 4,
    background: int = 64,
    shap_samples: int = 200,
    lime_samples: int = 1000,
    seed: int = 0,
):
    """SHAP and LIME for the first ``n_images`` test images (no trust metrics): a quick look."""
    report = explain_model(
        network, data, ("shap", "lime"), n_images, "gradient", background, shap_samples,
        lime_samples, trust=False, seed=seed,
    )  # fmt: skip
    return report.shap, report.lime
