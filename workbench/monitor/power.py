"""How often each drift test fires, measured: on clean batches (its false-alarm rate) and on
shifted ones (its power), against the size of the shift and the size of the batch.

The reference is the model's validation split; batches are drawn without replacement from its
test split, shifted in [0, 1] pixels and normalised as the model's data module does. Rates carry
Wilson 95 % intervals over the batches (batches share images of one test split, so the
interval is, if anything, narrow).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from workbench.monitor import shifts as shift_functions
from workbench.monitor.drift import TESTS, DriftDetector, sample_of
from workbench.monitor.shifts import SHIFTS

CLASS_SHIFT = (0, 1)  # the classes a class-shifted batch over-represents
DEFAULT_SHIFTS = {
    "rotation": [2.5, 5.0, 10.0, 20.0],  # degrees
    "resampled": [10.0, 20.0],  # degrees turned and back: the control for rotation
    "noise": [0.05, 0.1, 0.2, 0.4],  # pixel standard deviation
    "classes": [0.2, 0.4, 0.6, 0.8],  # share of the batch drawn from CLASS_SHIFT only
}


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson 95 % interval of a proportion k / n."""
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(interval.low), float(interval.high)


def reference_of(model, max_rows: int = 500):
    """The model's validation split (at most ``max_rows``, evenly spread) as a drift reference."""
    inputs, _ = model.data.split("val")
    rows = np.linspace(0, len(inputs) - 1, min(max_rows, len(inputs))).astype(int)
    return sample_of(model.network.cpu(), inputs[rows])


