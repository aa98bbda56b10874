"""Privacy against utility: test accuracy of DP-SGD models at several target ε, and without DP.

    python bench/privacy_utility.py [--models mlp cnn] [--epsilons 1 3 8] [--seeds 3]
                                    [--out docs/figures]

Models: the breast-cancer MLP (experiments/breast_cancer_mlp_dp.yaml) and the MNIST CNN
(experiments/mnist_cnn_dp.yaml), each at its spec's hyperparameters, δ = 1e-5, clipping norm
1, and the same network trained without DP. Every run keeps the spec's split (a seed changes the
initialisation, the batches and the noise) and its best validation checkpoint. Prints test
accuracy as the mean with its 95 % interval over seeds, the spent ε, the noise multiplier and
the steps; writes privacy_utility.png and privacy_utility.csv. The ε is one training run's;
choosing hyperparameters on the same data is not accounted.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

from workbench.spec import load_spec
from workbench.stats import mean_interval

SPECS = {
    "mlp": "experiments/breast_cancer_mlp_dp.yaml",
    "cnn": "experiments/mnist_cnn_dp.yaml",
}
HPARAMS = {"mlp": {"hidden": 32, "depth": 1}, "cnn": {}}  # the rest is each spec's


def train_one(model_name: str, epsilon: float | None, seed: int, folder: Path) -> dict:
    """One run: the spec at target ``epsilon`` (None: without DP) and ``seed``; its scores."""
    import lightning.pytorch as pl

    from workbench.robustness import training_callbacks
    from workbench.train import data_from_spec, fit, module_from_spec

    base = load_spec(SPECS[model_name])
    private = [f"privacy.epsilon={epsilon}"] if epsilon is not None else []
    spec = load_spec(
        SPECS[model_name],
        [
            *(private or ["privacy.epsilon=null", "privacy.delta=null"]),
            f"seed={seed}",
            f"data.split_seed={base.split_seed()}",
            "trainer.progress_bar=false",
        ],
    )
    data = data_from_spec(spec)
    data.setup()
    pl.seed_everything(seed, verbose=False)
    model = module_from_spec(spec, data, **HPARAMS[model_name])
    callbacks = training_callbacks(spec, data)
    started = time.perf_counter()
    mode = "max" if spec.study.direction == "maximize" else "min"
    result = fit(model, data, spec.trainer, folder, spec.study.metric, mode, callbacks)
    report = callbacks[0].report if callbacks else None
    return {
        "model": model_name,
        "target_epsilon": epsilon,
        "seed": seed,
        "test_acc": result.test_metrics["test/acc"],
        "spent_epsilon": report.epsilon if report else float("inf"),
        "noise_multiplier": report.noise_multiplier if report else 0.0,
        "sample_rate": report.sample_rate if report else float("nan"),
        "steps": report.steps if report else None,
        "epochs": result.epochs,
        "train_rows": len(data.split("train")[1]),
        "fit_s": time.perf_counter() - started,
    }


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per model and target ε: test accuracy mean ± 95 % half-width, spent ε (max), σ, steps."""
    out = []
    for (model, target), group in rows.groupby(["model", "target_label"], sort=False):
        mean, half = mean_interval(group["test_acc"].tolist())
        out.append(
            {
                "model": model,
                "target ε": target,
                "test acc": mean,
                "± 95 %": half,
                "spent ε (max)": group["spent_epsilon"].max(),
                "σ": group["noise_multiplier"].mean(),
                "steps (mean)": group["steps"].mean(),
                "epochs (mean)": group["epochs"].mean(),
                "n": len(group),
            }
        )
    return pd.DataFrame(out)


def plot(summary: pd.DataFrame, axes=None):
    """Test accuracy against target ε (log axis), one panel per model, with the 95 % interval;
    the same network trained without DP as a horizontal line and band."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(summary["model"]))
    if axes is None:
        figure, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.8))
    figure = axes[0].figure if hasattr(axes, "__len__") else axes.figure
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    titles = {"mlp": "breast-cancer MLP", "cnn": "MNIST CNN (4,000 training images)"}
    for ax, model in zip(axes, models, strict=True):
        rows = summary[summary["model"] == model]
        private = rows[rows["target ε"] != "none"]
        x = private["target ε"].astype(float)
        ax.errorbar(x, private["test acc"], yerr=private["± 95 %"], marker="o", capsize=3,
                    label="DP-SGD (δ = 1e-5)")  # fmt: skip
        baseline = rows[rows["target ε"] == "none"]
        if len(baseline):
            mean, half = float(baseline["test acc"].iloc[0]), float(baseline["± 95 %"].iloc[0])
            ax.axhline(mean, color="grey", linestyle="--", label="without DP")
            ax.axhspan(mean - half, mean + half, color="grey", alpha=0.15)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(x), [f"{v:g}" for v in x])
        ax.set_xlabel("target ε (spent ε ≤ target)")
        ax.set_ylabel("test accuracy")
        ax.set_title(titles.get(model, model))
        ax.legend(loc="lower right")
    figure.tight_layout()
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 3.0, 8.0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="docs/figures")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as checkpoints:
        for model_name in args.models:
            seed0 = load_spec(SPECS[model_name]).seed
            for epsilon in [None, *args.epsilons]:
                for offset in range(args.seeds):
                    folder = Path(checkpoints) / f"{model_name}-{epsilon}-{offset}"
                    row = train_one(model_name, epsilon, seed0 + offset, folder)
                    rows.append(row)
                    print(
                        f"{model_name} ε={epsilon or 'none'} seed {row['seed']}: test acc "
                        f"{row['test_acc']:.4f}, spent ε {row['spent_epsilon']:.3f}, "
                        f"σ {row['noise_multiplier']:.3f}, {row['steps']} steps, "
                        f"{row['epochs']} epochs, {row['fit_s']:.0f} s",
                        flush=True,
                    )
    table = pd.DataFrame(rows)
    table["target_label"] = table["target_epsilon"].map(lambda e: "none" if pd.isna(e) else e)
    table.drop(columns="target_label").to_csv(out / "privacy_utility.csv", index=False)
    summary = summarise(table)
    plot(summary).savefig(out / "privacy_utility.png", dpi=100)
    print(f"\n# privacy against utility, δ = 1e-5, clipping norm 1, {args.seeds} seeds")
    print(f"machine: {platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}, "
          f"{(time.time() - started) / 60:.1f} min")  # fmt: skip
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"figure: {out / 'privacy_utility.png'}, rows: {out / 'privacy_utility.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
