"""SHAP and LIME against cases whose right answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from workbench.explain import explain_images, lime_images, shap_images
from workbench.explain.images import grid_segments
from workbench.registry import build_data, build_model


def _linear(weights: torch.Tensor) -> torch.nn.Module:
    """logits = W · flatten(x): gradients are constant, so attributions have a closed form."""
    layer = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weights)
    return torch.nn.Sequential(torch.nn.Flatten(), layer)


def test_shap_on_a_linear_model_equals_weight_times_input_minus_baseline():
    torch.manual_seed(0)
    weights = torch.randn(3, 16)
    network = _linear(weights)
    inputs = torch.randn(2, 1, 4, 4)
    baseline = torch.randn(1, 1, 4, 4)  # one background image: expected gradients are exact
    explanation = shap_images(network, inputs, baseline, nsamples=50)
    predicted = (inputs.flatten(1) @ weights.T).argmax(1)
    assert explanation.targets.tolist() == predicted.tolist()
    for i, target in enumerate(predicted):
        expected = (weights[target] * (inputs[i] - baseline[0]).flatten()).reshape(4, 4)
        assert np.allclose(explanation.attributions[i], expected.numpy(), atol=1e-5)
        # Completeness: attributions add up to f(x) - f(baseline) for the explained class.
        gap = (inputs[i].flatten() - baseline[0].flatten()) @ weights[target]
        assert explanation.attributions[i].sum() == pytest.approx(gap.item(), abs=1e-4)


def test_lime_finds_the_only_patch_the_model_looks_at():
    # Class 1's logit is the sum of the top-left 4×4 patch; class 0's is a constant 0.5 bias.
    mask = torch.zeros(8, 8)
    mask[:4, :4] = 1.0
    weights = torch.stack([torch.zeros(64), mask.flatten()])
    network = torch.nn.Sequential(_linear(weights))
    inputs = torch.zeros(1, 1, 8, 8)
    inputs[0, 0, :4, :4] = 1.0  # the patch is bright: class 1 wins (16 vs 0)
    explanation = lime_images(network, inputs, num_samples=300, patch=4, seed=0)
    assert explanation.targets.tolist() == [1]
    attribution = explanation.attributions[0]
    segments = grid_segments(8, 8, 4)
    per_segment = {s: attribution[segments == s].mean() for s in np.unique(segments)}
    assert max(per_segment, key=per_segment.get) == 0
    assert per_segment[0] > 0.1
    assert all(abs(per_segment[s]) < 0.1 * per_segment[0] for s in (1, 2, 3))


def test_lime_is_reproducible_with_a_seed_and_draws_no_bar_per_image(monkeypatch):
    import lime.lime_image

    bars = []  # LIME 0.2.0.1 wraps its samples in tqdm for every image, unconditionally

    def counting_bar(iterable, *args, **kwargs):
        bars.append(iterable)
        return iterable

    monkeypatch.setattr(lime.lime_image, "tqdm", counting_bar)
    torch.manual_seed(0)
    network = _linear(torch.randn(3, 64))
    inputs = torch.randn(2, 1, 8, 8)
    first = lime_images(network, inputs, num_samples=200, patch=2, seed=7)
    second = lime_images(network, inputs, num_samples=200, patch=2, seed=7)
    assert np.allclose(first.attributions, second.attributions)
    assert bars == []
    assert lime.lime_image.tqdm is counting_bar  # LIME is left as it was


def test_explain_images_on_a_cnn_returns_plottable_explanations():
    data = build_data("digits", seed=0)
    model = build_model("cnn", **data.model_kwargs(), width=8).eval()
    shap_exp, lime_exp = explain_images(
        model.net, data, n_images=3, background=10, shap_samples=20, lime_samples=50
    )
    for explanation in (shap_exp, lime_exp):
        assert explanation.attributions.shape == explanation.pixels.shape == (3, 8, 8)
        assert explanation.probabilities.shape == (3, 10)
        assert np.allclose(explanation.probabilities.sum(1), 1.0, atol=1e-5)
        assert explanation.labels.tolist() == data.split("test")[1][:3].tolist()
        figure = explanation.plot()
        assert isinstance(figure, Figure) and len(figure.axes) == 3 * 2 + 1  # + colour bar
    assert shap_exp.targets.tolist() == lime_exp.targets.tolist()  # both explain the prediction
