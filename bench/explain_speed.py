"""Benchmark 4: SHAP and LIME explanation time per image for the MNIST-subset CNN.

Trains a CNN for a few epochs (time not counted), then explains N test images with each method.

    python bench/explain_speed.py [--images 20] [--background 64] [--shap-samples 200]
                                  [--lime-samples 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import lightning.pytorch as pl

from workbench.explain.images import lime_images, shap_images
from workbench.registry import build_data, build_model
from workbench.spec import TrainerSpec
from workbench.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--background", type=int, default=64)
    parser.add_argument("--shap-samples", type=int, default=200)
    parser.add_argument("--lime-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    pl.seed_everything(0, verbose=False)
    data = build_data("mnist_subset", seed=0, batch_size=64)
    model = build_model("cnn", **data.model_kwargs())
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, data, TrainerSpec(max_epochs=args.epochs, accelerator="cpu"), tmp)
    inputs = data.split("test")[0][: args.images]
    background = data.split("train")[0][: args.background]

    started = time.perf_counter()
    shap_images(model.net, inputs, background, nsamples=args.shap_samples)
    shap_s = time.perf_counter() - started
    started = time.perf_counter()
    lime_images(model.net, inputs, num_samples=args.lime_samples)
    lime_s = time.perf_counter() - started

    print(
        f"CNN test accuracy {result.test_metrics['test/acc']:.4f}; {args.images} images; "
        f"SHAP background {args.background}, nsamples {args.shap_samples}; "
        f"LIME {args.lime_samples} samples, 4x4 patches"
    )
    print(f"{'method':8s} {'total s':>8s} {'s / image':>10s}")
    print(f"{'SHAP':8s} {shap_s:8.2f} {shap_s / args.images:10.3f}")
    print(f"{'LIME':8s} {lime_s:8.2f} {lime_s / args.images:10.3f}")
    print(f"both: {shap_s + lime_s:.1f} s for {args.images} images")


if __name__ == "__main__":
    main()
