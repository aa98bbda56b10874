"""How many labels does pretraining save? The same classifier trained from scratch and from a
pretrained backbone (frozen with a linear head, and fully fine-tuned), at several numbers of
labels per class, over several seeds: test accuracy as a mean with its 95 % interval.

The spec is a ``model.name: transfer`` spec with a ``backbone.source``. Every run keeps the
spec's split (``data.split_seed``), so all seeds and arms are scored on the same test images and
none of them was a training image of the backbone; a seed changes the labelled subset, the
initialisation and the batch order. A run with N labels per class also validates on N per class
(``data.labels_per_class`` caps both), so its label budget is 2N per class, and it gets at least
``min_steps`` optimiser steps (``max_epochs`` and ``patience`` grow in proportion when the labelled
set is small). Nothing is chosen on test data: each run keeps its best validation checkpoint.
The arms differ only in the backbone's weights and what trains: ``scratch`` trains the whole
network at one learning rate, ``frozen`` only a linear head, ``finetuned`` everything with the
backbone at ``lr × backbone.lr_factor``. Runs go to MLflow as child runs of one parent run that
holds the table (CSV) and the figure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench import tracking
from workbench.spec import ExperimentSpec, SpecError, apply_override, load_spec
from workbench.stats import mean_interval

# Each arm: the fields it sets. ``scratch`` is the same network from random weights, trained as
# a whole at one rate; ``frozen`` is a linear probe.
ARMS: dict[str, dict[str, Any]] = {
    "scratch": {
        "backbone.pretrained": False, "backbone.freeze": "none", "backbone.lr_factor": 1.0,
        "backbone.unfreeze_every": 0,
    },
    "frozen": {
        "backbone.pretrained": True, "backbone.freeze": "all", "backbone.unfreeze_every": 0,
        "model.params.head_hidden": 0,
    },
    "finetuned": {"backbone.pretrained": True, "backbone.freeze": "none"},
}  # fmt: skip
ROLE_NAME = "label-efficiency"
MIN_STEPS = 1000  # optimiser steps every run gets at least, by default


@dataclass
class LabelEfficiency:
    """Every run's scores (``rows``), their summary per arm and label count, the figure and
    the MLflow parent run that holds them."""

    rows: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    figure: Any
    run_id: str

    def table(self) -> str:
        """The summary as fixed-width text: arm, labels per class, mean ± half-width, n."""
        lines = [f"{'arm':10s} {'labels/class':>12s} {'test acc (95% CI)':>22s} {'n':>3s}"]
        for row in self.summary:
            ci = f"{row['mean']:.3f} ± {row['half_width']:.3f}"
            labels = "all" if row["labels"] is None else str(row["labels"])
            lines.append(f"{row['arm']:10s} {labels:>12s} {ci:>22s} {row['n']:3d}")
        return "\n".join(lines)


def variant(spec: ExperimentSpec, arm: str, labels: int | None, seed: int) -> ExperimentSpec:
    """``spec`` for one run: the arm's backbone fields, ``labels`` per class, ``seed``; the split
    stays the spec's."""
    raw = spec.to_dict()
    settings = {
        **ARMS[arm],
        "seed": seed,
        "data.split_seed": spec.split_seed(),
        "data.labels_per_class": labels,
        "name": f"{spec.name}-{arm}-{labels or 'all'}-s{seed}",
    }
    for key, value in settings.items():
        apply_override(raw, f"{key}={'null' if value is None else value}")
    return load_spec(raw)


def label_efficiency(
    spec: ExperimentSpec,
    labels: tuple[int | None, ...] = (10, 30, 100, None),
    seeds: int = 5,
    arms: tuple[str, ...] = tuple(ARMS),
    progress: bool = True,
    min_steps: int = MIN_STEPS,
) -> LabelEfficiency:
    """Train every (arm, labels per class, seed) and summarise test accuracy per arm and label
    count; ``None`` in ``labels`` means every training label. Each run takes at least
    ``min_steps`` optimiser steps (more epochs, and patience in proportion, for few labels)."""
    from tqdm.auto import tqdm

    from workbench.train import backbone_of

    if spec.backbone.source is None:
        raise SpecError("backbone.source: a label-efficiency run compares against a backbone")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ValueError(f"arms: unknown {unknown[0]!r}; valid: {', '.join(ARMS)}")
    runs = list(itertools.product(labels, arms, range(seeds)))
    for count, arm, seed in runs[:: len(arms) * seeds]:  # every label count, checked up front
        variant(spec, arm, count, spec.seed + seed)
    backbone = backbone_of(spec)  # resolved once: a missing study fails before any training
    store = tracking.open_store(
        spec.tracking.root, spec.tracking.experiment, spec.tracking.mlflow_uri
    )
    tags = {
        tracking.ROLE: ROLE_NAME, tracking.STUDY: spec.name,
        "workbench.base.source": spec.backbone.source,
    }  # fmt: skip
    rows: list[dict[str, Any]] = []
    # FINISHED, KILLED on Ctrl-C, FAILED otherwise: the run closes itself.
    with tracking.child_run(store, None, f"{ROLE_NAME}-{spec.name}", tags) as parent:
        bar = tqdm(runs, desc="label efficiency", unit="run", disable=not progress)
        for count, arm, offset in bar:
            one = variant(spec, arm, count, spec.seed + offset)
            bar.set_postfix_str(f"{arm} {count or 'all'}/class seed {one.seed}")
            rows.append(_train_one(store, parent, one, arm, count, backbone, min_steps))
        summary = summarise(rows)
        figure = plot(summary, rows, spec.name)
        tracking.log_figure(store, parent, figure, "label_efficiency.png")
        tracking.log_text(store, parent, _csv(rows), "label_efficiency.csv")
    return LabelEfficiency(rows, summary, figure, parent)


