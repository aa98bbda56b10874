"""Pretrained MiniLM-L6 fine-tuned vs a GRU trained from scratch, on one test split of the
chatterbot-corpus topics (issue 20): test accuracy and macro F1, mean over seeds with 95 %
t-intervals, a table and ``docs/figures/text_transfer.png``.

    .venv/bin/python bench/text_transfer.py [--seeds 0 1 2] [--set trainer.max_epochs=3 ...]

Each model is built as its spec says (``experiments/text_minilm.yaml``,
``experiments/text_scratch.yaml``: the spec's fixed params, no search) and trained by
``workbench.train.fit`` (early stopping on val/acc, the best checkpoint tested). The split is
the specs' (``data.split_seed`` fixed to their seed); a run's seed sets the initialisation (the
head; all of the GRU), dropout and the order of the batches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from scipy import stats

from workbench.spec import load_spec
from workbench.train import data_from_spec, fit, module_from_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = {
    "MiniLM-L6, pretrained, fine-tuned": ROOT / "experiments/text_minilm.yaml",
    "GRU from scratch": ROOT / "experiments/text_scratch.yaml",
}
FIGURE = ROOT / "docs/figures/text_transfer.png"


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two ends of its ``level`` t-interval."""
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if len(array) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(array) - 1) * stats.sem(array))
    return mean, mean - half, mean + half


def run(label: str, spec_path: Path, seeds: list[int], overrides: list[str]) -> list[dict]:
    """Train and test the spec's model once per seed on the spec's split."""
    split_seed = load_spec(spec_path, overrides).seed
    rows = []
    for seed in seeds:
        spec = load_spec(spec_path, [*overrides, f"seed={seed}", f"data.split_seed={split_seed}"])
        data = data_from_spec(spec)
        pl.seed_everything(seed, verbose=False)
        model = module_from_spec(spec, data)
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            result = fit(model, data, spec.trainer, folder, spec.study.metric, "max")
        rows.append(
            {
                "model": label,
                "seed": seed,
                "acc": result.test_metrics["test/acc"],
                "f1": result.test_metrics["test/f1"],
                "epochs": result.epochs,
                "fit_s": time.perf_counter() - started,
            }
        )
        print(
            f"{label:36s} seed {seed}: test acc {rows[-1]['acc']:.3f}, macro F1 "
            f"{rows[-1]['f1']:.3f}, {result.epochs} epochs, {rows[-1]['fit_s']:.0f} s",
            flush=True,
        )
    return rows


def majority_accuracy(spec_path: Path, overrides: list[str]) -> float:
    data = data_from_spec(load_spec(spec_path, overrides))
    train, test = data.split("train")[1], data.split("test")[1]
    return float((test == torch.bincount(train).argmax()).float().mean())


def draw(rows: list[dict], majority: float, path: Path) -> None:
    """Test accuracy per seed (dots) and the mean with its 95 % interval (bar), per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["model"] for r in rows))
    figure, ax = plt.subplots(figsize=(6.4, 3.2))
    for y, label in enumerate(labels):
        values = [r["acc"] for r in rows if r["model"] == label]
        mean, low, high = t_interval(values)
        ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", capsize=6, color="C0")
        ax.scatter(values, [y + 0.12] * len(values), color="C1", s=14, zorder=3)
    ax.axvline(majority, color="grey", linestyle=":", label=f"majority class ({majority:.3f})")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel("test accuracy (mean, 95 % t-interval; dots: seeds)")
    ax.set_title("chatterbot-corpus topics, one test split")
    ax.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--figure", type=Path, default=FIGURE)
    args = parser.parse_args()
    overrides = ["trainer.progress_bar=false", *args.overrides]
    rows = [r for label, path in SPECS.items() for r in run(label, path, args.seeds, overrides)]
    majority = majority_accuracy(next(iter(SPECS.values())), overrides)
    print(f"\nseeds {args.seeds}; majority class: test accuracy {majority:.3f}")
    print("| model | test accuracy, mean [95 % CI] | macro F1, mean [95 % CI] | epochs | fit s |")
    print("| --- | --- | --- | --- | --- |")
    for label in SPECS:
        mine = [r for r in rows if r["model"] == label]
        acc, f1 = t_interval([r["acc"] for r in mine]), t_interval([r["f1"] for r in mine])
        print(
            f"| {label} | {acc[0]:.3f} [{acc[1]:.3f}, {acc[2]:.3f}] | "
            f"{f1[0]:.3f} [{f1[1]:.3f}, {f1[2]:.3f}] | "
            f"{np.mean([r['epochs'] for r in mine]):.1f} | "
            f"{np.mean([r['fit_s'] for r in mine]):.0f} |"
        )
    draw(rows, majority, args.figure)
    print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
