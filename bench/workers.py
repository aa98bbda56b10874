"""Benchmark 6: a study with 2 worker processes against the same study with 1 (target ≤ 0.6×).

The same spec runs twice in fresh stores: once with one process (torch using every core), once
with ``--workers 2`` (each worker one core). Trials are identical in cost: the MNIST CNN with a
fixed number of epochs, no early stopping, no pruning; only the learning rate is searched. Wall
time is measured around ``run_study``, so the workers' start-up (imports, data loading) counts.

    python bench/workers.py [--trials 8] [--epochs 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from workbench.spec import load_spec
from workbench.study import run_study

SPEC = Path(__file__).resolve().parents[1] / "experiments" / "mnist_cnn.yaml"


def timed_study(root: str, workers: int, trials: int, epochs: int) -> tuple[float, int]:
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(
        name="bench_workers",
        search_space={"lr": {"type": "float", "low": 5e-4, "high": 3e-3, "log": True}},
    )
    spec = load_spec(
        raw,
        [
            f"tracking.root={root}",
            f"trainer.max_epochs={epochs}",
            f"trainer.patience={epochs}",
            "study.pruner=none",
            "study.pruner_options={}",
            "explain.enabled=false",
            "study.progress_bar=false",
            "data.augment=false",
        ],
    )
    started = time.perf_counter()
    result = run_study(spec, trials=trials, workers=workers)
    return time.perf_counter() - started, result.n_complete


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    rows = []
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, complete = timed_study(f"{tmp}/mlruns", workers, args.trials, args.epochs)
        rows.append((workers, seconds, complete))
    print(f"\n{args.trials} trials × {args.epochs} epochs, MNIST CNN (4,000 training images)")
    print(f"{'workers':>8} {'wall s':>8} {'complete':>9}")
    for workers, seconds, complete in rows:
        print(f"{workers:>8} {seconds:>8.1f} {complete:>9}")
    ratio = rows[1][1] / rows[0][1]
    print(f"2-worker / 1-worker wall time: {ratio:.2f}× (target ≤ 0.60×)")


if __name__ == "__main__":
    main()
