"""SHAP and LIME on tables and sequences, the trust metrics, and the explain entry point, each
checked against cases whose right answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.explain import explain_model
from workbench.explain.methods import lime_sequence, lime_tabular, shap_values
from workbench.explain.trust import area, randomized_copy, rank_agreement, removal_curves


def _linear(weights: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Module:
    layer = torch.nn.Linear(weights.shape[1], weights.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weights)
        if bias is not None:
            layer.bias.copy_(bias)
    return torch.nn.Sequential(torch.nn.Flatten(), layer)


def _one_feature_model(feature: int, n_features: int) -> torch.nn.Module:
    """Class 1's logit is 4·x[feature]; class 0's is 0: only that feature matters."""
    weights = torch.zeros(2, n_features)
    weights[1, feature] = 4.0
    return _linear(weights)


@pytest.mark.parametrize("method", ["deep", "gradient"])
def test_shap_of_a_linear_model_is_weight_times_input_minus_background_mean(method: str):
    torch.manual_seed(0)
    weights = torch.randn(3, 6)
    network = _linear(weights, torch.randn(3))
    inputs, background = torch.randn(4, 6), torch.randn(5, 6)
    targets = np.array([0, 1, 2, 1])
    values = shap_values(network, inputs, background, targets, method, nsamples=4000, seed=0)
    expected = weights[targets] * (inputs - background.mean(0))
    # DeepExplainer is exact for a linear model; expected gradients converge to it by sampling.
    tolerance = 1e-5 if method == "deep" else 0.05
    np.testing.assert_allclose(values, expected.numpy(), atol=tolerance)


def test_kernel_shap_puts_everything_on_the_one_feature_the_model_uses():
    network = _one_feature_model(2, 5)
    inputs = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    background = torch.zeros(8, 5)
    values = shap_values(network, inputs, background, np.array([1]), "kernel", nsamples=200)
    assert int(np.argmax(np.abs(values[0]))) == 2
    # Attributions add up to p(x) - p(background) for class 1: sigmoid(4) - 0.5.
    assert values[0].sum() == pytest.approx(1 / (1 + np.exp(-4)) - 0.5, abs=1e-3)
    assert np.abs(values[0, [0, 1, 3, 4]]).max() < 1e-3


def test_lime_tabular_top_feature_is_the_one_the_model_uses():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(200, 6, generator=generator)
    network = _one_feature_model(4, 6)
    inputs = torch.randn(3, 6, generator=generator)
    targets = np.array([1, 1, 1])
    weights = lime_tabular(network, inputs, train, targets, num_samples=800, seed=0)
    assert weights.shape == (3, 6)
    assert (np.abs(weights).argmax(1) == 4).all()


def test_lime_sequence_finds_the_time_step_the_model_reads():
    # A "sequence model" that only looks at step 7, feature 0.
    weights = torch.zeros(2, 10 * 3)
    weights[1, 7 * 3] = 5.0
    network = _linear(weights)
    inputs = torch.ones(2, 10, 3)
    baseline = torch.zeros(10, 3)
    found = lime_sequence(network, inputs, baseline, np.array([1, 1]), num_samples=500, seed=0)
    assert found.shape == (2, 10)
    assert (found.argmax(1) == 7).all() and (found[:, 7] > 0.1).all()


def test_removal_curves_by_hand():
    # Two features; p(class 1) = sigmoid(4·x0 + 0·x1). The input is (1, 1), the baseline (0, 0).
    network = _one_feature_model(0, 2)
    inputs = torch.ones(1, 2)
    baseline = torch.zeros(1, 2)
    high = 1 / (1 + np.exp(-4))
    good = removal_curves(network, inputs, np.array([[1.0, 0.0]]), np.array([1]), baseline,
                          "tabular", steps=2)  # fmt: skip
    # Deleting x0 first: p drops to 0.5 at once; inserting x0 first: p rises to high at once.
    np.testing.assert_allclose(good["deletion"][0], [high, 0.5, 0.5], atol=1e-6)
    np.testing.assert_allclose(good["insertion"][0], [0.5, high, high], atol=1e-6)
    bad = removal_curves(network, inputs, np.array([[0.0, 1.0]]), np.array([1]), baseline,
                         "tabular", steps=2)  # fmt: skip
    np.testing.assert_allclose(bad["deletion"][0], [high, high, 0.5], atol=1e-6)
    assert area(good["deletion"]) < area(bad["deletion"])
    assert area(np.full((3, 5), 0.25)) == pytest.approx(0.25)


def test_rank_agreement_and_randomised_copy():
    a = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert rank_agreement(a, a * 10) == pytest.approx(1.0)
    assert rank_agreement(a, -a) == pytest.approx(-1.0)
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    clone = randomized_copy(network, seed=1)
    for original, redrawn in zip(network.parameters(), clone.parameters(), strict=True):
        assert original.shape == redrawn.shape and not torch.equal(original, redrawn)


def test_explain_model_on_a_trained_mlp_is_faithful_and_passes_the_sanity_check(tmp_path):
    import lightning.pytorch as pl

    from workbench.registry import create_data, create_model
    from workbench.spec import TrainerSpec
    from workbench.train import fit

    pl.seed_everything(0, verbose=False)
    data = create_data("breast_cancer", seed=0, test_fraction=0.2, batch_size=32)
    model = create_model("mlp", **data.model_kwargs(), hidden=16, dropout=0.0, lr=3e-3)
    trainer = TrainerSpec(max_epochs=15, patience=15, accelerator="cpu")
    result = fit(model, data, trainer, tmp_path, test=True)
    assert result.test_metrics["test/acc"] > 0.9
    report = explain_model(model, data, n=10, background=32, shap_samples=200, lime_samples=300)
    assert report.kind == "tabular"
    shap_exp, lime_exp = report.explanations["shap"], report.explanations["lime"]
    assert shap_exp.attributions.shape == lime_exp.attributions.shape == (10, 30)
    trust = report.trust
    assert trust["shap/deletion_auc"] < trust["shap/random_deletion_auc"]
    assert trust["shap/insertion_auc"] > trust["shap/random_insertion_auc"]
    assert trust["agreement/spearman"] > 0.2  # two methods, one model: they should broadly agree
    assert abs(trust["sanity/spearman"]) < 0.6  # random weights, different explanation
    assert trust["shap/stability"] > 0.8 and trust["lime/stability"] > 0.5  # another seed
    # Per-class values: any class can be explained, not only the predicted one.
    other = explain_model(model, data, methods=("shap",), n=3, trust=False, target_class=0)
    assert (other.explanations["shap"].targets == 0).all()
    figures = report.figures()
    assert {"shap", "lime", "shap_vs_lime", "faithfulness", "shap_beeswarm", "shap_bar"} <= set(
        figures
    )


def test_stability_is_one_for_an_exact_method_and_falls_with_fewer_lime_samples():
    """Stability reruns a method with another seed: DeepExplainer on a linear model is exact
    (w·(x − background mean)), so nothing moves; LIME with few perturbations moves more than
    LIME with many."""
    from workbench.registry import create_data

    data = create_data("breast_cancer", seed=0, test_fraction=0.2)
    torch.manual_seed(0)
    network = _linear(torch.randn(2, 30))
    exact = explain_model(network, data, ("shap",), n=8, shap_method="deep", background=16)
    assert exact.trust["shap/stability"] == pytest.approx(1.0)
    few = explain_model(network, data, ("lime",), n=8, lime_samples=60).trust["lime/stability"]
    many = explain_model(network, data, ("lime",), n=8, lime_samples=2000).trust["lime/stability"]
    assert -1.0 <= few < many <= 1.0
    assert many > 0.8


def test_explain_model_names_bad_input(tmp_path):
    from workbench.registry import create_data, create_model

    data = create_data("digits", seed=0)
    wrong = create_model("mlp", input_shape=(30,), num_classes=2)  # a tabular model
    with pytest.raises(ValueError, match=r"data: inputs shaped \(1, 8, 8\) do not fit the model"):
        explain_model(wrong, data, n=2, trust=False)
    with pytest.raises(
        ValueError, match=r"methods: choose from 'shap', 'lime'; got \['grad-cam'\]"
    ):
        explain_model(wrong, data, methods=("grad-cam",))
    cnn = create_model("cnn", input_shape=(1, 8, 8), width=8)
    with pytest.raises(ValueError, match=r"settings.lime: unknown \['samples'\]"):
        explain_model(cnn, data, ("lime",), n=1, trust=False, settings={"lime": {"samples": 9}})
    with pytest.raises(ValueError, match=r"settings: keys are methods of 'shap', 'lime'"):
        explain_model(cnn, data, settings={"grad-cam": {}})
    with pytest.raises(ValueError, match=r"target_class: must be in \[0, 10\)"):
        explain_model(cnn, data, target_class=12)
    with pytest.raises(ValueError, match="data: pass the data module"):
        explain_model(wrong)
    with pytest.raises(ValueError, match="regression"):
        adding = create_data("adding", length=10, n_train=16, n_val=8, n_test=8)
        explain_model(create_model("lstm", input_shape=(10, 2), num_classes=1), adding)


def test_explain_command_names_a_missing_run_and_a_run_without_a_model(tiny_study, capsys):
    from workbench.cli import main

    spec, result = tiny_study
    assert main(["explain", "0123456789abcdef", "--root", spec.tracking.root]) == 2
    assert "run id '0123456789abcdef': no such run" in capsys.readouterr().err
    assert main(["explain", result.parent_run_id, "--root", spec.tracking.root]) == 2
    assert "has no logged model" in capsys.readouterr().err


def test_explain_command_logs_the_report_to_the_trial_run(tiny_study, capsys):
    from mlflow.tracking import MlflowClient

    from workbench.cli import main

    spec, result = tiny_study
    args = ["explain", result.best_run_id, "--root", spec.tracking.root, "--n", "3"]
    assert main([*args, "--lime-samples", "100"]) == 0
    printed = capsys.readouterr().out
    assert "shap/deletion_auc" in printed and "sanity/spearman" in printed
    client = MlflowClient(result.tracking_uri)
    logged = {f.path for f in client.list_artifacts(result.best_run_id, "explain")}
    assert {"explain/shap_vs_lime.png", "explain/faithfulness.png", "explain/trust.json"} <= logged
    metrics = client.get_run(result.best_run_id).data.metrics
    assert 0.0 <= metrics["explain/shap/deletion_auc"] <= 1.0
