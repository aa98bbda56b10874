"""Notebooks are thin drivers: no definitions of their own, and they run top to bottom."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXPERIMENTS, REPO, tiny

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


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


def _text(cells: list) -> str:
    """Everything the cells printed."""
    return "".join(
        "".join(o.get("text", "")) for c in cells for o in c.get("outputs", []) if "text" in o
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_a_thin_driver_committed_with_its_full_size_outputs(path: Path):
    """A reader sees results without running anything: every code cell ran (``make notebooks``),
    none failed, figures are there, and nothing volatile (papermill's timings, widget views
    without their state) was kept. The opening cell says how long a full-size run takes."""
    notebook = json.loads(path.read_text())
    cells = notebook["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell holds parameters"
    for cell in code:
        source = "".join(cell["source"])
        assert not any(line.lstrip().startswith(("def ", "class ")) for line in source.splitlines())
    assert all(c.get("execution_count") is not None for c in code), "run `make notebooks`"
    outputs = [o for c in code for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{path.name} was committed with an error: {errors[0].get('ename')}"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure in its outputs"
    assert "papermill" not in notebook["metadata"]
    assert not any("papermill" in c["metadata"] or "execution" in c["metadata"] for c in cells)
    assert not any(WIDGET in o.get("data", {}) for o in outputs)
    assert "full size" in "".join(cells[0]["source"]).lower(), "the opening cell gives the run time"


# One spec per family the quickstart must drive unchanged: (spec, the sentence its skipped
# explanation prints, or None when SHAP and LIME run). One trial each: ~45 s a case on 2 cores.
QUICKSTART_CASES = {
    "images": ("mnist_cnn.yaml", None),
    "tables": ("breast_cancer_mlp.yaml", None),
    "sequences-regression": ("adding_lstm.yaml", "on 'adding' data, 'lstm' predicts nothing"),
    "generative": ("mnist_autoencoder.yaml", "'autoencoder' is not one"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", QUICKSTART_CASES, ids=str)
def test_quickstart_runs_on_every_family(case: str, tmp_path: Path):
    spec_file, skipped = QUICKSTART_CASES[case]
    root = tmp_path / "mlruns"
    cells, images = _execute(
        "01_quickstart.ipynb",
        tmp_path,
        {
            "spec_path": str(EXPERIMENTS / spec_file),
            "root": str(root),
            "trials": 1,
            "overrides": tiny(root)[1:],
            "n": 2,
        },
    )
    import optuna
    from mlflow.tracking import MlflowClient

    text = _text(cells)
    assert "searched: " in text
    report = root / "reports" / f"{Path(spec_file).stem}.html"
    assert f"{report}" in text and report.is_file()  # the report, written and shown inline
    frames = [
        "".join(o["data"]["text/html"]) for c in cells for o in c.get("outputs", [])
        if "text/html" in o.get("data", {}) and "<iframe srcdoc=" in "".join(o["data"]["text/html"])
    ]  # fmt: skip
    assert len(frames) == 1 and "data:image/png;base64," in frames[0]
    study = optuna.load_study(
        study_name=Path(spec_file).stem, storage=f"sqlite:///{root}/optuna.db"
    )
    assert [t.state.name for t in study.trials] == ["COMPLETE"]
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    (trial,) = client.search_runs(["1"], filter_string="tags.`workbench.role` = 'trial'")
    explained = {f.path for f in client.list_artifacts(trial.info.run_id, "explain")}
    if skipped is None:
        assert "Explanation skipped" not in text
        # history, learning curves, SHAP vs LIME, faithfulness (tables add SHAP's own plots)
        assert len(images) >= 4, "history, curves and explanations are drawn inline"
        assert "explain/faithfulness.png" in explained
    else:
        assert "Explanation skipped: " in text and skipped in text, text[-2000:]
        assert len(images) == 2, "history and learning curves only"
        assert not explained


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_quickstart_explains_exactly_the_specs_that_explain(path: Path):
    """The quickstart's branch on every spec in experiments/: explained when the spec asks for
    it, otherwise one sentence that says why not."""
    from workbench.spec import load_spec
    from workbench.trained_model import TrainedModel

    spec = load_spec(path)
    reason = TrainedModel(spec, checkpoint="unused.ckpt").explain_skipped_because
    if spec.explain.enabled:
        assert reason is None
    else:
        assert reason.startswith("Explanation skipped: ") and reason.endswith(".")


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
            "overrides": ["data.max_samples=300", "data.augment=false", "study.confirm.top_k=0"],
        },
    )
    assert len(images) >= 4, "Pareto front, intermediate values and history are drawn inline"
    assert "pruning trained" in _text(cells)
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
            "overrides": [
                "trainer.max_epochs=2",
                "data.max_samples=500",
                "data.augment=false",
                "study.confirm.top_k=0",
            ],
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


@pytest.mark.slow
def test_transfer_notebook_runs_in_smoke_mode(tmp_path: Path):
    """Pretraining, the label-efficiency grid (three arms, two label counts), a fine-tuning study
    and its lineage, on 300 images and one epoch."""
    root = tmp_path / "mlruns"
    cells, images = _execute(
        "05_transfer.ipynb",
        tmp_path,
        {
            "pretrain_spec": str(EXPERIMENTS / "mnist_simclr.yaml"),
            "transfer_spec": str(EXPERIMENTS / "mnist_transfer.yaml"),
            "root": str(root),
            "labels": [3, None],
            "seeds": 1,
            "min_steps": 5,
            "fine_tuning_trials": 1,
            "overrides": [*tiny(root)[1:], "study.trials=1", "explain.enabled=false"],
        },
    )
    text = _text(cells)
    assert len(images) >= 1  # the label-efficiency figure
    for arm in ("scratch", "frozen", "finetuned"):
        assert arm in text
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("pretraining run"))
    assert "base model models:/mnist_simclr/1" in lines[first + 1]
    assert "fine-tuning run" in lines[first + 2]
    assert "registered model models:/mnist_transfer/1@champion" in lines[first + 3]


@pytest.mark.slow
def test_drift_notebook_runs_in_smoke_mode(tmp_path: Path):
    """The drift study on 3 batches per case, the served-and-recorded model monitored, a 2 s load
    test: figures drawn, the clean window passes and the rotated one is flagged."""
    from tests.servers import free_port

    root = tmp_path / "mlruns"
    cells, images = _execute(
        "07_drift.ipynb",
        tmp_path,
        {
            "spec_path": str(EXPERIMENTS / "mnist_cnn.yaml"),
            "root": str(root),
            "trials": 1,
            "overrides": [*tiny(root)[1:], "explain.enabled=false", "data.max_samples=1000"],
            "n_batches": 3,
            "batch_sizes": [20, 50],
            "batch": 50,
            "port": free_port(),
            "load_seconds": 2.0,
            "load_clients": 4,
        },
    )
    text = _text(cells)
    assert len(images) >= 3  # false alarms, power, batch size
    lines = [line.split() for line in text.splitlines() if line.strip().startswith(("0-", "100-"))]
    assert [line[-1] for line in lines[-2:]] == ["no", "yes"]  # clean window, rotated window
    assert "monitoring run" in text and "errors" in text


@pytest.mark.slow
def test_robustness_and_privacy_notebook_runs_in_smoke_mode(tmp_path: Path):
    """Both CNNs (adversarially trained and standard) on 300 images for one epoch, attacked at
    two ε on 40 test images; the DP-SGD model trained and its spent ε printed."""
    root = tmp_path / "mlruns"
    cells, images = _execute(
        "06_robustness_and_privacy.ipynb",
        tmp_path,
        {
            "robust_spec_path": str(EXPERIMENTS / "mnist_cnn_robust.yaml"),
            "private_spec_path": str(EXPERIMENTS / "breast_cancer_mlp_dp.yaml"),
            "root": str(root),
            "overrides": [*tiny(root)[1:], "robustness.evaluate=false"],
            "epsilons": [0.1, 0.3],
            "n_examples": 40,
            "pgd_steps": 3,
        },
    )
    text = _text(cells)
    assert len(images) >= 1  # the accuracy-against-ε figure
    assert "adversarially trained" in text and "standard" in text
    assert "ε" in text
