"""Summaries over seeds: a mean with its 95 % Student-t interval."""

from __future__ import annotations

import math

import numpy as np


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The mean and the half-width of its Student-t interval (0 for a single value)."""
    from scipy import stats

    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return float(data.mean()), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data))
    return float(data.mean()), float(half)


def expected_best(values: list[float], budgets: list[int], maximize: bool = True) -> list[float]:
    """The expected best score of a search of ``n`` trials, for each ``n`` in ``budgets``, drawn
    from the scores observed (Dodge et al. 2019, "Show your work"): with the N scores sorted
    from worst to best, E[best of n] = Σ_i v_(i) ((i/N)^n - ((i-1)/N)^n), the chance that the
    i-th score is the best of n draws with replacement."""
    data = np.sort(np.asarray(values, dtype=float))
    if not maximize:
        data = data[::-1]  # worst (largest) first
    count = len(data)
    if count == 0:
        return [float("nan")] * len(budgets)
    share = np.arange(1, count + 1) / count
    return [float(np.sum(data * (share**n - (share - 1 / count) ** n))) for n in budgets]
