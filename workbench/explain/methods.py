"""SHAP and LIME for any classifier the workbench trains: images, table rows and sequences.

Every function takes the plain network, model inputs (normalised tensors) and the classes to
explain, and returns raw attributions shaped like the inputs (SHAP) or per unit (LIME). The
table in ``explainers.py`` is how the report reaches them.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.explain.core import predict_proba

SHAP_METHODS = ("gradient", "deep", "kernel")


class _ClassLogit(torch.nn.Module):
    """The logit of one class as a (N, 1) output: SHAP explains exactly the class asked for."""

    def __init__(self, network: torch.nn.Module, target: int) -> None:
        super().__init__()
        self.network, self.target = network, target

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs)[:, self.target : self.target + 1]


def shap_values(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    background: torch.Tensor,
    targets: np.ndarray,
    method: str = "gradient",
    nsamples: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """SHAP values of each input for its target class, shaped like ``inputs``.

    ``gradient``: expected gradients (GradientExplainer), any differentiable network.
    ``deep``: DeepLIFT-style rescaling (DeepExplainer), feed-forward networks of standard layers.
    ``kernel``: KernelExplainer on the class probability, model-agnostic and slow; the background
    is summarised by up to 50 of its rows.
    """
    import shap

    if method not in SHAP_METHODS:
        raise ValueError(f"shap method: must be one of {', '.join(SHAP_METHODS)}; got {method!r}")
    network = network.eval().cpu()
    inputs, background = inputs.cpu(), background.cpu()
    values = np.zeros(inputs.shape, dtype=np.float32)
    shape = tuple(inputs.shape[1:])
    for target in np.unique(targets):  # one explainer per explained class
        rows = np.flatnonzero(targets == target)
        chosen = inputs[rows]
        if method == "kernel":

            def probability(flat: np.ndarray, target=int(target)) -> np.ndarray:
                batch = torch.from_numpy(flat.astype(np.float32)).reshape(-1, *shape)
                return predict_proba(network, batch)[:, target]

            summary = background.flatten(1).numpy()[:50]
            explainer = shap.KernelExplainer(probability, summary, seed=seed)
            found = explainer.shap_values(chosen.flatten(1).numpy(), nsamples=nsamples, silent=True)
            values[rows] = np.asarray(found).reshape(len(rows), *shape)
            continue
        model = _ClassLogit(network, int(target))
        if method == "gradient":
            explainer = shap.GradientExplainer(model, background)
            found = explainer.shap_values(chosen, nsamples=nsamples, rseed=seed)
        else:
            explainer = shap.DeepExplainer(model, background)
            found = explainer.shap_values(chosen, check_additivity=False)
        values[rows] = np.asarray(found).reshape(chosen.shape)  # drop the 1-output axis
    return values


def grid_segments(height: int, width: int, patch: int) -> np.ndarray:
    """Square patches as LIME segments: superpixel algorithms find little in a 28×28 digit."""
    rows = np.arange(height)[:, None] // patch
    cols = np.arange(width)[None, :] // patch
    return rows * ((width + patch - 1) // patch) + cols


def lime_image_patches(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    targets: np.ndarray,
    num_samples: int = 1000,
    patch: int = 4,
    seed: int = 0,
    batch_size: int = 512,
) -> np.ndarray:
    """LIME for one-channel images: (N, H, W) weights of square patches for the target class;
    a hidden patch takes the blank (darkest) value of the inputs."""
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
    return attributions


def lime_tabular(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    train_inputs: torch.Tensor,
    targets: np.ndarray,
    feature_names: list[str] | None = None,
    class_names: list[str] | None = None,
    num_samples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """LIME for table rows: (N, F) weights of each feature for the target class.

    Features are discretised into quartiles of the training split, as LIME does by default;
    LIME's perturbed rows go through the network in a few large batches.
    """
    from lime.lime_tabular import LimeTabularExplainer

    network = network.eval().cpu()
    explainer = LimeTabularExplainer(
        train_inputs.cpu().numpy(),
        mode="classification",
        feature_names=feature_names,
        class_names=class_names,
        discretize_continuous=True,
        discretizer="quartile",
        random_state=seed,
    )

    def classify(rows: np.ndarray) -> np.ndarray:
        return predict_proba(network, torch.from_numpy(rows.astype(np.float32)))

    weights = np.zeros(tuple(inputs.shape), dtype=np.float32)
    for i, row in enumerate(inputs.cpu().numpy()):
        explanation = explainer.explain_instance(
            row,
            classify,
            labels=(int(targets[i]),),
            num_features=row.shape[0],
            num_samples=num_samples,
        )
        for feature, weight in explanation.local_exp[int(targets[i])]:
            weights[i, feature] = weight
    return weights


def lime_sequence(
    network: torch.nn.Module,
    inputs: torch.Tensor,
    baseline: torch.Tensor,
    targets: np.ndarray,
    num_samples: int = 1000,
    seed: int = 0,
    kernel_width: float = 0.25,
) -> np.ndarray:
    """LIME over time steps: (N, T) weights; a hidden step takes the training mean at that step.

    Binary masks over the T steps are the interpretable representation (as superpixels are for
    images); the first sample keeps every step; distances are cosine distances to it, weighted by
    an exponential kernel, and a ridge regression (LIME's own ``LimeBase``) fits the weights.
    """
    from lime.lime_base import LimeBase
    from sklearn.metrics import pairwise_distances

    network = network.eval().cpu()
    steps = inputs.shape[1]
    base = LimeBase(lambda d: np.sqrt(np.exp(-(d**2) / kernel_width**2)), random_state=seed)
    generator = np.random.default_rng(seed)
    weights = np.zeros((len(inputs), steps), dtype=np.float32)
    for i, sequence in enumerate(inputs.cpu()):
        masks = generator.integers(0, 2, (num_samples, steps)).astype(np.float32)
        masks[0] = 1.0
        keep = torch.from_numpy(masks)[:, :, None]
        perturbed = sequence[None] * keep + baseline[None] * (1 - keep)
        probabilities = predict_proba(network, perturbed)
        distances = pairwise_distances(masks, masks[:1], metric="cosine").ravel()
        _, found, _, _ = base.explain_instance_with_data(
            masks, probabilities, distances, int(targets[i]), num_features=steps
        )
        for step, weight in found:
            weights[i, step] = weight
    return weights
