"""SHAP and LIME on images against cases whose right answer is known by hand, the table of
explainers, and the plots (each draws on given axes or on a figure of its own)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from workbench.explain import (
    EXPLAINERS,
    Explanation,
    ExplanationInputs,
    explain_model,
    plot_curves,
    shap_summary_plots,
    side_by_side,
)
from workbench.explain.methods import grid_segments
from workbench.registry import create_data, create_model


def _linear(weights: torch.Tensor) -> torch.nn.Module:
    """logits = W · flatten(x): gradients are constant, so attributions have a closed form."""
    layer = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(weights)
    return torch.nn.Sequential(torch.nn.Flatten(), layer)


def _images(inputs: torch.Tensor, targets, background: torch.Tensor | None = None):
    """One-channel images to explain, as ``explain_model`` hands them to every explainer."""
    background = inputs if background is None else background
    return ExplanationInputs(
        "image", inputs, np.asarray(targets), background, background, background[:1]
    )


def test_shap_on_a_linear_model_equals_weight_times_input_minus_baseline():
    torch.manual_seed(0)
    weights = torch.randn(3, 16)
    network = _linear(weights)
    inputs = torch.randn(2, 1, 4, 4)
    baseline = torch.randn(1, 1, 4, 4)  # one background image: expected gradients are exact
    predicted = (inputs.flatten(1) @ weights.T).argmax(1)
    found = EXPLAINERS["shap"](network, _images(inputs, predicted, baseline), 0, {"nsamples": 50})
    assert found.title == "SHAP (GradientExplainer)"
    assert found.settings == {"explainer": "gradient", "background": 1, "nsamples": 50}
    attributions = found.values[:, 0]  # (N, 1, H, W): one channel
    for i, target in enumerate(predicted):
        expected = (weights[target] * (inputs[i] - baseline[0]).flatten()).reshape(4, 4)
        assert np.allclose(attributions[i], expected.numpy(), atol=1e-5)
        # Completeness: attributions add up to f(x) - f(baseline) for the explained class.
        gap = (inputs[i].flatten() - baseline[0].flatten()) @ weights[target]
        assert attributions[i].sum() == pytest.approx(gap.item(), abs=1e-4)


def _patch_model():
    """Class 1's logit is the sum of the top-left 4×4 patch of an 8×8 image; class 0's is 0."""
    mask = torch.zeros(8, 8)
    mask[:4, :4] = 1.0
    network = _linear(torch.stack([torch.zeros(64), mask.flatten()]))
    inputs = torch.zeros(1, 1, 8, 8)
    inputs[0, 0, :4, :4] = 1.0  # the patch is bright: class 1 wins (16 vs 0)
    return network, inputs


@pytest.mark.parametrize("target, sign", [(1, 1.0), (0, -1.0)])
def test_lime_finds_the_only_patch_the_model_looks_at_for_the_class_asked(target, sign):
    network, inputs = _patch_model()
    settings = {"num_samples": 300, "patch": 4}
    found = EXPLAINERS["lime"](network, _images(inputs, [target]), 0, settings)
    assert found.settings == {"num_samples": 300, "patch": 4, "seed": 0}
    attribution = found.values[0]
    segments = grid_segments(8, 8, 4)
    per_segment = {s: sign * attribution[segments == s].mean() for s in np.unique(segments)}
    assert max(per_segment, key=per_segment.get) == 0  # the patch speaks for 1, against 0
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
    subject = _images(torch.randn(2, 1, 8, 8), [0, 2])
    settings = {"num_samples": 200, "patch": 2}
    first = EXPLAINERS["lime"](network, subject, 7, settings)
    second = EXPLAINERS["lime"](network, subject, 7, settings)
    assert np.allclose(first.values, second.values)
    assert bars == []
    assert lime.lime_image.tqdm is counting_bar  # LIME is left as it was


def test_explain_model_on_a_cnn_returns_plottable_explanations():
    data = create_data("digits", seed=0)
    model = create_model("cnn", **data.model_kwargs(), width=8).eval()
    report = explain_model(
        model.net, data, n=3, background=10, shap_samples=20, lime_samples=50, trust=False
    )
    shap_exp, lime_exp = report.explanations["shap"], report.explanations["lime"]
    for explanation in (shap_exp, lime_exp):
        assert explanation.attributions.shape == explanation.display.shape == (3, 8, 8)
        assert explanation.probabilities.shape == (3, 10)
        assert np.allclose(explanation.probabilities.sum(1), 1.0, atol=1e-5)
        assert explanation.labels.tolist() == data.split("test")[1][:3].tolist()
        figure = explanation.plot()
        assert isinstance(figure, Figure) and len(figure.axes) == 3 * 2 + 1  # + colour bar
    assert shap_exp.targets.tolist() == lime_exp.targets.tolist()  # both explain the prediction
    assert set(report.figures()) == {"shap", "lime", "shap_vs_lime"}


def gradient_x_input(network, inputs, seed, settings):
    """A method the table does not ship: the gradient of the explained logit times the input."""
    x = inputs.inputs.clone().requires_grad_(True)
    picked = network(x)[torch.arange(len(x)), torch.as_tensor(inputs.targets)]
    (gradient,) = torch.autograd.grad(picked.sum(), x)
    return (gradient * x).detach().numpy() * settings.get("scale", 1.0), {"seed": seed}


def test_a_method_added_to_the_table_is_explained_measured_and_plotted(monkeypatch):
    monkeypatch.setitem(EXPLAINERS, "gradient_x_input", gradient_x_input)
    data = create_data("digits", seed=0)
    torch.manual_seed(0)
    network = create_model("cnn", **data.model_kwargs(), width=8).net.eval()
    report = explain_model(
        network, data, ("shap", "gradient_x_input"), n=3, background=8, shap_samples=10,
        steps=4, settings={"gradient_x_input": {"scale": 2.0}},
    )  # fmt: skip
    added = report.explanations["gradient_x_input"]
    assert list(report.explanations) == ["shap", "gradient_x_input"]  # the table's order
    assert added.method == "gradient_x_input" and added.settings == {"seed": 0}
    x = data.split("test")[0][:3]
    expected = gradient_x_input(
        network, ExplanationInputs("image", x, added.targets, x, x, x), 0, {}
    )
    assert np.allclose(added.attributions, 2.0 * expected[0][:, 0], atol=1e-6)  # per pixel
    assert report.trust["gradient_x_input/stability"] == pytest.approx(1.0)  # no sampling
    table = report.table()
    for metric in ("deletion_auc", "random_deletion_auc", "insertion_auc", "stability"):
        assert f"gradient_x_input/{metric}" in table.index
    assert "agreement/spearman" not in table.index  # measured between SHAP and LIME only
    figures = report.figures()
    assert {"shap", "gradient_x_input", "shap_vs_gradient_x_input", "faithfulness"} == set(figures)
    legend = [t.get_text() for t in figures["faithfulness"].axes[0].get_legend().get_texts()]
    assert any(text.startswith("gradient_x_input (AUC") for text in legend)


def _explanation(kind: str, n: int = 3) -> Explanation:
    generator = np.random.default_rng(0)
    display, units = {
        "image": ((n, 6, 6), (n, 6, 6)),
        "tabular": ((n, 5), (n, 5)),
        "sequence": ((n, 7, 2), (n, 7)),
    }[kind]
    probabilities = generator.dirichlet(np.ones(3), n)
    return Explanation(
        method=f"M {kind}", kind=kind, display=generator.random(display),
        attributions=generator.normal(size=units), targets=probabilities.argmax(1),
        probabilities=probabilities, labels=np.arange(n) % 3,
        feature_names=[f"f{i}" for i in range(5)] if kind == "tabular" else None,
    )  # fmt: skip


def _curves():
    line = np.linspace(1, 0, 5)
    curves = {m: {k: line for k in ("deletion", "insertion", "random_deletion",
                                    "random_insertion")} for m in ("a", "b")}  # fmt: skip
    names = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")
    return curves, {m: dict.fromkeys(names, 0.5) for m in curves}


PLOTS = {  # name → (the axes it draws on, how to draw it)
    "image": ((2, 3), lambda axes: _explanation("image").plot(axes=axes)),
    "tabular": ((1, 2), lambda axes: _explanation("tabular").plot(axes=axes)),
    "sequence": ((1, 2), lambda axes: _explanation("sequence").plot(axes=axes)),
    "side_by_side_image": (
        (3, 3),
        lambda axes: side_by_side(_explanation("image"), _explanation("image"), axes=axes),
    ),
    "side_by_side_tabular": (
        (1, 2),
        lambda axes: side_by_side(_explanation("tabular"), _explanation("tabular"), axes=axes),
    ),
    "side_by_side_sequence": (
        (1, 2),
        lambda axes: side_by_side(_explanation("sequence"), _explanation("sequence"), axes=axes),
    ),
    "shap_summary": (
        (1, 2),
        lambda axes: shap_summary_plots(_explanation("tabular", 8), axes=axes),
    ),
    "faithfulness": ((1, 2), lambda axes: plot_curves(*_curves(), axes=axes)),
}


def _figures(drawn) -> list[Figure]:
    return list(drawn.values()) if isinstance(drawn, dict) else [drawn]


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_draws_on_the_axes_it_is_given(name: str):
    shape, draw = PLOTS[name]
    figure = Figure()
    axes = figure.subplots(*shape, squeeze=False)
    for drawn in _figures(draw(axes)):
        assert drawn is figure
    assert all(ax.has_data() for ax in axes.flat)


@pytest.mark.parametrize("name", PLOTS)
def test_each_plot_makes_a_figure_of_its_own_without_axes(name: str):
    _, draw = PLOTS[name]
    for drawn in _figures(draw(None)):
        assert isinstance(drawn, Figure) and drawn.axes
        assert all(ax.has_data() for ax in drawn.axes if ax.get_label() != "<colorbar>")


def test_a_plot_given_the_wrong_number_of_axes_says_how_many_it_needs():
    with pytest.raises(ValueError, match=r"axes: this plot draws on 2×3 axes; got 2"):
        _explanation("image").plot(axes=Figure().subplots(1, 2))
