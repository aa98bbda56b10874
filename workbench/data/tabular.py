"""Tables of numeric features: scikit-learn's breast cancer and wine, and CSV files on disk.

The same splits as images (stratified, seeded, whole counts); each feature is standardised with
the mean and standard deviation of the training split only. Columns that identify a person are
dropped as the file is read; quasi-identifiers are generalised into equal-frequency bins and the
table checked for k-anonymity before any training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workbench.data.arrays import ArrayDataModule, LoadResult
from workbench.registry import register_data
from workbench.spec import SpecError


class TabularDataModule(ArrayDataModule):
    """Rows of features (N, F) with integer class labels; names kept for explanations.

    ``quasi_identifiers`` (column → bins): each such column is replaced by the number of its
    equal-frequency bin (0 … bins-1, edges from the training split, as every statistic a feature
    is built from); with ``k_anonymity``, every combination of those bin numbers must be shared
    by at least k rows of the table (all splits), checked in ``setup`` before any training.
    """

    def __init__(
        self,
        load,
        feature_names,
        class_names,
        quasi_identifiers: dict[str, int] | None = None,
        k_anonymity: int | None = None,
        **options,
    ) -> None:
        if options.get("augment"):
            raise ValueError("data.augment: tabular data has no augmentation; set it to false")
        super().__init__(load, **options)
        self.feature_names = list(feature_names)
        self.class_names = list(class_names)
        missing = sorted(set(quasi_identifiers or {}) - set(self.feature_names))
        if missing:
            raise SpecError(
                f"data.quasi_identifiers: {missing} not among the feature columns "
                f"{self.feature_names}"
            )
        self.quasi_identifiers = dict(quasi_identifiers or {})
        self.k_anonymity = k_anonymity
        self.bin_edges_: dict[str, np.ndarray] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits_ is not None:
            return
        super().setup(stage)
        if self.k_anonymity is not None:
            try:
                self._check_k_anonymity()
            except SpecError:
                self.splits_ = None  # a later setup() checks again instead of passing
                raise

    def _statistics(self, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The bin edges are fitted here, on the training split, before the statistics of the
        # generalised columns.
        self.bin_edges_ = {
            name: equal_frequency_edges(x_train[:, self.feature_names.index(name)], bins)
            for name, bins in self.quasi_identifiers.items()
        }
        x_train = self._generalised(x_train)
        if not self.normalize:
            return np.zeros(x_train.shape[1], np.float32), np.ones(x_train.shape[1], np.float32)
        std = x_train.std(axis=0)
        return x_train.mean(axis=0), np.where(std > 0, std, 1.0)  # constant columns stay 0

    def _to_tensor(self, rows: np.ndarray) -> torch.Tensor:
        scaled = (self._generalised(rows) - self.mean_) / self.std_
        return torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))

    def _generalised(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` with each quasi-identifier replaced by its bin number."""
        if not self.bin_edges_:
            return rows
        rows = rows.copy()
        for name, edges in self.bin_edges_.items():
            column = self.feature_names.index(name)
            rows[:, column] = np.searchsorted(edges, rows[:, column], side="right")
        return rows

    def _check_k_anonymity(self) -> None:
        """Raise naming the columns, k and the smallest group when a combination of generalised
        quasi-identifiers is shared by fewer than k rows of the table."""
        columns = [self.feature_names.index(name) for name in self.quasi_identifiers]
        rows = torch.cat([inputs[:, columns] for inputs, _ in self.splits_.values()])
        _, counts = torch.unique(rows.cpu(), dim=0, return_counts=True)
        k, smallest = self.k_anonymity, int(counts.min())
        if smallest < k:
            small = counts < k
            raise SpecError(
                f"data.k_anonymity: the table is not {k}-anonymous in its quasi-identifiers "
                f"{list(self.quasi_identifiers)} (bins {list(self.quasi_identifiers.values())}): "
                f"{int(small.sum())} of {len(counts)} combinations hold fewer than {k} rows "
                f"({int(counts[small].sum())} rows in all), the smallest {smallest}. Use fewer "
                "bins, fewer quasi-identifiers or a smaller k"
            )

    def to_pixels(self, rows: torch.Tensor) -> torch.Tensor:
        """Undo standardisation: model inputs back to the original feature units."""
        return rows * torch.as_tensor(self.std_, dtype=rows.dtype) + torch.as_tensor(
            self.mean_, dtype=rows.dtype
        )


def equal_frequency_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """The inner edges of ``bins`` bins that hold about as many of ``values`` each (tied values
    share a bin, so there may be fewer)."""
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))


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
def csv(
    path: str | None = None,
    target: str = "label",
    identifiers: list[str] | tuple[str, ...] = (),
    hash_identifiers: bool = False,
    **options,
) -> TabularDataModule:
    """A CSV file with a header: numeric feature columns and a ``target`` column of class labels.

    The table is checked here, before any training or tracking: empty labels (which would become
    a class of their own), empty or infinite features (which make every trial's loss NaN), a file
    without rows and a target with a single class are errors that name the column and the rows.

    ``identifiers`` (names, e-mails, record numbers) are dropped as the file is read: no model,
    statistic or log ever sees them. ``hash_identifiers`` asks for a salted hash instead; nothing
    in training reads a per-row key (no split by person, no join), so the hash would be made only
    to be thrown away: the columns are dropped under either setting.
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
    identifiers = list(identifiers)
    missing = [c for c in identifiers if c not in frame.columns or c == target]
    if missing:
        raise SpecError(
            f"data.identifiers: {missing} not among the feature columns of {file}; columns: "
            f"{[c for c in frame.columns if c != target]}"
        )
    frame = frame.drop(columns=identifiers)
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
