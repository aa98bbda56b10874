"""Benchmark 4: SHAP and LIME explanation time for the MNIST-subset CNN, and the trust metrics.

Trains a CNN for a few epochs (time not counted), then explains N test images with each method
through ``explain_model`` (target: both methods on 20 images in at most 60 s on 2 CPU cores), and
prints the faithfulness, agreement and sanity figures, whose computation is timed separately.

    python bench/explain_speed.py [--images 20] [--background 64] [--shap-samples 200]
                                  [--lime-samples 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import lightning.pytorch as pl

from workbench.explain import explain_model
from workbench.registry import create_data, create_model
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
    data = create_data("mnist_subset", seed=0, batch_size=64)
    model = create_model("cnn", **data.model_kwargs())
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, data, TrainerSpec(max_epochs=args.epochs, accelerator="cpu"), tmp)
    settings = dict(
        n=args.images, background=args.background, shap_samples=args.shap_samples,
        lime_samples=args.lime_samples,
    )  # fmt: skip
    started = time.perf_counter()
    report = explain_model(model, data, trust=False, **settings)
    explain_s = time.perf_counter() - started
    started = time.perf_counter()
    trusted = explain_model(model, data, trust=True, **settings)
    trust_s = (
        time.perf_counter()
        - started
        - sum(v for k, v in trusted.trust.items() if k.startswith("seconds/"))
    )
    shap_s, lime_s = report.trust["seconds/shap"], report.trust["seconds/lime"]

    print(
        f"CNN test accuracy {result.test_metrics['test/acc']:.4f}; {args.images} images; "
        f"SHAP GradientExplainer, background {args.background}, nsamples {args.shap_samples}; "
        f"LIME {args.lime_samples} samples, 4x4 patches"
    )
    print(f"{'method':8s} {'total s':>8s} {'s / image':>10s}")
    print(f"{'SHAP':8s} {shap_s:8.2f} {shap_s / args.images:10.3f}")
    print(f"{'LIME':8s} {lime_s:8.2f} {lime_s / args.images:10.3f}")
    print(f"both: {explain_s:.1f} s for {args.images} images (target <= 60 s)")
    print(f"trust metrics on top: {trust_s:.1f} s")
    for name, value in trusted.trust.items():
        if not name.startswith("seconds/"):
            print(f"  {name:28s} {value:8.4f}")


if __name__ == "__main__":
    main()
