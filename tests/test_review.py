"""optuna-dashboard and MLflow linked both ways (workbench/study/review.py): every trial's note
with its figures, every run's link back, and a note a reviewer edits through the dashboard's
own HTTP API copied to the run's tags by `workbench review`. The browser side (the note on a
trial page, its image loading, its link opening the run) is in tests/test_browser.py."""

from __future__ import annotations

import json
import urllib.request

import optuna
import pytest
from mlflow import MlflowClient
from optuna_dashboard._note import get_note_from_system_attrs

from tests.conftest import EXPERIMENTS, tiny
from tests.servers import free_port, serving

PNG = b"\x89PNG\r\n\x1a\n"


def _is_figure(data: bytes) -> bool:
    """A PNG (a run's own plot) or an SVG (learning curves drawn for the note)."""
    return data.startswith(PNG) or (data.startswith(b"<svg") and b"<polyline" in data)


@pytest.fixture(scope="module")
def reviewed_study(tmp_path_factory):
    from workbench.study import run_study

    root = tmp_path_factory.mktemp("review") / "mlruns"
    # With a confirmation: its study ("breast_cancer_mlp:confirm") is annotated too.
    settings = {"tracking.review": True, "trainer.max_epochs": 3}
    overrides = tiny(root, **settings, **{"study.confirm": "{top_k: 1, seeds: 2}"})
    result = run_study(EXPERIMENTS / "breast_cancer_mlp.yaml", trials=3, overrides=overrides)
    return root, result


def _notes(study: optuna.Study) -> dict:
    attrs = study._storage.get_study_system_attrs(study._study_id)
    notes = {t.number: get_note_from_system_attrs(attrs, t._trial_id) for t in study.trials}
    notes[None] = get_note_from_system_attrs(attrs, None)
    return notes


def test_every_trial_and_the_study_get_a_note_with_figures_and_links_both_ways(reviewed_study):
    from workbench.study.review import Links, annotate
    from workbench.tracking import open_store

    root, result = reviewed_study
    study = result.load_study()
    client = MlflowClient(result.tracking_uri)
    notes = _notes(study)
    folder = root / "optuna-artifacts"
    for trial in study.trials:
        body = notes[trial.number]["body"]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert body.startswith(f"## Trial {trial.number}: {trial.state.name}")
        assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in body
        if trial.values:
            assert f"{trial.values[0]:.4g}" in body  # the objective
        # Every embedded figure is a PNG or SVG in the dashboard's artifact store.
        embedded = [line for line in body.splitlines() if line.startswith("![")]
        names = [line[2 : line.index("]")] for line in embedded]
        assert "learning_curves" in names
        if trial.number == result.best_trial:
            assert "champion" in body.splitlines()[0]
            assert {"confusion_matrix", "reliability"} <= set(names)
        for line in embedded:
            artifact_id = line.rstrip(")").rsplit("/", 1)[1]
            assert _is_figure((folder / artifact_id).read_bytes())
        # The run links back to the trial's dashboard page and carries sortable columns.
        description = run.data.tags["mlflow.note.content"]
        assert f"/dashboard/studies/{study._study_id}/trials?numbers={trial.number}" in description
        assert run.data.tags["workbench.trial_state"] == trial.state.name
        if trial.values:
            assert float(run.data.tags["workbench.objective"]) == pytest.approx(trial.values[0])
    study_note = notes[None]["body"]
    assert f"trial {result.best_trial}" in study_note
    assert f"/runs/{result.parent_run_id}" in study_note
    parent = client.get_run(result.parent_run_id)
    assert f"/dashboard/studies/{study._study_id})" in parent.data.tags["mlflow.note.content"]
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # Again: nothing to write; with the UIs elsewhere, each note is rewritten with the new
    # addresses and no figure is uploaded twice.
    store = open_store(root, "workbench")
    again = annotate(result.storage_url, store, result.study_name)
    assert (again.notes_written, again.figures_uploaded) == (0, 0)
    moved = annotate(result.storage_url, store, result.study_name, Links("http://127.0.0.1:5999"))
    assert (moved.notes_written, moved.figures_uploaded) == (len(study.trials) + 1, 0)
    assert "http://127.0.0.1:5999/#/experiments/" in _notes(study)[0]["body"]
    annotate(result.storage_url, store, result.study_name)  # back to the defaults

    # A figure recorded by another machine (a shared study, each machine its own root) is not
    # in this root's folder: this pass uploads it here and the note points at the new file.
    first = study.trials[0]
    embedded = [line for line in _notes(study)[0]["body"].splitlines() if "learning_curves" in line]
    (folder / embedded[0].rstrip(")").rsplit("/", 1)[1]).unlink()
    again = annotate(result.storage_url, store, result.study_name)
    assert again.figures_uploaded == 1
    line = [x for x in _notes(study)[first.number]["body"].splitlines() if "learning_curves" in x]
    assert _is_figure((folder / line[0].rstrip(")").rsplit("/", 1)[1]).read_bytes())


