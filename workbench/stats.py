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
