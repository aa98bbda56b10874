"""Benchmark 2: what MLflow tracking adds to a trial's wall time.

Identical trials (empty search space, no pruning, explanations off) of a study run through
`run_study`, each trial's wall time taken from Optuna, against the same model trained the same way
with `fit()` alone, untracked. The difference is everything tracking adds per trial: the child run,
per-epoch metric batches, params, the environment, and (``--log-models all``) the two plots and
the logged model; under ``best`` (the default) those are logged once, for the champion, when the
study ends, outside any trial.

Tracked and untracked trials are interleaved in pairs, in ABBA order (tracked first in even pairs,
untracked first in odd ones), so a machine that drifts (another load, clock changes) moves both
sides alike. One pair runs first as a warm-up and is not counted: it pays the one-time costs
(imports, torch.export's first trace, matplotlib's font cache) that no later trial pays.

On a shared machine two runs of the same 13 s fit can differ by seconds, so the script also times
the tracking work itself inside each tracked trial: everything outside `fit()` (run, params,
plots, model) plus the per-epoch metric logging inside it. That direct figure does not depend on
the untracked runs' noise.

    python bench/tracking_overhead.py [--epochs 5] [--pairs 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import mlflow
import yaml

import workbench.study
from workbench.spec import load_spec
from workbench.study import run_study
from workbench.train import data_from_spec, fit, module_from_spec

SPEC = Path(__file__).resolve().parents[1] / "experiments" / "mnist_cnn.yaml"


def _spec(root: str, epochs: int, log_models: str = "best"):
    raw = yaml.safe_load(SPEC.read_text())
    raw.update(name="bench_tracking", search_space={})
    return load_spec(
        raw,
        [
            f"tracking.root={root}",
            f"trainer.max_epochs={epochs}",
            f"trainer.patience={epochs}",
            "study.pruner=none",
            "study.pruner_options={}",
            "explain.enabled=false",
            "study.progress_bar=false",
            "study.allow_repeats=true",  # identical trials on purpose
            f"tracking.log_models={log_models}",
            "data.augment=false",
        ],
    )


class EpochLoggingTimer:
    """Wraps the study's per-epoch logging (called from inside `fit()`) and adds up its time."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.inner = workbench.study.objective._log_epoch
        workbench.study.objective._log_epoch = self  # looked up at every epoch

    def __call__(self, *args, **kwargs) -> None:
        started = time.perf_counter()
        try:
            self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=6, help="counted pairs, after one warm-up")
    parser.add_argument(
        "--log-models", default="best", choices=["best", "all"],
        help="best: the champion's model and figures when the study ends; all: every trial's",
    )  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = _spec(f"{tmp}/mlruns", args.epochs, args.log_models)
        data = data_from_spec(spec)
        epoch_logging = EpochLoggingTimer()
        finished = 0

        def tracked() -> tuple[float, float]:
            """One more trial of the study (it resumes); its wall time and its tracking work."""
            nonlocal finished
            finished += 1
            epoch_logging.seconds = 0.0
            result = run_study(spec, trials=finished)
            trial = result.load_study().trials[-1]
            run = mlflow.MlflowClient(result.tracking_uri).get_run(
                trial.user_attrs["mlflow_run_id"]
            )
            wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
            return wall, wall - run.data.metrics["time/fit_s"] + epoch_logging.seconds

        def untracked() -> float:
            started = time.perf_counter()
            pl.seed_everything(spec.seed, verbose=False)
            model = module_from_spec(spec, data)
            fit(model, data, spec.trainer, Path(tmp) / f"plain-{time.monotonic_ns()}")
            return time.perf_counter() - started

        rows = []
        for pair in range(args.pairs + 1):
            if pair % 2 == 0:
                (with_s, work_s), without_s = tracked(), untracked()
            else:
                without_s = untracked()
                with_s, work_s = tracked()
            if pair > 0:  # pair 0 is the warm-up
                rows.append((with_s, work_s, without_s))

    print(
        f"\n{args.pairs} pairs of identical {args.epochs}-epoch trials (MNIST-subset CNN, CPU), "
        f"tracking.log_models={args.log_models}"
    )
    print(f"{'pair':>4s} {'tracked s':>10s} {'untracked s':>12s} {'difference':>11s} {'timed':>7s}")
    for i, (with_s, work_s, without_s) in enumerate(rows, 1):
        difference = (with_s - without_s) / with_s
        print(f"{i:4d} {with_s:10.2f} {without_s:12.2f} {difference:11.1%} {work_s / with_s:7.1%}")
    with_s = statistics.median(r[0] for r in rows)
    without_s = statistics.median(r[2] for r in rows)
    work_s = statistics.median(r[1] for r in rows)
    print(
        f"by difference of medians: tracked {with_s:.2f} s, untracked {without_s:.2f} s, "
        f"{with_s - without_s:+.2f} s = {(with_s - without_s) / with_s:.1%} of a tracked trial "
        f"(ratio tracked/untracked {with_s / without_s:.3f})"
    )
    print(
        f"timed directly: tracking work {work_s:.2f} s a trial = {work_s / with_s:.1%} of a "
        f"tracked trial (outside fit() plus per-epoch logging inside it; median over pairs)"
    )


if __name__ == "__main__":
    main()
