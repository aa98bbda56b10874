"""Benchmark 3: TPE + Hyperband against random search without pruning, over seeds.

For each seed, both studies run the same wide search space on the MNIST-subset CNN, with the same
data split and initialisation seed; their samplers are seeded independently (TPE with the seed,
random search with 1000 + the seed), so they do not start from the same draws. The figure is the
number of training epochs (and the wall time) spent until any trial first reports the target
validation accuracy, counting trials in the order they ran. Prints the per-seed table and the
median ratio TPE+Hyperband / random, with a distribution-free 95 % confidence interval for the
median (order statistics; needs at least 6 seeds).

    python bench/study_efficiency.py [--seeds 0 1 2 3 4] [--targets 0.97 0.975] [--trials 12]
                                     [--epochs 10] [--hyperband "{reduction_factor: 4}"]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path

import yaml

from workbench.spec import load_spec
from workbench.study import run_study

SPEC = Path(__file__).resolve().parents[1] / "experiments" / "mnist_cnn.yaml"
WIDE_SPACE = {
    "width": {"type": "categorical", "choices": [8, 16, 32]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.7},
    "lr": {"type": "float", "low": 1.0e-5, "high": 1.0e-1, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
}
METHODS = {
    "tpe+hyperband": [
        "study.sampler=tpe",
        "study.sampler_options={n_startup_trials: 4}",
        "study.pruner=hyperband",
        "study.pruner_options={}",
    ],
    "random, no pruning": [
        "study.sampler=random",
        "study.sampler_options={seed: SAMPLER_SEED}",
        "study.pruner=none",
        "study.pruner_options={}",
    ],
}


def cost_to_target(study, target: float) -> tuple[float, float]:
    """Epochs and seconds spent, in trial order, until a reported val/acc first reaches target."""
    epochs = seconds = 0.0
    for trial in sorted(study.trials, key=lambda t: t.number):
        values = [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)]
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        for index, value in enumerate(values):
            if value >= target:
                return epochs + index + 1, seconds + duration * (index + 1) / len(values)
        epochs += len(values)
        seconds += duration
    return math.inf, seconds


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval for the median: the order statistics x(k), x(n+1-k)
    with the largest k such that P(Binomial(n, 1/2) < k) <= (1 - level) / 2. Infinite values
    (a method that never reached the target) sort last. NaN where n is too small for the level."""
    xs, n = sorted(values), len(values)
    tail, k = 0.0, 0
    while True:
        tail += math.comb(n, k) / 2**n  # P(X <= k)
        if tail > (1 - level) / 2:
            break
        k += 1
    if k == 0:
        return math.nan, math.nan
    return xs[k - 1], xs[n - k]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.97, 0.975])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--hyperband",
        default="{}",
        help="options for the HyperbandPruner of the TPE arm, as a YAML mapping (default: none "
        "beyond the workbench's min_resource=1, max_resource=epochs)",
    )
    args = parser.parse_args()
    methods = dict(METHODS)
    methods["tpe+hyperband"] = [
        *METHODS["tpe+hyperband"][:-1],
        f"study.pruner_options={args.hyperband}",
    ]
    raw = yaml.safe_load(SPEC.read_text())
    raw["search_space"] = WIDE_SPACE
    studies = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method, overrides in methods.items():
                raw["name"] = f"efficiency-{method.split(',')[0]}-{seed}"
                spec = load_spec(
                    raw,
                    [
                        f"seed={seed}",
                        f"tracking.root={tmp}/mlruns",
                        f"trainer.max_epochs={args.epochs}",
                        "trainer.patience=3",
                        "explain.enabled=false",
                        "study.progress_bar=false",
                        *(o.replace("SAMPLER_SEED", str(1000 + seed)) for o in overrides),
                    ],
                )
                studies[seed, method] = run_study(spec, trials=args.trials).load_study()

    print(f"\nup to {args.trials} trials x {args.epochs} epochs per study")
    for target in args.targets:
        print(f"\ntarget val/acc >= {target}")
        print(f"{'seed':>4s} {'method':20s} {'epochs to target':>17s} {'seconds':>8s} {'best':>7s}")
        ratios, time_ratios = [], []
        for seed in args.seeds:
            costs = {}
            for method in methods:
                study = studies[seed, method]
                costs[method] = cost_to_target(study, target)
                epochs, seconds = costs[method]
                print(
                    f"{seed:4d} {method:20s} {epochs:17.0f} {seconds:8.1f} {study.best_value:7.4f}"
                )
            (tpe_e, tpe_s), (rnd_e, rnd_s) = costs.values()
            if math.isfinite(rnd_e):
                ratios.append(tpe_e / rnd_e)
                time_ratios.append(tpe_s / rnd_s)
        if ratios:
            low, high = median_interval(ratios)
            interval = "too few seeds" if math.isnan(low) else f"{low:.2f}-{high:.2f}"
            print(
                f"median ratio tpe+hyperband / random: epochs {statistics.median(ratios):.2f} "
                f"(95% CI of the median {interval}; per seed "
                f"{', '.join(f'{r:.2f}' for r in ratios)}), "
                f"wall time {statistics.median(time_ratios):.2f}"
            )
        else:
            print("random search never reached the target: no ratio")


if __name__ == "__main__":
    main()
