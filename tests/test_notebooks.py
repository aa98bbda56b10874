"""Notebooks are thin drivers: no definitions of their own, and they run top to bottom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXPERIMENTS, REPO, tiny

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _execute(notebook: str, tmp_path: Path, parameters: dict) -> tuple[list, list]:
    """Run a notebook with papermill in ``tmp_path``; its cells and the images they drew."""
    import papermill

    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks" / notebook),
        str(out),
        parameters=parameters,
        cwd=str(tmp_path),
        progress_bar=False,
        kernel_name="python3",
    )
    cells = json.loads(out.read_text())["cells"]
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    return cells, images


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_thin_driver_with_stripped_outputs(path: Path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell holds parameters"
    for cell in code:
        source = "".join(cell["source"])
        assert not any(line.lstrip().startswith(("def ", "class ")) for line in source.splitlines())
        assert cell.get("outputs") == [] and cell.get("execution_count") is None


@pytest.mark.slow
def test_quickstart_runs_in_smoke_mode(tmp_path: Path):
    root = tmp_path / "mlruns"
    _, images = _execute(
        "01_quickstart.ipynb",
        tmp_path,
        {
            "spec_path": str(EXPERIMENTS / "mnist_cnn.yaml"),
            "root": str(root),
            "trials": 2,
            "overrides": tiny(root)[1:],
            "n_images": 2,
        },
    )
    assert len(images) >= 3, "history, learning curves and attributions are drawn inline"
    assert (root / "mlflow.db").is_file() and (root / "optuna.db").is_file()


@pytest.mark.slow
def test_studies_notebook_runs_in_smoke_mode(tmp_path: Path):
    root = tmp_path / "mlruns"
    cells, images = _execute(
        "02_studies.ipynb",
        tmp_path,
        {
            "spec_path": str(EXPERIMENTS / "mnist_cnn.yaml"),
            "root": str(root),
            "trials": 3,
            "epochs": 2,
            "overrides": ["data.max_samples=300", "data.augment=false"],
        },
    )
    assert len(images) >= 4, "Pareto front, intermediate values and history are drawn inline"
    text = "".join(
        "".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if "text" in o
    )
    assert "pruning trained" in text
    import optuna

    storage = f"sqlite:///{root}/optuna.db"
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {"mnist_cnn_pareto", "mnist_cnn_median_pruned", "mnist_cnn_unpruned"}
    pareto = optuna.load_study(study_name="mnist_cnn_pareto", storage=storage)
    assert len(pareto.directions) == 2 and len(pareto.trials) == 3


@pytest.mark.slow
def test_explain_notebook_runs_in_smoke_mode(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "mlruns"
    _, images = _execute(
        "03_explain.ipynb",
        tmp_path,
        {
            "image_spec": str(EXPERIMENTS / "mnist_cnn.yaml"),
            "table_spec": str(EXPERIMENTS / "breast_cancer_mlp.yaml"),
            "root": str(root),
            "trials": 1,
            "overrides": ["trainer.max_epochs=2", "data.max_samples=500", "data.augment=false"],
            "n": 3,
            "lime_samples": 100,
        },
    )
    assert len(images) >= 5, "attributions, faithfulness curves and SHAP summaries inline"
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    trials = client.search_runs(["1"], filter_string="tags.`workbench.role` = 'trial'")
    assert len(trials) == 2
    for run in trials:  # both explained models got their report logged
        logged = {f.path for f in client.list_artifacts(run.info.run_id, "explain")}
        assert {"explain/trust.json", "explain/faithfulness.png", "explain/shap.png"} <= logged
        assert "explain/shap/deletion_auc" in run.data.metrics


@pytest.mark.slow
def test_compress_and_deploy_runs_in_smoke_mode(tmp_path: Path):
    from tests.servers import free_port

    root = tmp_path / "mlruns"
    _, images = _execute(
        "04_compress_and_deploy.ipynb",
        tmp_path,
        {
            "spec_path": str(EXPERIMENTS / "mnist_cnn.yaml"),
            "root": str(root),
            "trials": 1,
            "overrides": [*tiny(root)[1:], "explain.enabled=false", "data.max_samples=600"],
            "finetune_epochs": 1,
            "distill_epochs": 1,
            "export_dir": str(tmp_path / "exports"),
            "port": free_port(),
        },
    )
    assert images, "the compression report is drawn inline"
    assert (tmp_path / "exports" / "mnist_cnn.onnx").is_file()
