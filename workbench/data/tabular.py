"""Tables of numeric features: scikit-learn's breast cancer and wine, and CSV files on disk.

The same splits as images (stratified, seeded, whole counts); each feature is standardised with
the mean and standard deviation of the training split only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workbench.data.arrays import ArrayDataModule, LoadResult
from workbench.registry import register_data


class TabularDataModule(ArrayDataModule):
    """Rows of features (N, F) with integer class labels; names kept for explanations."""

    def __init__(self, load, feature_names, class_names, **options) -> None:
        if options.get("augment"):
            raise ValueError("data.augment: tabular data has no augmentation; set it to false")
        super().__init__(load, **options)
        self.feature_names = list(feature_names)
        self.class_names = list(class_names)

    def _statistics(self, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.normalize:
            return np.zeros(x_train.shape[1], np.float32), np.ones(x_train.shape[1], np.float32)
        std = x_train.std(axis=0)
        return x_train.mean(axis=0), np.where(std > 0, std, 1.0)  # constant columns stay 0

    def _to_tensor(self, rows: np.ndarray) -> torch.Tensor:
        scaled = (rows - self.mean_) / self.std_
        return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))

    def to_pixels(self, rows: torch.Tensor) -> torch.Tensor:
        """Undo standardisation: model inputs back to the original feature units."""
        return rows * torch.as_tensor(self.std_, dtype=rows.dtype) + torch.as_tensor(
            self.mean_, dtype=rows.dtype
        )


def _sklearn(name: str):
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, f"load_{name}")()

    def load() -> LoadResult:
        return (bunch.data.astype(np.float32), bunch.target.astype(np.int64)), None

    return load, bunch.feature_names, bunch.target_names


@register_data("breast_cancer")
def breast_cancer(**options) -> TabularDataModule:
    """569 tumours, 30 features, malignant vs benign (scikit-learn)."""
    return TabularDataModule(*_sklearn("breast_cancer"), **options)


@register_data("wine")
def wine(**options) -> TabularDataModule:
    """178 wines, 13 chemical features, 3 cultivars (scikit-learn)."""
    return TabularDataModule(*_sklearn("wine"), **options)


@register_data("csv")
def csv(path: str | None = None, target: str = "label", **options) -> TabularDataModule:
    """A CSV file with a header: numeric feature columns and a ``target`` column of class labels.

    The table is checked here, before any training or tracking: empty labels (which would become
    a class of their own), empty or infinite features (which make every trial's loss NaN), a file
    without rows and a target with a single class are errors that name the column and the rows.
    """
    import pandas as pd

    if path is None:
        raise ValueError("data.path: the csv data family needs a CSV file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.path: file not found: {file}")
    try:
        frame = pd.read_csv(file)
    except pd.errors.EmptyDataError:
        raise ValueError(f"data.path: {file} is empty; it needs a header and rows") from None
    if target not in frame.columns:
        raise ValueError(
            f"data.options.target: column {target!r} not in {file}; columns: {list(frame.columns)}"
        )
    if frame.empty:
        raise ValueError(f"data.path: {file} has no data rows, only the header")
    features = frame.drop(columns=[target])
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise ValueError(f"data.path: {file} has non-numeric feature columns {non_numeric}")
    _check_values(file, frame, features, target)
    classes, labels = np.unique(frame[target].to_numpy(), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"data.options.target: column {target!r} of {file} holds a single class "
            f"({str(classes[0])!r}); classification needs at least two"
        )

    def load() -> LoadResult:
        return (features.to_numpy(np.float32), labels.astype(np.int64)), None

    return TabularDataModule(load, list(features.columns), [str(c) for c in classes], **options)


def _rows(mask: np.ndarray, shown: int = 5) -> str:
    """Data rows (1 = the first row after the header) where ``mask`` holds, the first few."""
    rows = (np.flatnonzero(mask) + 1).tolist()
    listed = ", ".join(str(r) for r in rows[:shown])
    if len(rows) > shown:
        listed += f", ... {rows[-1]}"
    return f"data row{'s' if len(rows) > 1 else ''} {listed}"


def _count(n: int, what: str) -> str:
    return f"{n} {what} value{'s' if n != 1 else ''}"


def _check_values(file: Path, frame, features, target: str) -> None:
    """Raise naming every column with empty labels, or empty or infinite features."""
    problems, affected = [], np.zeros(len(frame), dtype=bool)
    empty_labels = frame[target].isna().to_numpy()
    if empty_labels.any():
        problems.append(
            f"column {target!r} has {_count(int(empty_labels.sum()), 'empty')} "
            f"({_rows(empty_labels)})"
        )
        affected |= empty_labels
    for column in features.columns:
        values = features[column].to_numpy(np.float64)
        empty, infinite = np.isnan(values), np.isinf(values)
        # float32 is what the model sees: a finite float64 beyond its range becomes inf.
        infinite |= np.isfinite(values) & (np.abs(values) > np.finfo(np.float32).max)
        found = [
            f"{_count(int(mask.sum()), kind)} ({_rows(mask)})"
            for mask, kind in ((empty, "empty"), (infinite, "infinite"))
            if mask.any()
        ]
        if found:
            problems.append(f"column {column!r} has {' and '.join(found)}")
            affected |= empty | infinite
    if problems:
        raise ValueError(
            f"data.path: {file}: {'; '.join(problems)} ({int(affected.sum())} of {len(frame)} "
            "rows affected); drop or fill them"
        )
