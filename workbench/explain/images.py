"""SHAP and LIME attributions for image classifiers, returned as one explanation type.

Both take the plain network and normalised input tensors; neither knows how the model was trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure


@dataclass
class ImageExplanation:
    """Per-pixel attributions for the class each image is explained for."""

    method: str
    pixels: np.ndarray
    """(N, H, W) inputs as [0, 1] pixels, for display."""
    attributions: np.ndarray
    """(N, H, W) contribution of each pixel to the explained class."""
    targets: np.ndarray
    """(N,) explained class: the model's prediction."""
    probabilities: np.ndarray
    """(N, C) the model's class probabilities."""
    labels: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def plot(self, axes: np.ndarray | None = None) -> Figure:
        """Input and attribution overlay (diverging: red for, blue against the class) per image."""
        n = len(self.pixels)
        if axes is None:
            figure = Figure(figsize=(2.2 * n, 4.6), layout="constrained")
            axes = figure.subplots(2, n, squeeze=False)
        figure = axes[0, 0].figure
        for i in range(n):
            truth = f" (true {self.labels[i]})" if self.labels is not None else ""
            axes[0, i].imshow(self.pixels[i], cmap="gray")
            axes[0, i].set_title(
                f"pred {self.targets[i]} p={self.probabilities[i, self.targets[i]]:.2f}{truth}",
                fontsize=8,
            )
            limit = float(np.abs(self.attributions[i]).max()) or 1.0
            axes[1, i].imshow(self.pixels[i], cmap="gray", alpha=0.35)
            image = axes[1, i].imshow(
                self.attributions[i], cmap="bwr", vmin=-limit, vmax=limit, alpha=0.8
            )
            axes[1, i].set_title(self.method, fontsize=8)
            for ax in axes[:, i]:
                ax.set_xticks([])
                ax.set_yticks([])
        figure.colorbar(image, ax=list(axes[1]), shrink=0.8, label="attribution")
        return figure


@torch.no_grad()
def predict_proba(
    network: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 512
) -> np.ndarray:
    """Softmax probabilities in batches (LIME sends thousands of perturbed images at once)."""
    network.eval()
    device = next(network.parameters()).device
    chunks = [
        torch.softmax(network(inputs[i : i + batch_size].to(device)), dim=1).cpu()
        for i in range(0, len(inputs), batch_size)
    ]
    return torch.cat(chunks).numpy()


def shap_images(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    background: torch.Tensor,
    pixels: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    nsamples: int = 200,
    seed: int = 0,
) -> ImageExplanation:
    """SHAP GradientExplainer (expected gradients) for each image's predicted class."""
    import shap

    network = network.eval().cpu()
    explainer = shap.GradientExplainer(network, background.cpu())
    values, ranked = explainer.shap_values(
        inputs.cpu(), nsamples=nsamples, ranked_outputs=1, rseed=seed
    )
    attributions = np.asarray(values)[..., 0].sum(axis=1)  # (N, C, H, W, 1) → (N, H, W)
    return ImageExplanation(
        method="SHAP (GradientExplainer)",
        pixels=_pixels(inputs, pixels),
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
) -> ImageExplanation:
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
    return ImageExplanation(
        method="LIME",
        pixels=_pixels(inputs, pixels),
        attributions=attributions,
        targets=targets,
        probabilities=probabilities,
        labels=labels,
        settings={"num_samples": num_samples, "patch": patch, "seed": seed},
    )


def side_by_side(*explanations: ImageExplanation) -> Figure:
    """One column per image: the input, then one attribution row per method."""
    n = len(explanations[0].pixels)
    figure = Figure(figsize=(2.2 * n, 2.2 * (len(explanations) + 1)), layout="constrained")
    axes = figure.subplots(len(explanations) + 1, n, squeeze=False)
    first = explanations[0]
    for i in range(n):
        axes[0, i].imshow(first.pixels[i], cmap="gray")
        axes[0, i].set_title(f"pred {first.targets[i]}", fontsize=8)
        for row, explanation in enumerate(explanations, start=1):
            limit = float(np.abs(explanation.attributions[i]).max()) or 1.0
            axes[row, i].imshow(explanation.attributions[i], cmap="bwr", vmin=-limit, vmax=limit)
            axes[row, i].set_title(explanation.method.split(" ")[0], fontsize=8)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    return figure


def _pixels(inputs: torch.Tensor, pixels: np.ndarray | None) -> np.ndarray:
    if pixels is not None:
        return np.asarray(pixels)
    array = inputs.detach().cpu().numpy()[:, 0]
    low = array.min(axis=(1, 2), keepdims=True)
    high = array.max(axis=(1, 2), keepdims=True)
    return (array - low) / np.maximum(high - low, 1e-8)
