"""The one sanitising step in front of every logging path that could carry data rows (input
examples of logged models, explanation inputs, served-input records): ``tracking.data_policy``.

``raw`` logs rows as they are; ``synthetic`` logs rows of the same shape, dtype and columns whose
values are drawn at random from statistics of many rows (no row is copied or permuted); ``none``
logs nothing of them. Every run is tagged with its policy (``DATA_POLICY``).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

POLICIES = ("raw", "synthetic", "none")
DATA_POLICY = "workbench.data_policy"  # the run tag
MIN_ROWS = 30
"""Statistics per position (feature, pixel, time step) need at least this many rows; from fewer,
one mean and spread for all positions, so a handful of rows is never averaged into a look-alike."""
MAX_ROWS = 10_000  # statistics of a larger reference come from this many of its rows, drawn


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"data_policy: one of {', '.join(POLICIES)}; got {policy!r}")
    return policy


def sanitize(values: Any, policy: str, seed: int = 0, reference: Any = None) -> Any:
    """What of ``values`` (data rows, first axis: a numpy array or a DataFrame) may be logged
    under ``policy``: the values themselves (``raw``), synthetic rows like them (``synthetic``,
    ``synthetic_like``), or None (``none``)."""
    if check_policy(policy) == "raw":
        return values
    if policy == "none":
        return None
    return synthetic_like(values, seed, reference)


def synthetic_like(values: Any, seed: int = 0, reference: Any = None) -> Any:
    """Rows with the shape, dtype (and DataFrame columns) of ``values`` that are no data row.

    Floats are Gaussian draws with the mean and standard deviation of ``reference`` (e.g. the
    training split, in the same space as ``values``; default ``values`` itself), per position
    when it holds ``MIN_ROWS`` rows or more. Integers are codes (classes, tokens): uniform draws
    within the range the reference spans. Booleans are fair coins; text is ``<column>-<k>``.
    A position every reference row shares (a blank border pixel, a constant column) keeps that
    value: it is no one row's own. Seeded: the same call gives the same rows.
    """
    rng = np.random.default_rng(seed)
    if _is_frame(values):
        source = values if reference is None else reference
        columns = {
            name: _synthetic_column(values[name].to_numpy(), source[name].to_numpy(), rng, name)
            for name in values.columns
        }
        return type(values)(columns, columns=values.columns)
    array = np.asarray(values)
    source = array if reference is None else np.asarray(reference)
    if source.shape[1:] != array.shape[1:]:
        raise ValueError(
            f"reference: rows shaped {source.shape[1:]} do not match the values' {array.shape[1:]}"
        )
    return _synthetic_array(array, source, rng)


def _synthetic_array(array: np.ndarray, source: np.ndarray, rng: np.random.Generator):
    if array.dtype == bool:
        return rng.random(array.shape) < 0.5
    if source.ndim > 0 and len(source) > MAX_ROWS:
        source = source[np.sort(rng.choice(len(source), MAX_ROWS, replace=False))]
    per_position = source.ndim > 0 and len(source) >= MIN_ROWS
    axis = 0 if per_position else None
    if np.issubdtype(array.dtype, np.integer):
        low, high = source.min(axis=axis), source.max(axis=axis)
        return rng.integers(low, high, size=array.shape, endpoint=True).astype(array.dtype)
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"synthetic rows: cannot draw values of dtype {array.dtype}")
    numbers = source.astype(np.float64)
    mean, std = numbers.mean(axis=axis), numbers.std(axis=axis)
    return rng.normal(mean, std, size=array.shape).astype(array.dtype)


def _synthetic_column(column, source, rng: np.random.Generator, name) -> np.ndarray:
    if not (np.issubdtype(column.dtype, np.number) or column.dtype == bool):
        kinds = max(1, min(len(set(source.tolist())), len(column)))
        return np.array([f"{name}-{k}" for k in rng.integers(0, kinds, len(column))], object)
    return _synthetic_array(column, source, rng)


def _is_frame(values: Any) -> bool:
    return hasattr(values, "columns") and hasattr(values, "to_numpy")


def without_data_files(env: dict, paths: list, root=None) -> dict:
    """``env`` (``workbench.environment.capture()``) with the data files (or folders) ``paths``
    cut out of its git diff: a table kept in the checkout, untracked or edited, would otherwise
    reach the store whole, identifiers included, in every run's ``environment/diff.patch``.
    ``root``: the checkout the diff was taken in (default: this package's)."""
    from pathlib import Path

    git = env.get("git") or {}
    if not git.get("diff") or not paths:
        return env
    if root is None:
        from workbench.environment import package_repo

        root = package_repo()
    if root is None:
        return env
    data = {Path(p).expanduser().resolve() for p in paths}
    kept = []
    for section in re.split(r"(?m)^(?=diff --git a/)", git["diff"]):
        found = re.match(r"diff --git a/(.+?) b/", section)
        file = (Path(root) / found.group(1)).resolve() if found else None
        if file is None or not ({file, *file.parents} & data):  # the file, or in a data folder
            kept.append(section)
    return {**env, "git": {**git, "diff": "".join(kept)}}
