"""Benchmark 6: a study with 2 worker processes against the same study with 1 (target ≤ 0.6×).

Each spec runs twice in fresh stores: once with one process (torch using every core), once with
``--workers 2`` (each worker one core). Trials are identical in cost: the spec's model with its
default architecture, a fixed number of epochs, no early stopping, no pruning; only the learning
rate is searched. Wall time is measured around ``run_study``, so the workers' start-up (imports,
data loading) counts. Two workloads: the MNIST CNN, whose convolutions keep both cores busy in
one process, and the breast-cancer MLP, whose small steps are mostly single-threaded Python.

Each study runs the spec's own number of trials (8 for the CNN, 20 for the MLP) unless --trials
says otherwise.

    python bench/workers.py [--specs mnist_cnn breast_cancer_mlp] [--trials N] [--epochs N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from workbench.spec import load_spec
from workbench.study import run_study

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# Epochs per trial: 5–8 s a trial in one process for either model.
EPOCHS = {"mnist_cnn": 4, "breast_cancer_mlp": 150}


def timed_study(
    name: str, root: str, workers: int, trials: int | None, epochs: int
) -> tuple[float, int]:
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
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
        ]
        + (["data.augment=false"] if raw["data"]["name"] == "mnist_subset" else []),
    )
    started = time.perf_counter()
    result = run_study(spec, trials=trials, workers=workers)
    return time.perf_counter() - started, result.n_complete


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--specs", nargs="+", default=list(EPOCHS))
    parser.add_argument("--trials", type=int, help="per study (default: the spec's)")
    parser.add_argument("--epochs", type=int, help="per trial (default: per spec, ~7 s each)")
    args = parser.parse_args()
    rows = []
    for name in args.specs:
        epochs = args.epochs or EPOCHS.get(name, 4)
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, complete = timed_study(name, f"{tmp}/mlruns", workers, args.trials, epochs)
            ratio = seconds / rows[-1][3] if workers == 2 else 1.0
            rows.append((name, epochs, workers, seconds, complete, ratio))
    print("\nlearning rate searched, fixed epochs a trial, no pruning")
    print(f"{'spec':>18} {'epochs':>6} {'workers':>8} {'wall s':>8} {'complete':>9} {'ratio':>6}")
    for name, epochs, workers, seconds, complete, ratio in rows:
        print(f"{name:>18} {epochs:>6} {workers:>8} {seconds:>8.1f} {complete:>9} {ratio:>6.2f}")
    print("ratio: 2-worker / 1-worker wall time (target ≤ 0.60×)")


if __name__ == "__main__":
    main()
