"""How far an explanation can be trusted, measured rather than assumed.

- **Faithfulness** (Petsiuk et al., 2018): remove units (pixels, features, time steps) in order of
  attribution and follow the probability of the explained class (*deletion*: it should fall fast,
  small area under the curve), or add them to a blank input (*insertion*: it should rise fast,
  large area). A random order of the same units is the baseline every method must beat.
- **Agreement**: Spearman rank correlation between two methods' attributions of the same input.
- **Sanity** (Adebayo et al., 2018): the attributions of the same network with randomised weights
  must differ from the trained network's; a high rank correlation means the method shows the
  input, not the model.

A removed unit takes the value of ``baseline``: a blank pixel, the training mean of a feature,
the training mean of a time step.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from workbench.explain.core import figure_axes, predict_proba


def to_units(kind: str, values: np.ndarray) -> np.ndarray:
    """Attributions shaped like the inputs → one value per unit, (N, K)."""
    values = np.asarray(values)
    if kind == "image" and values.ndim == 4:  # (N, C, H, W): sum the channels
        values = values.sum(axis=1)
    if kind == "sequence" and values.ndim == 3:  # (N, T, F): sum the features of each step
        values = values.sum(axis=2)
    return values.reshape(len(values), -1)


def _with_units(inputs: torch.Tensor, keep: torch.Tensor, baseline: torch.Tensor, kind: str):
    """Inputs (1, *S) with only the units where ``keep`` (M, K) is 1 kept; the rest baseline."""
    if kind == "sequence":
        mask = keep[:, :, None]
    else:
        mask = keep.reshape(len(keep), *inputs.shape[1:])
    return inputs * mask + baseline * (1 - mask)


def removal_curves(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    units: np.ndarray,
    targets: np.ndarray,
    baseline: torch.Tensor,
    kind: str,
    steps: int = 20,
) -> dict[str, np.ndarray]:
    """Deletion and insertion curves, (N, steps + 1) probabilities of the target class."""
    n_units = units.shape[1]
    counts = np.round(np.linspace(0, n_units, steps + 1)).astype(int)
    deletion = np.zeros((len(inputs), steps + 1))
    insertion = np.zeros((len(inputs), steps + 1))
    for i in range(len(inputs)):
        order = np.argsort(-units[i], kind="stable")
        ranks = np.empty(n_units, dtype=int)
        ranks[order] = np.arange(n_units)
        top = torch.from_numpy((ranks[None, :] < counts[:, None]).astype(np.float32))
        batch = torch.cat(
            [
                _with_units(inputs[i : i + 1], 1 - top, baseline, kind),  # deletion: drop top
                _with_units(inputs[i : i + 1], top, baseline, kind),  # insertion: only top
            ]
        )
        probabilities = predict_proba(network, batch)[:, int(targets[i])]
        deletion[i], insertion[i] = probabilities[: steps + 1], probabilities[steps + 1 :]
    return {"deletion": deletion, "insertion": insertion}


def area(curves: np.ndarray) -> float:
    """Mean area under (N, steps + 1) curves over the fraction of units, [0, 1]."""
    fractions = np.linspace(0, 1, curves.shape[1])
    return float(np.mean(np.trapezoid(curves, fractions, axis=1)))


def faithfulness(
    network, inputs, units, targets, baseline, kind, steps: int = 20, repeats: int = 3, seed=0
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Deletion/insertion areas of an attribution order and of random orders of the same units."""
    curves = removal_curves(network, inputs, units, targets, baseline, kind, steps)
    generator = np.random.default_rng(seed)
    random = [
        removal_curves(
            network, inputs, generator.random(units.shape), targets, baseline, kind, steps
        )
        for _ in range(repeats)
    ]
    random_curves = {k: np.mean([r[k] for r in random], axis=0) for k in curves}
    scores = {
        "deletion_auc": area(curves["deletion"]),
        "insertion_auc": area(curves["insertion"]),
        "random_deletion_auc": area(random_curves["deletion"]),
        "random_insertion_auc": area(random_curves["insertion"]),
    }
    mean_curves = {
        **{k: v.mean(0) for k, v in curves.items()},
        **{f"random_{k}": v.mean(0) for k, v in random_curves.items()},
    }
    return scores, mean_curves


def rank_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Mean Spearman correlation between two (N, K) attributions, row by row."""
    values = []
    for a, b in zip(first, second, strict=True):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue  # a constant row has no ranking
        values.append(spearmanr(a, b).statistic)
    return float(np.mean(values)) if values else float("nan")


def randomized_copy(network: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The network with every parameter redrawn from a normal of the trained tensor's scale."""
    generator = torch.Generator().manual_seed(seed)
    clone = copy.deepcopy(network).cpu().eval()
    with torch.no_grad():
        for parameter in clone.parameters():
            scale = float(parameter.std()) if parameter.numel() > 1 else 1.0
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(noise * (scale or 1.0) + float(parameter.mean()))
    return clone


def plot_curves(
    curves: dict[str, dict[str, np.ndarray]], scores: dict[str, dict], axes=None
) -> Figure:
    """Mean deletion and insertion curves per method, against random orders (2 axes)."""
    figure, grid = figure_axes(axes, (1, 2), (10, 3.8))
    for ax, kind in zip(grid[0], ("deletion", "insertion"), strict=True):
        random_drawn = False
        for method, mean in curves.items():
            fractions = np.linspace(0, 1, len(mean[kind]))
            auc = scores[method][f"{kind}_auc"]
            ax.plot(fractions, mean[kind], "-o", markersize=3, label=f"{method} (AUC {auc:.3f})")
            if not random_drawn:
                random_auc = scores[method][f"random_{kind}_auc"]
                ax.plot(fractions, mean[f"random_{kind}"], "--", color="gray",
                        label=f"random order (AUC {random_auc:.3f})")  # fmt: skip
                random_drawn = True
        ax.set_xlabel(f"fraction of units {'removed' if kind == 'deletion' else 'added'}")
        ax.set_ylabel("probability of the explained class")
        better = "lower" if kind == "deletion" else "higher"
        ax.set_title(f"{kind} ({better} area is more faithful)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figure