def test_a_note_edited_through_the_dashboard_reaches_the_mlflow_run(reviewed_study):
    from workbench.cli import main
    from workbench.deploy.ui import ui_commands

    root, result = reviewed_study
    study = result.load_study()
    trial = study.trials[0]
    run_id = trial.user_attrs["mlflow_run_id"]
    port = free_port()
    command = ui_commands(root.resolve(), "127.0.0.1", free_port(), port)["optuna-dashboard"]
    url = f"http://127.0.0.1:{port}"
    with serving(command, f"{url}/api/studies"):
        version = _notes(study)[trial.number]["version"]
        review = "Reviewed: the val curve flattens after epoch 2; **keep** this one."
        request = urllib.request.Request(
            f"{url}/api/studies/{study._study_id}/{trial._trial_id}/note",
            data=json.dumps({"version": version + 1, "body": review}).encode(),
            headers={"Content-Type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status in (200, 204)
    client = MlflowClient(result.tracking_uri)
    assert "workbench.review" not in client.get_run(run_id).data.tags
    assert main(["review", "--root", str(root)]) == 0
    confirmed = optuna.load_study(
        study_name="breast_cancer_mlp:confirm", storage=result.storage_url
    )
    assert all(n["body"].startswith("## Trial") for n in _notes(confirmed).values() if n["version"])
    assert len([n for n in _notes(confirmed).values() if n["version"]]) == 2
    tags = client.get_run(run_id).data.tags
    assert tags["workbench.review"] == review
    assert tags["workbench.review.version"] == str(version + 1)
    # The reviewer's note stays: workbench does not write over it again.
    assert main(["review", "--root", str(root)]) == 0
    assert _notes(study)[trial.number]["body"] == review
    assert _notes(study)[1]["body"].startswith("## Trial 1")


def test_review_of_a_root_without_a_study_names_it(tmp_path, capsys):
    from workbench.cli import main

    assert main(["review", "--root", str(tmp_path / "nowhere")]) == 2
    assert "no optuna.db" in capsys.readouterr().err


def test_a_trials_note_and_curves_are_there_while_the_study_still_runs(tmp_path):
    """Each trial's note is written as it ends, by the process that ran it: while a later trial
    runs, every finished trial already has its note with its learning curves embedded."""
    import time

    from workbench.study import run_study

    root = tmp_path / "mlruns"
    settings = {"tracking.review": True, "trainer.max_epochs": 40, "trainer.patience": 40}
    overrides = tiny(root, **settings, **{"study.pruner": "none", "study.pruner_options": "{}"})
    handle = run_study(
        EXPERIMENTS / "breast_cancer_mlp.yaml", trials=3, overrides=overrides, background=True
    )
    storage = f"sqlite:///{root / 'optuna.db'}"
    seen_running = set()
    while not handle.done:
        time.sleep(0.05)
        if handle.running is None:  # the stores may not exist yet: opening one would race
            continue
        study = optuna.load_study(study_name="breast_cancer_mlp", storage=storage)
        running = [t.number for t in study.trials if t.state.name == "RUNNING"]
        if not running or running[0] == 0:
            continue
        notes = _notes(study)
        finished = [t for t in study.trials if t.state.is_finished()]
        for trial in finished:
            body = notes[trial.number]["body"]
            assert body.startswith(f"## Trial {trial.number}: {trial.state.name}"), body
            assert "![learning_curves](" in body
            assert "champion" not in body  # known when the study ends, not before
        seen_running.add(running[0])
    result = handle.result()
    assert seen_running, "never saw a trial after the first one running"
    champion = _notes(result.load_study())[result.best_trial]["body"].splitlines()[0]
    assert champion.endswith("· champion")  # marked when the study ended


def test_learning_curves_svg_places_each_epoch_and_leaves_a_gap_for_a_missing_value():
    import xml.etree.ElementTree as ET

    from workbench.plots import learning_curves_svg

    history = [
        {"epoch": 0, "train/loss": 1.0, "val/loss": 1.0, "val/acc": 0.5},
        {"epoch": 1, "train/loss": 0.5, "val/loss": float("nan"), "val/acc": 0.75},
        {"epoch": 2, "train/loss": 0.0, "val/loss": 0.5, "val/acc": 1.0},
    ]
    svg = ET.fromstring(learning_curves_svg(history, width=300))
    ns = "{http://www.w3.org/2000/svg}"
    assert svg.get("width") == "600"  # two panels: loss, acc
    titles = [t.text for t in svg.iter(f"{ns}text")]
    assert titles[0] == "loss" and "acc" in titles and "epoch" in titles
    lines = [p.get("points") for p in svg.iter(f"{ns}polyline")]
    # Loss panel: x from 52 to 290 (300 - 52 left - 10 right = 238 wide), y from 24 (at 1.0)
    # to 166 (at 0.0; 200 - 24 top - 34 bottom = 142 high).
    assert lines[0] == "52.0,24.0 171.0,95.0 290.0,166.0"  # train: every epoch
    assert lines[1] == "352.0,166.0 471.0,95.0 590.0,24.0"  # val/acc, no train/acc logged
    # val/loss: the NaN at epoch 2 leaves a gap, so its two values are dots
    dots = [(c.get("cx"), c.get("cy")) for c in svg.iter(f"{ns}circle")]
    assert dots == [("52.0", "24.0"), ("290.0", "95.0")]
    assert {"1", "3", "0.5", "0"} <= set(titles)  # first and last epoch, y range
    # A flat curve at a large value (0.5 above and below would round away) is still drawn.
    flat = learning_curves_svg([{"epoch": e, "val/loss": 2.0**60} for e in range(3)])
    assert "nan" not in flat and "inf" not in flat and "<polyline" in flat