def drift_study(
    model,
    shifts: dict[str, list[float]] | None = None,
    batch_sizes: tuple[int, ...] = (200,),
    n_batches: int = 100,
    alpha: float = 0.05,
    permutations: int = 200,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Rejection rates of every test (and of the family-wise ``any``) for clean batches and for
    each shift and size, at each batch size: one row per (shift, size, batch, test) with the
    rejections, batches, rate and its interval. ``model`` is a ``TrainedModel`` on image data."""
    from tqdm.auto import tqdm

    shifts = DEFAULT_SHIFTS if shifts is None else shifts
    unknown = set(shifts) - {*SHIFTS, "classes"}
    if unknown:
        raise ValueError(f"shifts: unknown {sorted(unknown)}; choose from rotation, noise, classes")
    data, network = model.data, model.network.cpu()
    detector = DriftDetector(reference_of(model), alpha, permutations, seed)
    test_inputs, test_labels = data.split("test")
    pixels = data.to_pixels(test_inputs).squeeze(1).numpy()
    labels = test_labels.numpy()
    cases = [("clean", 0.0)] + [(kind, size) for kind, sizes in shifts.items() for size in sizes]
    rng = np.random.default_rng(seed)
    rows = []
    bar = tqdm(total=len(cases) * len(batch_sizes) * n_batches, disable=not progress, desc="drift")
    for batch in batch_sizes:
        if batch > len(labels):
            raise ValueError(f"batch_sizes: {batch} exceeds the {len(labels)} test images")
        for kind, size in cases:
            counts: dict[str, int] = {}
            for _ in range(n_batches):
                if kind == "classes":
                    index = shift_functions.draw(labels, batch, rng, CLASS_SHIFT, size)
                else:
                    index = shift_functions.draw(labels, batch, rng)
                images = pixels[index]
                if kind in shift_functions.SHIFTS:
                    images = shift_functions.SHIFTS[kind](images, size, rng)
                inputs = data._to_tensor(images)
                result = detector.check(sample_of(network, inputs))
                for test, fired in {**result.flags, "any": result.drifted}.items():
                    counts[test] = counts.get(test, 0) + int(fired)
                bar.update()
            for test, k in counts.items():
                low, high = wilson(k, n_batches)
                rows.append(
                    {
                        "shift": kind,
                        "size": size,
                        "batch": batch,
                        "test": test,
                        "rejections": k,
                        "batches": n_batches,
                        "rate": k / n_batches,
                        "low": low,
                        "high": high,
                    }
                )
    bar.close()
    return pd.DataFrame(rows)


def batches_needed(table: pd.DataFrame, shift: str, size: float, test: str, power: float = 0.9):
    """The smallest batch size in ``table`` at which ``test`` detects the shift in at least
    ``power`` of the batches; ``None`` when none does."""
    rows = table[(table["shift"] == shift) & (table["size"] == size) & (table["test"] == test)]
    enough = rows[rows["rate"] >= power]
    return None if enough.empty else int(enough["batch"].min())


_TESTS_DRAWN = [*TESTS, "psi", "any"]
_UNITS = {
    "rotation": "degrees",
    "resampled": "degrees turned and back",
    "noise": "pixel noise σ",
    "classes": "share from classes 0, 1",
}


def _rate_lines(ax, rows: pd.DataFrame, x: str) -> None:
    """One line per test of its rejection rate against column ``x``, with its Wilson band."""
    for test in _TESTS_DRAWN:
        line = rows[rows["test"] == test].sort_values(x)
        if not line.empty:
            ax.plot(line[x], line["rate"], "-o", ms=3, label=test)
            ax.fill_between(line[x], line["low"], line["high"], alpha=0.15)


def plot_power(table: pd.DataFrame, batch: int | None = None):
    """Rejection rate against shift size, one panel per shift, one line per test (clean batches
    at size 0), with Wilson intervals; the dotted line is alpha."""
    from matplotlib.figure import Figure

    batch = int(table["batch"].max()) if batch is None else batch
    at = table[table["batch"] == batch]
    kinds = [k for k in at["shift"].unique() if k != "clean"]
    figure = Figure(figsize=(4.6 * len(kinds), 3.8))
    axes = np.atleast_1d(figure.subplots(1, len(kinds), sharey=True))
    clean = at[at["shift"] == "clean"]
    for ax, kind in zip(axes, kinds, strict=True):
        _rate_lines(ax, pd.concat([clean, at[at["shift"] == kind]]), "size")
        ax.axhline(0.05, ls=":", color="grey")
        ax.set_title(f"{kind} (batches of {batch})")
        ax.set_xlabel(_UNITS.get(kind, kind))
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("share of batches flagged")
    axes[-1].legend(fontsize=8, loc="lower right")
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.88, wspace=0.08)
    return figure


def plot_batch_size(table: pd.DataFrame, shift: str, size: float):
    """Rejection rate against batch size for one shift: how many inputs a test needs."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8))
    ax = figure.subplots()
    _rate_lines(ax, table[(table["shift"] == shift) & (table["size"] == size)], "batch")
    ax.axhline(0.9, ls=":", color="grey")
    ax.set_xscale("log")
    ax.set_xlabel("inputs per batch")
    ax.set_ylabel("share of batches flagged")
    ax.set_title(f"{shift} {size:g}: power against batch size")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.9)
    return figure


def plot_false_alarms(table: pd.DataFrame, batch: int | None = None):
    """Each test's false-alarm rate on clean batches with its interval, against alpha."""
    from matplotlib.figure import Figure

    batch = int(table["batch"].max()) if batch is None else batch
    clean = table[(table["shift"] == "clean") & (table["batch"] == batch)]
    clean = clean.set_index("test").reindex([t for t in _TESTS_DRAWN if t in set(clean["test"])])
    figure = Figure(figsize=(5.5, 3.5))
    ax = figure.subplots()
    x = np.arange(len(clean))
    error = np.stack([clean["rate"] - clean["low"], clean["high"] - clean["rate"]])
    ax.bar(x, clean["rate"], yerr=error, capsize=4, color="#4c72b0")
    ax.axhline(0.05, ls=":", color="grey", label="α = 0.05")
    ax.set_xticks(x, clean.index)
    ax.set_ylabel("false-alarm rate")
    ax.set_title(f"clean batches of {batch} (n = {int(clean['batches'].iloc[0])})")
    ax.legend(fontsize=8)
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.12, top=0.9)
    return figure