def _train_one(store, parent, spec, arm, count, backbone, min_steps: int) -> dict[str, Any]:
    import lightning.pytorch as pl

    from workbench.train import data_from_spec, fit, module_from_spec

    data = data_from_spec(spec)
    data.setup()
    train_size = len(data.split("train")[1])
    steps_per_epoch = math.ceil(train_size / spec.data.batch_size)
    epochs = max(spec.trainer.max_epochs, math.ceil(min_steps / steps_per_epoch))
    stretch = epochs / spec.trainer.max_epochs
    trainer = dataclasses.replace(
        spec.trainer, max_epochs=epochs, patience=math.ceil(spec.trainer.patience * stretch)
    )
    pl.seed_everything(spec.seed, verbose=False)
    model = module_from_spec(spec, data, backbone=backbone)
    tags = {tracking.ROLE: "label-efficiency-run", tracking.STUDY: spec.name, "arm": arm}
    with tracking.child_run(store, parent, spec.name, tags) as run_id:
        from workbench.tracking.lineage import log_base_model

        log_base_model(
            store, run_id, spec.backbone.source, backbone.run_id, backbone.model_uri,
            spec.backbone.pretrained,
        )  # fmt: skip
        tracking.log_params(
            store,
            run_id,
            {"arm": arm, "labels_per_class": count or "all", "seed": spec.seed,
             "train_size": train_size, "val_size": len(data.split("val")[1]),
             "test_size": len(data.split("test")[1]), "max_epochs": trainer.max_epochs,
             "patience": trainer.patience},
        )  # fmt: skip
        folder = store.root / "checkpoints" / "label-efficiency" / f"{spec.name}-{run_id}"
        mode = "max" if spec.study.direction == "maximize" else "min"
        result = fit(model, data, trainer, folder, monitor=spec.study.metric, mode=mode)
        tracking.log_metrics(store, run_id, {**result.test_metrics, "best_val": result.best_score})
    return {
        "arm": arm,
        "labels": count,
        "seed": spec.seed,
        "val": result.best_score,
        "test_acc": result.test_metrics["test/acc"],
        "epochs": result.epochs,
        "test_fingerprint": _digest(data.split("test")[0]),
        "run_id": run_id,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean test accuracy and its 95 % half-width per arm and label count."""
    out = []
    keys = sorted({(r["arm"], r["labels"]) for r in rows}, key=lambda k: (k[0], k[1] or 10**9))
    for arm, count in keys:
        values = [r["test_acc"] for r in rows if r["arm"] == arm and r["labels"] == count]
        mean, half = mean_interval(values)
        out.append({"arm": arm, "labels": count, "mean": mean, "half_width": half,
                    "n": len(values)})  # fmt: skip
    return out


def plot(summary: list[dict[str, Any]], rows: list[dict[str, Any]], title: str, axes=None):
    """Test accuracy against labels per class (log axis; "all" at the right): one line per arm
    with its 95 % interval, and each seed's run as a dot."""
    import matplotlib.pyplot as plt

    if axes is None:
        figure, axes = plt.subplots(figsize=(6.5, 4.2))
    else:
        figure = axes.figure
    counts = sorted({r["labels"] for r in rows if r["labels"] is not None})
    everything = (max(counts) * 3) if counts else 1
    position = {c: c for c in counts} | {None: everything}
    for arm in dict.fromkeys(r["arm"] for r in summary):
        mine = [r for r in summary if r["arm"] == arm]
        x = [position[r["labels"]] for r in mine]
        y = np.array([r["mean"] for r in mine])
        half = np.array([r["half_width"] for r in mine])
        (line,) = axes.plot(x, y, marker="o", label=arm)
        axes.fill_between(x, y - half, y + half, color=line.get_color(), alpha=0.2)
        dots = [r for r in rows if r["arm"] == arm]
        axes.scatter([position[r["labels"]] for r in dots], [r["test_acc"] for r in dots],
                     color=line.get_color(), s=8, alpha=0.5)  # fmt: skip
    axes.set_xscale("log")
    axes.set_xticks(list(position.values()), [str(c) for c in counts] + ["all"])
    axes.minorticks_off()
    axes.set_xlabel("labelled training examples per class")
    axes.set_ylabel("test accuracy (mean, 95 % CI)")
    axes.set_title(f"{title}: label efficiency")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def _digest(tensor) -> str:
    return hashlib.sha256(tensor.cpu().numpy().tobytes()).hexdigest()[:16]


def _csv(rows: list[dict[str, Any]]) -> str:
    header = ["arm", "labels", "seed", "val", "test_acc", "epochs", "test_fingerprint", "run_id"]
    lines = [",".join(header)]
    for r in rows:
        lines.append(",".join("all" if r[k] is None else str(r[k]) for k in header))
    return "\n".join(lines) + "\n"
