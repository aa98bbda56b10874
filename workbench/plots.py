"""Figures for runs and studies: learning curves, confusion matrices, optimisation history.

Each function draws on ``ax`` when given (a notebook chooses the layout) and otherwise on a new
``matplotlib.figure.Figure``; nothing touches pyplot's global state or calls ``show()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def _axes(ax: Axes | None, ncols: int = 1, size: tuple[float, float] = (5, 4)):
    if ax is not None:
        return ax.figure, ax
    # A fixed layout: matplotlib's layout engines double the cost of drawing a run's plots.
    figure = Figure(figsize=(size[0] * ncols, size[1]))
    axes = figure.subplots(1, ncols)
    figure.subplots_adjust(left=0.08 / ncols + 0.04, right=0.97, bottom=0.15, top=0.88, wspace=0.3)
    return figure, axes


def learning_curves(
    history: Sequence[dict[str, float]], axes: Sequence[Axes] | None = None
) -> Figure:
    """Loss and every other metric logged for both train and val, per epoch."""
    metrics = sorted({k.split("/", 1)[1] for row in history for k in row if k.startswith("val/")})
    metrics = ["loss"] + [m for m in metrics if m != "loss"]
    if axes is None:
        figure, axes = _axes(None, ncols=len(metrics), size=(4.5, 3.5))
        axes = np.atleast_1d(axes)
    else:
        figure = axes[0].figure
    epochs = [row["epoch"] + 1 for row in history]
    for ax, metric in zip(axes, metrics, strict=False):
        for stage, style in (("train", "-o"), ("val", "-s")):
            key = f"{stage}/{metric}"
            values = [row.get(key, np.nan) for row in history]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, style, label=stage, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return figure


_SVG_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e"}  # matplotlib's first two, as above


def learning_curves_svg(history: Sequence[dict[str, float]], width: int = 300) -> str:
    """The curves ``learning_curves`` draws, as a small SVG document written directly.

    For a dashboard note per trial: matplotlib takes about 0.25 s to draw and encode a
    three-panel figure (ticks, text layout, PNG), a tenth of a small trial; this takes about a
    millisecond. Panels: loss, then every other ``val/`` metric; y labels at the panel's
    minimum, middle and maximum; a gap where a value is missing or not finite (a lone value
    between gaps is a dot); the legend beside each title.
    """
    metrics = sorted({k.split("/", 1)[1] for row in history for k in row if k.startswith("val/")})
    metrics = ["loss"] + [m for m in metrics if m != "loss"]
    epochs = [int(row["epoch"]) + 1 for row in history]
    total = width * len(metrics)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="{_SVG_HEIGHT}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{total}" height="{_SVG_HEIGHT}" fill="white"/>',
    ]
    for index, metric in enumerate(metrics):
        series = {
            stage: [_finite(row.get(f"{stage}/{metric}")) for row in history]
            for stage in ("train", "val")
        }
        parts += _svg_panel(index * width, width, metric, epochs, series)
    parts.append("</svg>")
    return "\n".join(parts)


_SVG_HEIGHT, _SVG_MARGINS = 200, (52, 10, 24, 34)  # left, right, top, bottom


def _svg_panel(
    offset: int, width: int, metric: str, epochs: list[int], series: dict[str, list]
) -> list[str]:
    """One metric's panel of ``learning_curves_svg``, ``offset`` pixels from the left."""
    from html import escape

    left, right, top, bottom = _SVG_MARGINS
    x0, plot_w, plot_h = offset + left, width - left - right, _SVG_HEIGHT - top - bottom
    first, last = (min(epochs), max(epochs)) if epochs else (1, 1)
    values = [v for stage_values in series.values() for v in stage_values if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high - low <= 1e-12 * max(abs(low), abs(high), 1.0):  # flat: a band around it
        pad = max(0.5, 0.05 * abs(low))
        low, high = low - pad, high + pad

    def point(epoch: int, value: float) -> tuple[str, str]:
        x = x0 + plot_w * (epoch - first) / max(last - first, 1)
        return f"{x:.1f}", f"{top + plot_h * (high - value) / (high - low):.1f}"

    below = top + plot_h + 14
    parts = [
        f'<text x="{x0 + plot_w / 2:.1f}" y="16" text-anchor="middle">{escape(metric)}</text>',
        f'<rect x="{x0}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>',
        *(
            f'<text x="{x0 - 4}" y="{float(point(first, v)[1]) + 4:.1f}" text-anchor="end">'
            f"{v:.3g}</text>"
            for v in (low, (low + high) / 2, high)
        ),
        f'<text x="{x0}" y="{below}" text-anchor="middle">{first}</text>',
        f'<text x="{x0 + plot_w}" y="{below}" text-anchor="middle">{last}</text>',
        f'<text x="{x0 + plot_w / 2:.1f}" y="{below + 12}" text-anchor="middle">epoch</text>',
    ]
    legend = 0
    for stage, stage_values in series.items():
        colour = _SVG_COLOURS[stage]
        runs: list[list[tuple[str, str]]] = [[]]
        for epoch, value in zip(epochs, stage_values, strict=True):
            if value is None:
                runs.append([])
            else:
                runs[-1].append(point(epoch, value))
        drawn = [run for run in runs if run]
        for run in drawn:
            if len(run) == 1:
                parts.append(f'<circle cx="{run[0][0]}" cy="{run[0][1]}" r="2.5" fill="{colour}"/>')
            else:
                points = " ".join(f"{x},{y}" for x, y in run)
                parts.append(
                    f'<polyline points="{points}" fill="none" stroke="{colour}" '
                    'stroke-width="1.5"/>'
                )
        if drawn:  # the legend, right of the title
            parts.append(
                f'<text x="{x0 + plot_w - 36 * legend}" y="16" text-anchor="end" '
                f'fill="{colour}">{stage}</text>'
            )
            legend += 1
    return parts


def _finite(value) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def confusion_matrix(
    matrix: np.ndarray, ax: Axes | None = None, labels: Sequence[str] | None = None
) -> Figure:
    """Counts of true (rows) against predicted (columns) classes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    figure, ax = _axes(ax, size=(5.5, 5))
    ConfusionMatrixDisplay(np.asarray(matrix).astype(int), display_labels=labels).plot(
        ax=ax, colorbar=False, values_format="d"
    )
    accuracy = np.trace(matrix) / max(np.sum(matrix), 1)
    ax.set_title(f"test confusion matrix (accuracy {accuracy:.2%})")
    return figure


def image_grid(images, title: str = "", labels: Sequence[str] | None = None) -> Figure:
    """Grayscale images (rows, cols, H, W) or (n, H, W) on a grid, in [0, 1]; optional labels."""
    grid = np.asarray(images, dtype=np.float32)
    if grid.ndim == 3:
        cols = int(np.ceil(np.sqrt(len(grid))))
        padded = np.zeros((cols * cols, *grid.shape[1:]), np.float32)
        padded[: len(grid)] = grid
        grid = padded.reshape(cols, cols, *grid.shape[1:])
    rows, cols = grid.shape[:2]
    figure = Figure(figsize=(cols * 0.8 + 0.2, rows * 0.8 + (0.5 if title else 0.2)))
    axes = np.atleast_2d(figure.subplots(rows, cols, squeeze=False))
    for index, ax in enumerate(axes.flat):
        ax.imshow(grid[index // cols, index % cols], cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        if labels is not None and index < len(labels):
            ax.set_title(labels[index], fontsize=7, pad=1)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9 if title else 0.99)
    return figure


def confirmation(
    labels: Sequence[str],
    values: Sequence[Sequence[float]],
    intervals: Sequence[tuple[float, float]],
    search_values: Sequence[float],
    metric: str,
    ax: Axes | None = None,
) -> Figure:
    """Confirmation over seeds: each configuration's score per seed (dots), its mean with the 95 %
    interval (bar), and the single score that got it chosen in the search (star)."""
    figure, ax = _axes(ax, size=(max(4.0, 1.4 * len(labels) + 2), 4))
    rng = np.random.default_rng(0)  # a fixed jitter: the same figure on every draw
    for x, (runs, (mean, half), chosen) in enumerate(
        zip(values, intervals, search_values, strict=True)
    ):
        jitter = rng.uniform(-0.08, 0.08, len(runs))
        ax.plot(x + jitter, runs, "o", color="tab:blue", alpha=0.6, label="seed" if x == 0 else "")
        ax.errorbar(
            x + 0.25, mean, yerr=half, fmt="s", color="black", capsize=5,
            label="mean ± 95 % CI" if x == 0 else "",
        )  # fmt: skip
        ax.plot(x - 0.25, chosen, "*", color="tab:red", markersize=11,
                label="search (one run)" if x == 0 else "")  # fmt: skip
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel(metric)
    ax.set_title("confirmation over seeds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return figure


def reliability_diagram(bins: np.ndarray, ax: Axes | None = None) -> Figure:
    """Accuracy against confidence per bin (rows of ``bins``: count, summed confidence, correct),
    with the diagonal of perfect calibration and the expected calibration error in the title."""
    count, confidence, correct = np.asarray(bins, dtype=float)
    figure, ax = _axes(ax, size=(4.5, 4.5))
    edges = np.linspace(0, 1, len(count) + 1)
    filled = count > 0
    accuracy = np.divide(correct, count, out=np.zeros_like(count), where=filled)
    mean_confidence = np.divide(confidence, count, out=np.zeros_like(count), where=filled)
    ax.bar(edges[:-1][filled], accuracy[filled], width=np.diff(edges)[filled], align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot(mean_confidence[filled], accuracy[filled], "o", color="tab:red", markersize=3,
            label="mean confidence")  # fmt: skip
    ece = float(np.sum(np.abs(correct - confidence)) / max(count.sum(), 1))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"test reliability (ECE {ece:.3f}, {int(count.sum())} rows)")
    ax.legend(fontsize=8, loc="upper left")
    return figure


def expected_best(
    budgets: Sequence[int], expected: Sequence[float], found: Sequence[float], metric: str,
    ax: Axes | None = None,
) -> Figure:  # fmt: skip
    """The expected best score against the number of trials (Dodge et al. 2019), with the best
    score the search actually had after each trial."""
    figure, ax = _axes(ax, size=(5.5, 4))
    ax.plot(budgets, expected, "-", color="tab:blue", label="expected best of n trials")
    ax.plot(range(1, len(found) + 1), found, "o", color="tab:red", markersize=3,
            label="best so far (this search)")  # fmt: skip
    ax.set(xlabel="trials (completed)", ylabel=metric)
    ax.set_title("what a smaller or larger budget would find")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure
