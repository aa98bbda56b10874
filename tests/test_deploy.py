"""Export and serving: ONNX matches PyTorch, the REST server answers like the model in process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.servers import free_port, serving
from tests.test_ui import assert_loopback_only
from workbench.deploy import serve
from workbench.deploy.export import export_onnx, export_torchscript, onnx_max_abs_difference
from workbench.deploy.serve import PredictionError, post_json, predict
from workbench.registry import load_module
from workbench.train import data_from_spec


def _best_network(spec, result):
    trial = result.load_study().trials[result.best_trial]
    return load_module(trial.user_attrs["checkpoint"], spec.model.name).net.eval()


def test_torchscript_and_onnx_reproduce_the_network(tiny_study, tmp_path: Path):
    spec, result = tiny_study
    network = _best_network(spec, result)
    inputs = data_from_spec(spec).split("test")[0][:32]
    scripted = torch.jit.load(str(export_torchscript(network, inputs[:2], tmp_path / "m.pt")))
    with torch.no_grad():
        assert torch.allclose(scripted(inputs), network(inputs), atol=1e-5)  # batch 32, traced on 2
    onnx_path = export_onnx(network, inputs[:2], tmp_path / "m.onnx")
    assert onnx_max_abs_difference(onnx_path, network, inputs) <= 1e-4


def test_logged_model_has_a_dynamic_batch_signature_and_a_serving_example_it_answers(tiny_study):
    """What MLflow's own check at log time did (it is off: a reload per trial): the saved serving
    example goes through the logged model and gives the network's outputs."""
    import mlflow.artifacts
    import mlflow.pyfunc
    from mlflow.models import Model

    spec, result = tiny_study
    mlflow.set_tracking_uri(result.tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(result.model_uri))
    signature = Model.load(local / "MLmodel").signature
    (inputs,), (outputs,) = signature.inputs.inputs, signature.outputs.inputs
    assert (inputs.shape, inputs.type) == ((-1, 1, 28, 28), np.dtype("float32"))
    assert outputs.shape == (-1, 10)
    example = json.loads((local / "serving_input_example.json").read_text())["inputs"]
    example = np.asarray(example, dtype=np.float32)
    assert example.shape[0] >= 2  # a batch of one would have fixed the exported batch size
    served = mlflow.pyfunc.load_model(result.model_uri).predict(example)
    with torch.no_grad():
        expected = _best_network(spec, result)(torch.from_numpy(example)).numpy()
    assert np.allclose(served, expected, atol=1e-5)


@pytest.mark.slow
def test_served_model_matches_in_process_predictions_and_refuses_bad_input(tiny_study, tmp_path):
    spec, result = tiny_study
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    uri = f"models:/{result.registered_model}@champion"
    command = [sys.executable, "-m", "workbench.cli", "serve", uri, "--root", spec.tracking.root]
    with serving([*command, "--port", str(port)], f"{url}/ping"):
        assert_loopback_only(port)  # the default bind address: 127.0.0.1 only
        inputs = data_from_spec(spec).split("test")[0][:8]
        served = predict(url, inputs.numpy())
        with torch.no_grad():
            expected = _best_network(spec, result)(inputs).numpy()
        assert served.shape == (8, 10)
        assert np.allclose(served, expected, atol=1e-4)

        # Each refusal is a 400 whose message names the fault, not just the status.
        bad = {
            "wrong shape": (
                json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode(),
                ["shape", "(1, 3)", "(-1, 1, 28, 28)"],
            ),
            "wrong type": (
                json.dumps({"inputs": [[["a"] * 28] * 28]}).encode(),
                ["string", "float", "'a'"],
            ),
            "empty body": (b"", ["empty request body", '{"inputs"', "(-1, 1, 28, 28)"]),
        }
        for name, (body, named) in bad.items():
            with pytest.raises(PredictionError) as refused:
                post_json(url, body)
            assert refused.value.status == 400, name
            message = str(refused.value)
            assert all(part in message for part in named), (name, message)
        assert np.allclose(predict(url, inputs.numpy()), expected, atol=1e-4)  # still serving

        array = tmp_path / "inputs.npy"
        np.save(array, inputs[:3].numpy())
        cli = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "predict", str(array), "--url", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["classes"] == expected[:3].argmax(1).tolist()


@pytest.mark.slow
def test_serving_block_starts_answers_and_stops_the_server(tiny_study):
    """What notebook 04 uses: the block yields a URL that answers, and nothing listens after."""
    import socket

    spec, result = tiny_study
    port = free_port()
    inputs = data_from_spec(spec).split("test")[0][:4]
    with serve.serving(
        f"models:/{result.registered_model}@champion", result.tracking_uri, port
    ) as url:
        assert url == f"http://127.0.0.1:{port}"
        assert_loopback_only(port)
        with torch.no_grad():
            expected = _best_network(spec, result)(inputs).numpy()
        assert np.allclose(predict(url, inputs.numpy()), expected, atol=1e-4)
        with pytest.raises(RuntimeError, match=f"port {port} is in use"):  # ours holds it
            with serve.serving("models:/other@champion", result.tracking_uri, port):
                pass
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass  # the server and its workers are gone


@pytest.mark.slow
def test_serving_block_names_the_model_when_the_server_dies(tiny_study):
    _, result = tiny_study
    missing = "models:/no_such_model@champion"
    with pytest.raises(
        RuntimeError, match="serving models:/no_such_model@champion: the server exited"
    ):
        with serve.serving(missing, result.tracking_uri, free_port(), timeout_s=60):
            pytest.fail("a server for a model that does not exist came up")


def test_a_trial_that_logged_no_model_says_why_it_cannot_be_served(tiny_study):
    """Under tracking.log_models: best only the champion's run holds an MLflow model; another
    trial's run id names the policy instead of failing inside the server."""
    import workbench

    spec, result = tiny_study
    champion = workbench.trained(result.best_run_id, root=spec.tracking.root)
    assert champion.mlflow_model() == result.model_uri
    other = workbench.TrainedModel(spec, "unused.ckpt", run_id="0" * 32)
    with pytest.raises(LookupError, match=r"tracking.log_models: best .*log_models=all"):
        other.mlflow_model()
