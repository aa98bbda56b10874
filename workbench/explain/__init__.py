"""Explanations of trained models: SHAP and LIME attributions, plotted and logged.

``explain_best`` is the study's first-cut explanation of its best model (image classifiers).
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.explain.images import ImageExplanation, lime_images, shap_images, side_by_side

__all__ = ["ImageExplanation", "explain_images", "explain_best", "lime_images", "shap_images"]


def explain_images(
    network: torch.nn.Module,
    data,
    n_images: int = 4,
    background: int = 64,
    shap_samples: int = 200,
    lime_samples: int = 1000,
    seed: int = 0,
):
    """SHAP and LIME for the first ``n_images`` test images; background from the training split."""
    test_x, test_y = data.split("test")
    train_x, _ = data.split("train")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(train_x), generator=generator)[:background]
    inputs, labels = test_x[:n_images], test_y[:n_images].numpy()
    pixels = data.to_pixels(inputs)[:, 0].numpy()
    shap_exp = shap_images(network, inputs, train_x[chosen], pixels, labels, shap_samples, seed)
    lime_exp = lime_images(network, inputs, pixels, labels, lime_samples, seed=seed)
    return shap_exp, lime_exp


def explain_best(spec, best_trial, store, data) -> tuple[ImageExplanation, ImageExplanation]:
    """Explain a study's best model and log the plots and arrays to its MLflow run."""
    from workbench import tracking
    from workbench.train import load_module

    module = load_module(best_trial.user_attrs["checkpoint"], spec.model.name)
    settings = spec.explain
    shap_exp, lime_exp = explain_images(
        module.net,
        data,
        settings.n_images,
        settings.background,
        settings.shap_samples,
        settings.lime_samples,
        spec.seed,
    )
    run_id = best_trial.user_attrs["mlflow_run_id"]
    tracking.log_figure(store, run_id, shap_exp.plot(), "explain/shap.png")
    tracking.log_figure(store, run_id, lime_exp.plot(), "explain/lime.png")
    tracking.log_figure(store, run_id, side_by_side(shap_exp, lime_exp), "explain/shap_vs_lime.png")
    tracking.log_arrays(
        store,
        run_id,
        "explain/attributions.npz",
        shap=shap_exp.attributions,
        lime=lime_exp.attributions,
        pixels=shap_exp.pixels,
        targets=shap_exp.targets,
        labels=np.asarray(shap_exp.labels),
    )
    tracking.log_json(
        store,
        run_id,
        {"shap": shap_exp.settings, "lime": lime_exp.settings},
        "explain/settings.json",
    )
    return shap_exp, lime_exp
