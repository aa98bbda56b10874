"""Tables of numeric features: scikit-learn's breast cancer and wine, and CSV files on disk.

The same splits as images (stratified, seeded, whole counts); each feature is standardised with
the mean and standard deviation of the training split only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workbench.data.images import ImageDataModule, LoadResult
from workbench.registry import register_data


class TabularDataModule(ImageDataModule):
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
    """A CSV file with a header: numeric feature columns and a ``target`` column of class labels."""
    import pandas as pd

    if path is None:
        raise ValueError("data.path: the csv data family needs a CSV file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"data.path: file not found: {file}")
    frame = pd.read_csv(file)
    if target not in frame.columns:
        raise ValueError(
            f"data.options.target: column {target!r} not in {file}; columns: {list(frame.columns)}"
        )
    features = frame.drop(columns=[target])
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise ValueError(f"data.path: {file} has non-numeric feature columns {non_numeric}")
    classes, labels = np.unique(frame[target].to_numpy(), return_inverse=True)

    def load() -> LoadResult:
        return (features.to_numpy(np.float32), labels.astype(np.int64)), None

    return TabularDataModule(load, list(features.columns), [str(c) for c in classes], **options)
