"""SHAP and LIME attributions for image classifiers, returned as one explanation type.

Both take the plain network and normalised input tensors; neither knows how the model was trained.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.explain.core import Explanation, predict_proba, side_by_side

ImageExplanation = Explanation  # the name earlier versions used
__all__ = ["ImageExplanation", "grid_segments", "lime_images", "shap_images", "side_by_side"]


def shap_images(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    background: torch.Tensor,
    pixels: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    nsamples: int = 200,
    seed: int = 0,
) -> Explanation:
    """SHAP GradientExplainer (expected gradients) for each image's predicted class."""
    import shap

    network = network.eval().cpu()
    explainer = shap.GradientExplainer(network, background.cpu())
    values, ranked = explainer.shap_values(
        inputs.cpu(), nsamples=nsamples, ranked_outputs=1, rseed=seed
    )
    attributions = np.asarray(values)[..., 0].sum(axis=1)  # (N, C, H, W, 1) → (N, H, W)
    return Explanation(
        method="SHAP (GradientExplainer)",
        kind="image",
        display=_pixels(inputs, pixels),
        attributions=attributions,
        targets=np.asarray(ranked)[:, 0].astype(int),
        probabilities=predict_proba(network, inputs),
        labels=labels,
        settings={"background": len(background), "nsamples": nsamples, "seed": seed},
    )


def grid_segments(height: int, width: int, patch: int) -> np.ndarray:
    """Square patches as LIME segments: superpixel algorithms find little in a 28×28 digit."""
    rows = np.arange(height)[:, None] // patch
    cols = np.arange(width)[None, :] // patch
    return rows * ((width + patch - 1) // patch) + cols


def lime_images(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    pixels: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    num_samples: int = 1000,
    patch: int = 4,
    seed: int = 0,
    batch_size: int = 512,
) -> Explanation:
    """LIME with square-patch segments; hidden patches take the background (blank) value."""
    from lime import lime_image

    network = network.eval().cpu()
    gray = inputs.cpu().numpy()[:, 0]  # (N, H, W) normalised
    segments = grid_segments(gray.shape[1], gray.shape[2], patch)
    blank = float(gray.min())  # normalised value of an empty (0) pixel

    def classify(rgb: np.ndarray) -> np.ndarray:
        # LIME works on RGB arrays; the network sees one channel.
        return predict_proba(
            network, torch.from_numpy(rgb[..., :1].transpose(0, 3, 1, 2).copy()).float(), batch_size
        )

    probabilities = predict_proba(network, inputs)
    targets = probabilities.argmax(axis=1)
    attributions = np.zeros_like(gray)
    # LIME 0.2.0.1 draws a tqdm bar over its samples for every image and has no switch for it;
    # one call takes milliseconds, so the bars are only noise in a notebook.
    bar, lime_image.tqdm = lime_image.tqdm, lambda iterable, *_, **__: iterable
    try:
        for i, image in enumerate(gray):
            explainer = lime_image.LimeImageExplainer(random_state=seed)
            explanation = explainer.explain_instance(
                np.repeat(image[..., None], 3, axis=2).astype(np.float64),
                classify,
                labels=(int(targets[i]),),
                top_labels=None,
                hide_color=blank,
                num_samples=num_samples,
                batch_size=num_samples,  # one forward pass; predict_proba batches it
                segmentation_fn=lambda _image: segments,
                random_seed=seed,
            )
            weights = dict(explanation.local_exp[int(targets[i])])
            per_segment = np.array([weights.get(s, 0.0) for s in range(segments.max() + 1)])
            attributions[i] = per_segment[segments]
    finally:
        lime_image.tqdm = bar
    return Explanation(
        method="LIME",
        kind="image",
        display=_pixels(inputs, pixels),
        attributions=attributions,
        targets=targets,
        probabilities=probabilities,
        labels=labels,
        settings={"num_samples": num_samples, "patch": patch, "seed": seed},
    )


def _pixels(inputs: torch.Tensor, pixels: np.ndarray | None) -> np.ndarray:
    if pixels is not None:
        return np.asarray(pixels)
    array = inputs.detach().cpu().numpy()[:, 0]
    low = array.min(axis=(1, 2), keepdims=True)
    high = array.max(axis=(1, 2), keepdims=True)
    return (array - low) / np.maximum(high - low, 1e-8)
