"""Adversarially trained CNN against the same CNN trained normally, over 3 seeds.

    python bench/robustness.py [--root mlruns] [--spec experiments/mnist_cnn_robust.yaml]

Runs (or resumes) two studies of one fixed configuration: the spec as it is (adversarial
training) and the same spec with ``robustness.train=none`` (study ``<name>_baseline``); each
trains its configuration, then again with 3 fresh seeds (``study.confirm``), and attacks every run
after training (``robustness.evaluate``: FGSM and PGD-20 at each ε on the 500 test images). Prints
clean and robust test accuracy as mean ± 95 % t-interval over the 3 confirmation seeds, and draws
both models' accuracy-against-ε curves (``docs/figures/robustness_curves.png``). Exits 1 unless
the adversarially trained CNN keeps ≥ 85 % under PGD-20 at ε = 0.1 with a clean accuracy within 3
points of the baseline's (issue 22).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from workbench import load_spec, run_study
from workbench.stats import mean_interval


def confirmed_metrics(result) -> dict[str, list[float]]:
    """Every ``robust/*`` and ``test/acc`` metric of the study's confirmation runs, by key."""
    import optuna
    from mlflow.tracking import MlflowClient

    from workbench.study.confirm import study_name

    client = MlflowClient(result.tracking_uri)
    confirmations = optuna.load_study(
        study_name=study_name(result.study_name), storage=result.storage_url
    )
    values: dict[str, list[float]] = {}
    for trial in confirmations.trials:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if trial.state.name != "COMPLETE" or run_id is None:
            continue
        for key, value in client.get_run(run_id).data.metrics.items():
            if key.startswith("robust/") or key == "test/acc":
                values.setdefault(key, []).append(value)
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="mlruns")
    parser.add_argument("--spec", default="experiments/mnist_cnn_robust.yaml")
    parser.add_argument("--out", default="docs/figures/robustness_curves.png")
    args = parser.parse_args(argv)
    started = time.time()
    robust_spec = load_spec(args.spec, [f"tracking.root={args.root}"])
    baseline_spec = load_spec(
        args.spec,
        [
            f"tracking.root={args.root}",
            "robustness.train=none",
            f"name={robust_spec.name}_baseline",
        ],
    )
    results = {}
    for label, spec in (("adversarially trained", robust_spec), ("standard", baseline_spec)):
        results[label] = confirmed_metrics(run_study(spec, trials=1))
    epsilons = robust_spec.robustness.epsilons

    print(f"\n# robustness of {robust_spec.name} ({robust_spec.robustness.train}, training ε = "
          f"{robust_spec.robustness.epsilon:g}, mix {robust_spec.robustness.mix:g}) against "
          f"{baseline_spec.name}")  # fmt: skip
    print(f"machine: {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}; "
          f"{(time.time() - started) / 60:.1f} min")  # fmt: skip
    header = ["model", "seeds", "clean"] + [f"PGD ε={e:g}" for e in epsilons]
    header += [f"FGSM ε={e:g}" for e in epsilons]
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    summary = {}
    for label, values in results.items():
        cells, row = [], {}
        for key in [
            "robust/clean_acc",
            *[f"robust/pgd_acc_eps_{e:g}" for e in epsilons],
            *[f"robust/fgsm_acc_eps_{e:g}" for e in epsilons],
        ]:
            mean, half = mean_interval(values.get(key, [float("nan")]))
            low, high = mean - half, mean + half
            row[key] = (mean, low, high)
            cells.append(f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        seeds = len(values.get("robust/clean_acc", []))
        print(f"| {label} | {seeds} | " + " | ".join(cells) + " |")
        summary[label] = row

    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    for label, row in summary.items():
        for attack, style in (("pgd", "-o"), ("fgsm", "--s")):
            keys = ["robust/clean_acc", *[f"robust/{attack}_acc_eps_{e:g}" for e in epsilons]]
            mean = np.array([row[k][0] for k in keys])
            low, high = np.array([row[k][1] for k in keys]), np.array([row[k][2] for k in keys])
            xs = [0.0, *epsilons]
            ax.plot(xs, mean, style, ms=3, label=f"{label}, {attack.upper()}")
            ax.fill_between(xs, low, high, alpha=0.15)
    ax.set_xlabel("ε (L∞, [0, 1] pixels)")
    ax.set_ylabel("test accuracy (500 images)")
    ax.set_title("MNIST subset CNN under attack (mean and 95 % CI, 3 seeds)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    print(f"figure: {args.out}")

    robust = summary["adversarially trained"]
    standard = summary["standard"]
    pgd = robust["robust/pgd_acc_eps_0.1"][0] if "robust/pgd_acc_eps_0.1" in robust else np.nan
    gap = standard["robust/clean_acc"][0] - robust["robust/clean_acc"][0]
    ok = pgd >= 0.85 and gap <= 0.03
    print(f"targets: PGD-20 at ε = 0.1 {pgd:.3f} (≥ 0.85), clean gap {gap:+.3f} (≤ 0.03): "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
