"""The explanation type every method returns, and its plots.

An explanation holds one attribution per *unit* of the input, the thing a person reads: a pixel of
an image, a feature of a table row, a time step of a sequence. Every plot draws on the axes it is
given (scikit-learn's Display style) or on a new figure, and returns the figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

KINDS = ("image", "tabular", "sequence")


@dataclass
class Explanation:
    """Attributions for the class each input is explained for (by default the prediction)."""

    method: str
    kind: str
    """``image`` (units: pixels), ``tabular`` (features) or ``sequence`` (time steps)."""
    display: np.ndarray
    """Inputs as a person reads them: [0, 1] pixels (N, H, W), feature values in their own units
    (N, F), or sequences (N, T, F)."""
    attributions: np.ndarray
    """(N, H, W), (N, F) or (N, T): contribution of each unit to the explained class."""
    targets: np.ndarray
    """(N,) explained class."""
    probabilities: np.ndarray
    """(N, C) the model's class probabilities."""
    labels: np.ndarray | None = None
    feature_names: list[str] | None = None
    class_names: list[str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def short_method(self) -> str:
        return self.method.split(" ")[0]

    def plot(self, axes=None) -> Figure:
        """Image overlays (2 × N axes), or a per-feature bar chart or a per-time-step heat map
        (2 axes each)."""
        draw = {"image": _plot_images, "tabular": _plot_features, "sequence": _plot_steps}
        return draw[self.kind](self, axes)


def figure_axes(axes, shape: tuple[int, int], figsize: tuple[float, float]):
    """``axes`` arranged as ``shape`` with their figure, or a new figure's axes when ``None``.

    The new figure is not attached to pyplot: a notebook shows it, ``savefig`` writes it.
    """
    if axes is None:
        figure = Figure(figsize=figsize, layout="constrained")
        return figure, figure.subplots(*shape, squeeze=False)
    grid = np.asarray(axes, dtype=object)
    if grid.size != shape[0] * shape[1]:
        raise ValueError(f"axes: this plot draws on {shape[0]}×{shape[1]} axes; got {grid.size}")
    grid = grid.reshape(shape)
    return grid.flat[0].figure, grid


def _plot_images(explanation: Explanation, axes=None) -> Figure:
    """Input and attribution overlay (diverging: red for, blue against the class) per image."""
    n = len(explanation.display)
    figure, axes = figure_axes(axes, (2, n), (2.2 * n, 4.6))
    for i in range(n):
        truth = f" (true {explanation.labels[i]})" if explanation.labels is not None else ""
        target = explanation.targets[i]
        axes[0, i].imshow(explanation.display[i], cmap="gray")
        axes[0, i].set_title(
            f"pred {target} p={explanation.probabilities[i, target]:.2f}{truth}", fontsize=8
        )
        limit = float(np.abs(explanation.attributions[i]).max()) or 1.0
        axes[1, i].imshow(explanation.display[i], cmap="gray", alpha=0.35)
        image = axes[1, i].imshow(
            explanation.attributions[i], cmap="bwr", vmin=-limit, vmax=limit, alpha=0.8
        )
        axes[1, i].set_title(explanation.short_method, fontsize=8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.colorbar(image, ax=list(axes[1]), shrink=0.8, label="attribution")
    return figure


def _plot_features(explanation: Explanation, axes=None) -> Figure:
    """Mean |attribution| per feature (top 15), and the first row's signed attributions."""
    names = explanation.feature_names or [f"x{i}" for i in range(explanation.attributions.shape[1])]
    importance = np.abs(explanation.attributions).mean(0)
    order = np.argsort(importance)[::-1][:15][::-1]
    figure, axes = figure_axes(axes, (1, 2), (11, 0.3 * len(order) + 1.5))
    left, right = axes[0]
    left.barh([names[i] for i in order], importance[order], color="tab:gray")
    left.set_title(f"{explanation.method}: mean |attribution|", fontsize=9)
    first = explanation.attributions[0]
    right.barh(
        [names[i] for i in order],
        first[order],
        color=["tab:red" if v > 0 else "tab:blue" for v in first[order]],
    )
    target = explanation.targets[0]
    label = explanation.class_names[target] if explanation.class_names else target
    right.set_title(f"row 0, explained class {label}: red for, blue against", fontsize=9)
    for ax in (left, right):
        ax.tick_params(labelsize=7)
    return figure


def _plot_steps(explanation: Explanation, axes=None) -> Figure:
    """A heat map: one row per sequence, one column per time step, next to the inputs."""
    n = len(explanation.attributions)
    figure, axes = figure_axes(axes, (1, 2), (10, 0.45 * n + 1.6))
    left, right = axes[0]
    sequences = explanation.display  # (N, T, F)
    left.imshow(np.abs(sequences).mean(-1), aspect="auto", cmap="gray_r")
    left.set_title("inputs: mean |value| per time step", fontsize=9)
    limit = float(np.abs(explanation.attributions).max()) or 1.0
    image = right.imshow(
        explanation.attributions, aspect="auto", cmap="bwr", vmin=-limit, vmax=limit
    )
    right.set_title(f"{explanation.method}: attribution per time step", fontsize=9)
    names = [f"pred {t}" for t in explanation.targets]
    if explanation.labels is not None:
        names = [f"{name} / true {y}" for name, y in zip(names, explanation.labels, strict=True)]
    for ax in (left, right):
        ax.set_xlabel("time step")
        ax.set_yticks(range(n))
        ax.set_yticklabels(names, fontsize=6)
    figure.colorbar(image, ax=right, shrink=0.8, label="attribution")
    return figure


def side_by_side(*explanations: Explanation, axes=None) -> Figure:
    """The same inputs explained by several methods: for images a row of inputs and one row per
    method ((M + 1) × N axes), otherwise one panel per method (M axes)."""
    if explanations[0].kind != "image":
        count = len(explanations)
        figure, grid = figure_axes(axes, (1, count), (5 * count, 4))
        for ax, explanation in zip(grid[0], explanations, strict=True):
            values = explanation.attributions
            if explanation.kind == "tabular":
                names = explanation.feature_names or [f"x{i}" for i in range(values.shape[1])]
                importance = np.abs(values).mean(0)
                order = np.argsort(importance)[::-1][:12][::-1]
                ax.barh([names[i] for i in order], importance[order])
                ax.tick_params(labelsize=7)
            else:
                limit = float(np.abs(values).max()) or 1.0
                ax.imshow(values, aspect="auto", cmap="bwr", vmin=-limit, vmax=limit)
                ax.set_xlabel("time step")
            ax.set_title(explanation.method, fontsize=9)
        return figure
    n, rows = len(explanations[0].display), len(explanations) + 1
    figure, grid = figure_axes(axes, (rows, n), (2.2 * n, 2.2 * rows))
    first = explanations[0]
    for i in range(n):
        grid[0, i].imshow(first.display[i], cmap="gray")
        grid[0, i].set_title(f"pred {first.targets[i]}", fontsize=8)
        for row, explanation in enumerate(explanations, start=1):
            limit = float(np.abs(explanation.attributions[i]).max()) or 1.0
            grid[row, i].imshow(explanation.attributions[i], cmap="bwr", vmin=-limit, vmax=limit)
            grid[row, i].set_title(explanation.short_method, fontsize=8)
        for ax in grid[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    return figure


def shap_summary_plots(explanation: Explanation, axes=None) -> dict[str, Figure]:
    """SHAP's own beeswarm and bar plots for table rows, on two given axes or two new figures."""
    import shap

    values = shap.Explanation(
        values=explanation.attributions,
        data=explanation.display,
        feature_names=explanation.feature_names,
    )
    shown = min(12, explanation.attributions.shape[1])
    if axes is None:  # the sizes SHAP gives the figures it makes itself
        beeswarm_ax = Figure(figsize=(8, 0.4 * shown + 1.5)).add_subplot()
        bar_ax = Figure(figsize=(8, 0.5 * shown + 1.5)).add_subplot()
    else:
        beeswarm_ax, bar_ax = np.asarray(axes, dtype=object).ravel()
    shap.plots.beeswarm(values, max_display=12, ax=beeswarm_ax, show=False, plot_size=None)
    shap.plots.bar(values, max_display=12, ax=bar_ax, show=False)
    title = f"{explanation.method}, explained class per row"
    for ax in (beeswarm_ax, bar_ax):
        ax.set_title(title, fontsize=9)
    return {"shap_beeswarm": beeswarm_ax.figure, "shap_bar": bar_ax.figure}


@torch.no_grad()
def predict_proba(
    network: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 512
) -> np.ndarray:
    """Softmax probabilities in batches (LIME sends thousands of perturbed inputs at once)."""
    network.eval()
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    chunks = [
        torch.softmax(network(inputs[i : i + batch_size].to(device)), dim=1).cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(chunks).numpy()
