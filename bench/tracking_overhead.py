"""Benchmark 2: what MLflow tracking adds to a trial's wall time.

Runs a 3-trial study whose trials are identical (empty search space, no pruning, explanations off)
through `run_study`, and takes each trial's wall time from Optuna. Then trains the same model the
same number of times with `fit()` alone, untracked. The difference is everything tracking adds per
trial: the child run, per-epoch metric batches, params, the two plots and the logged model.

    python bench/tracking_overhead.py [--epochs 5] [--trials 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import yaml

from workbench.spec import load_spec
from workbench.study import run_study
from workbench.train import build_datamodule, build_model, fit

SPEC = Path(__file__).resolve().parents[1] / "experiments" / "mnist_cnn.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = yaml.safe_load(SPEC.read_text())
        raw.update(name="bench_tracking", search_space={})
        spec = load_spec(
            raw,
            [
                f"tracking.root={tmp}/mlruns",
                f"trainer.max_epochs={args.epochs}",
                f"trainer.patience={args.epochs}",
                "study.pruner=none",
                "study.pruner_options={}",
                "explain.enabled=false",
                "study.progress_bar=false",
                "data.augment=false",
            ],
        )
        result = run_study(spec, trials=args.trials)
        trials = result.load_study().trials
        tracked = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]

        data = build_datamodule(spec)
        untracked = []
        for number in range(args.trials):
            started = time.perf_counter()
            pl.seed_everything(spec.seed, verbose=False)
            model = build_model(spec, data)
            fit(model, data, spec.trainer, Path(tmp) / f"plain-{number}")
            untracked.append(time.perf_counter() - started)

    with_s, without_s = statistics.median(tracked), statistics.median(untracked)
    print(f"{args.trials} identical trials of {args.epochs} epochs (MNIST-subset CNN, CPU)")
    print(f"{'path':28s} {'median trial s':>15s}")
    print(f"{'fit() untracked':28s} {without_s:15.2f}")
    print(f"{'study trial, MLflow tracked':28s} {with_s:15.2f}")
    print(
        f"tracking overhead: {with_s - without_s:+.2f} s per trial = "
        f"{(with_s - without_s) / with_s:.1%} of a tracked trial's wall time "
        f"(ratio tracked/untracked {with_s / without_s:.3f})"
    )


if __name__ == "__main__":
    main()
