"""Where reviewers look: optuna-dashboard and the MLflow UI, linked both ways.

``annotate`` gives each finished trial of a study a dashboard note (its metrics, how it ended, a
link to its MLflow run) with its figures embedded (learning curves; for the champion also its
confusion matrix, reliability diagram and attributions), and the study a note (the champion,
its metrics, links to the MLflow parent run and the study report). Each MLflow run in turn gets
a description linking to its dashboard page and sortable tags (trial number, state, objective),
and a note a person edited in the dashboard comes back as the run's ``workbench.review`` tag.

It runs for each trial as it ends (``AnnotateEachTrial``, in the process that ran it), for the
whole study when it ends, and whenever ``workbench ui`` or ``workbench review`` starts (so the
links carry the ports the UIs really listen on). Figures are files in an Optuna
``FileSystemArtifactStore`` under ``<root>/optuna-artifacts`` (``workbench ui`` hands it to the
dashboard as ``--artifact-dir``). Optuna refuses artifacts on a finished trial, so a trial's
figures are recorded the way the dashboard records them (an artifact entry in the study's system
attributes, which its trial page lists); the study's go through ``optuna.artifacts``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from workbench import tracking

ARTIFACT_DIR = "optuna-artifacts"
MLFLOW_UI, DASHBOARD_UI = "http://127.0.0.1:5000", "http://127.0.0.1:8080"
REVIEW_TAG = "workbench.review"
TRAINING_VIEW = "workflowType=machine_learning"
DESCRIPTION = "mlflow.note.content"  # the run description the MLflow UI shows and edits
_WRITTEN = "workbench:note:"  # study attr: the note version and body hash workbench wrote
_FIGURES = "workbench:figures:"  # study attr: a trial's figures, name -> artifact id
_DASHBOARD_ARTIFACT = "dashboard:artifacts:"  # optuna-dashboard's trial artifact entries
_FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)


@dataclass(frozen=True)
class Links:
    """Where the two UIs listen (``workbench ui``'s defaults unless told)."""

    mlflow_ui: str = MLFLOW_UI
    dashboard_ui: str = DASHBOARD_UI

    # MLflow 3.17's UI opens an experiment as GenAI (a traces overview) unless the page's
    # ``workflowType`` says otherwise; its ``mlflow.experimentKind`` tag is not consulted.
    def experiment(self, experiment_id: str) -> str:
        return f"{self.mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}?{TRAINING_VIEW}"

    def run(self, experiment_id: str, run_id: str) -> str:
        base = f"{self.mlflow_ui.rstrip('/')}/#/experiments/{experiment_id}"
        return f"{base}/runs/{run_id}?{TRAINING_VIEW}"

    def study(self, study_id: int) -> str:
        return f"{self.dashboard_ui.rstrip('/')}/dashboard/studies/{study_id}"

    def trial(self, study_id: int, number: int) -> str:
        return f"{self.study(study_id)}/trials?numbers={number}"


@dataclass
class Reviewed:
    """What one ``annotate`` pass did."""

    notes_written: int = 0
    figures_uploaded: int = 0
    reviews_synced: int = 0


def annotate(
    storage: str | optuna.storages.BaseStorage,
    store: tracking.Store,
    study_name: str,
    links: Links = Links(),
    figures: bool = True,
    trials: Collection[int] | None = None,
) -> Reviewed:
    """Notes, figures and links for study ``study_name`` and its finished trials (only trials
    numbered in ``trials`` when given, and then neither a study note nor a champion: which
    trial that is is known when the study ends); a note a person edited since workbench wrote
    it is not overwritten but copied to the MLflow run. Passes on one root take turns (a file
    lock), so that two never upload one figure twice or interleave a note's versions."""
    folder = store.root / ARTIFACT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    with tracking.root_lock(folder):  # <root>/optuna-artifacts/.lock: one pass at a time
        return _annotate(storage, store, study_name, links, figures, trials, folder)


def _annotate(storage, store, study_name, links, figures, trials, folder: Path) -> Reviewed:
    from optuna.artifacts import FileSystemArtifactStore

    study = optuna.load_study(study_name=study_name, storage=storage)
    storage, study_id = study._storage, study._study_id
    artifacts = FileSystemArtifactStore(str(folder))
    attrs = storage.get_study_system_attrs(study_id)
    done = Reviewed()
    champion = _champion(study) if trials is None else None
    for trial in study.get_trials(deepcopy=False, states=_FINISHED):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is None or (trials is not None and trial.number not in trials):
            continue
        try:
            run = store.client.get_run(run_id)
        except Exception:  # noqa: BLE001 — a run deleted from MLflow: nothing to link
            continue
        if _sync_review(storage, study_id, trial._trial_id, attrs, store, run_id):
            done.reviews_synced += 1
            continue
        wanted = _figure_names(trial, champion) if figures else []
        ids = _trial_figures(
            storage, study_id, trial, run, store, artifacts, attrs, wanted, folder
        )  # fmt: skip
        done.figures_uploaded += ids.pop("_uploaded", 0)
        body = trial_note(study_id, trial, run, links, ids, champion == trial.number)
        if _write_note(storage, study_id, trial._trial_id, attrs, body):
            done.notes_written += 1
        _link_run(store, run, links.trial(study_id, trial.number), _run_tags(study, trial))
    if trials is not None:
        return done
    try:
        parent = tracking.find_study_run(store, study_name)
    except ValueError:  # a confirmation's or reproduction's study ("name:confirm"): no parent
        parent = None
    if parent is not None:
        run = store.client.get_run(parent)
        if _sync_review(storage, study_id, None, attrs, store, parent):
            done.reviews_synced += 1
        else:
            ids = _study_figures(study, run, store, artifacts, attrs) if figures else {}
            body = study_note(study, run, links, ids, champion)
            if _write_note(storage, study_id, None, attrs, body):
                done.notes_written += 1
        _link_run(store, run, links.study(study_id), {})
    return done


class AnnotateEachTrial:
    """An ``optimize`` callback: a trial's note and learning curves as soon as it ends, drawn
    by the worker process that ran it. A long study's finished trials can be reviewed while it
    runs, and N workers draw their own trials' figures side by side (a figure takes about
    0.2 s). At the study's end ``annotate`` adds the champion's figures and the study's note,
    and rewrites only the notes that changed (the champion's mark)."""

    def __init__(self, store: tracking.Store) -> None:
        self.store = store

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            annotate(study._storage, self.store, study.study_name, trials={trial.number})
        except Exception as exc:  # noqa: BLE001 — a note is never worth a study
            print(f"trial {trial.number}: no dashboard note: {type(exc).__name__}: {exc}")


def annotate_root(root: str | Path, links: Links = Links(), experiment: str = "workbench") -> dict:
    """``annotate`` every study in a workbench root's Optuna storage: what each pass did."""
    from workbench.study.config import open_storage

    root = Path(root).resolve()
    storage = open_storage(f"sqlite:///{root / 'optuna.db'}")
    store = tracking.open_store(root, experiment)
    done = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        try:
            done[summary.study_name] = annotate(storage, store, summary.study_name, links)
        except Exception as exc:  # noqa: BLE001 — one odd study does not stop the others
            print(f"{summary.study_name}: not annotated: {type(exc).__name__}: {exc}")
    return done


def trial_note(study_id: int, trial, run, links: Links, figures: dict, champion: bool) -> str:
    """A trial's note: state, objective and test metrics, parameters, how it ended, figures."""
    metrics = run.data.metrics
    state = trial.state.name
    lines = [f"## Trial {trial.number}: {state}{' · champion' if champion else ''}", ""]
    if trial.values:
        lines.append("Objective: " + ", ".join(f"**{v:.4g}**" for v in trial.values))
    tests = {
        k: v for k, v in sorted(metrics.items()) if k.startswith("test/") and k.count("/") == 1
    }
    if tests:
        lines.append("Test: " + ", ".join(f"{k} {v:.4g}" for k, v in tests.items()))
    lines.append(f"Ended: {_end_reason(trial, run)}")
    if trial.params:
        params = ", ".join(f"`{k}`={_short(v)}" for k, v in trial.params.items())
        lines.append(f"Parameters: {params}")
    url = links.run(run.info.experiment_id, run.info.run_id)
    lines += ["", f"[MLflow run {run.info.run_id[:8]} ↗]({url})"]
    for name, artifact_id in figures.items():
        lines += ["", f"![{name}](/artifacts/{study_id}/{trial._trial_id}/{artifact_id})"]
    return "\n".join(lines) + "\n"


def study_note(study, run, links: Links, figures: dict, champion: int | None) -> str:
    """The study's note: the champion and its metrics, trial counts, links, the study's figures."""
    trials = study.get_trials(deepcopy=False)
    complete, pruned, failed = (sum(t.state == s for t in trials) for s in _FINISHED)
    lines = [f"## Study {study.study_name}", ""]
    lines.append(f"Trials: {complete} complete, {pruned} pruned, {failed} failed")
    metrics = run.data.metrics
    if champion is not None:
        best = {
            k.removeprefix("best/"): v for k, v in sorted(metrics.items()) if k.startswith("best/")
        }
        shown = {k: v for k, v in best.items() if k.count("_") <= 1 and "class" not in k}
        scores = ", ".join(f"{k} {v:.4g}" for k, v in shown.items())
        lines.append(
            f"Champion: [trial {champion}]({links.trial(study._study_id, champion)})"
            + (f": {scores}" if scores else "")
        )
        confirmed = {k: v for k, v in sorted(metrics.items()) if k.startswith("confirm/")}
        if confirmed:
            lines.append(
                "Confirmed over seeds: "
                + ", ".join(f"{k} {v:.4g}" for k, v in list(confirmed.items())[:6])
            )
    lines += ["", f"[MLflow parent run ↗]({links.run(run.info.experiment_id, run.info.run_id)})"]
    if "report" in figures:
        lines.append(f"[Study report ↗](/artifacts/{study._study_id}/{figures['report']})")
    for name, artifact_id in figures.items():
        if name != "report":
            lines += ["", f"![{name}](/artifacts/{study._study_id}/{artifact_id})"]
    return "\n".join(lines) + "\n"


# --- notes ----------------------------------------------------------------------------------


def _key(trial_id: int | None) -> str:
    return _WRITTEN + ("study" if trial_id is None else str(trial_id))


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _edited(attrs: dict, trial_id: int | None, note: dict) -> bool:
    """A note whose current version is not the one workbench wrote: a person's."""
    written = attrs.get(_key(trial_id))
    if note["version"] == 0:
        return False
    return written is None or int(written["version"]) != int(note["version"])


def _write_note(storage, study_id: int, trial_id: int | None, attrs: dict, body: str) -> bool:
    """Write ``body`` unless it is already the note (True when written)."""
    from optuna_dashboard._note import get_note_from_system_attrs, save_note_with_version

    note = get_note_from_system_attrs(attrs, trial_id)
    written = attrs.get(_key(trial_id))
    if (
        written is not None
        and written["sha"] == _digest(body)
        and written["version"] == note["version"]
    ):
        return False
    version = int(note["version"]) + 1
    save_note_with_version(storage, study_id, trial_id, version, body)
    record = {"version": version, "sha": _digest(body)}
    storage.set_study_system_attr(study_id, _key(trial_id), record)
    attrs[_key(trial_id)] = record
    return True


def _sync_review(storage, study_id: int, trial_id, attrs: dict, store, run_id: str) -> bool:
    """Copy a person's note to the run as tags (True when the note is a person's)."""
    from optuna_dashboard._note import get_note_from_system_attrs

    note = get_note_from_system_attrs(attrs, trial_id)
    if not _edited(attrs, trial_id, note):
        return False
    tags = tracking.run_tags(store, run_id)
    if tags.get(f"{REVIEW_TAG}.version") != str(note["version"]):
        tracking.set_tags(
            store,
            run_id,
            {REVIEW_TAG: note["body"][:5000], f"{REVIEW_TAG}.version": note["version"]},
        )
    return True


# --- MLflow side --------------------------------------------------------------------------


def _run_tags(study, trial) -> dict[str, str]:
    """Sortable and filterable columns for the MLflow run table."""
    tags = {"workbench.trial_state": trial.state.name}
    if trial.values:
        tags["workbench.objective"] = f"{trial.values[0]:.6f}"
    return tags


def _link_run(store, run, url: str, tags: dict[str, str]) -> None:
    """The run's description links to its dashboard page (a description a person wrote that
    does not start with workbench's link line is kept, the link put before it)."""
    line = f"[optuna-dashboard ↗]({url})"
    current = run.data.tags.get(DESCRIPTION, "")
    first, _, rest = current.partition("\n")
    if first.startswith("[optuna-dashboard ↗]("):
        current = rest
    text = line + ("\n" + current if current else "")
    wanted = {DESCRIPTION: text, **tags}
    if any(run.data.tags.get(k) != v for k, v in wanted.items()):
        tracking.set_tags(store, run.info.run_id, wanted)


def _end_reason(trial, run) -> str:
    epochs = len(trial.intermediate_values)
    reason = run.data.tags.get("workbench.end_reason")
    if trial.state == optuna.trial.TrialState.PRUNED:
        return f"pruned after epoch {epochs}"
    if trial.state == optuna.trial.TrialState.FAIL:
        return f"failed: {reason or 'no reason recorded'}"
    trained = int(run.data.metrics.get("epochs", epochs))
    return f"completed after {trained} epoch{'s' if trained != 1 else ''}" + (
        f" ({reason})" if reason else ""
    )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _champion(study) -> int | None:
    from workbench.study.summary import best_trial

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return None
    return best_trial(study).number


# --- figures --------------------------------------------------------------------------------


def _figure_names(trial, champion: int | None) -> list[str]:
    names = ["learning_curves"]
    if trial.number == champion:
        names += ["confusion_matrix", "reliability", "attributions"]
    return names


def _trial_figures(storage, study_id, trial, run, store, artifacts, attrs, wanted, folder) -> dict:
    """The trial's figures in the artifact store (uploaded once), name → artifact id. A figure
    recorded by another machine (a shared PostgreSQL study, each machine its own root) is not
    in this root's artifact folder: it is uploaded here again."""
    key = _FIGURES + str(trial._trial_id)
    ids = {n: i for n, i in attrs.get(key, {}).items() if (folder / i).is_file()}
    missing = [n for n in wanted if n not in ids]
    uploaded = 0
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            for name, path in _draw(trial, run, store, missing, Path(tmp)).items():
                ids[name] = _upload_trial_file(storage, study_id, trial._trial_id, artifacts, path)
                uploaded += 1
        storage.set_study_system_attr(study_id, key, ids)
        attrs[key] = ids
    shown = {n: ids[n] for n in wanted if n in ids}
    return {**shown, "_uploaded": uploaded}


def _draw(trial, run, store, names: list[str], folder: Path) -> dict[str, Path]:
    """Figure files for ``names``: the run's own PNG plots where it logged them, else learning
    curves drawn from its metric history (SVG); attributions from its ``explain/`` figures."""
    logged = _logged_pngs(store, run.info.run_id)
    files = {}
    for name in names:
        if name == "attributions":
            found = sorted(path for path in logged.values() if path.startswith("explain/"))
            chosen = found[0] if found else None
        else:
            chosen = logged.get(f"plots/{name}.png")
        if chosen is not None:
            files[name] = tracking.download(store, run.info.run_id, chosen, folder)
        elif name == "learning_curves":
            history = tracking.run_history(store.tracking_uri, run.info.run_id)
            if history:  # an SVG: matplotlib's PNG would cost 0.25 s for every trial
                from workbench import plots

                path = folder / "learning_curves.svg"
                path.write_text(plots.learning_curves_svg(history), encoding="utf-8")
                files[name] = path
    return files


def _logged_pngs(store, run_id: str) -> dict[str, str]:
    """The PNG figures at the top of a run's ``plots/`` and ``explain/`` folders, by path."""
    found = {}
    for top in ("plots", "explain"):
        try:
            entries = store.client.list_artifacts(run_id, top)
        except Exception:  # noqa: BLE001 — no such folder
            continue
        found.update({e.path: e.path for e in entries if not e.is_dir and e.path.endswith(".png")})
    return found


def _upload_trial_file(storage, study_id: int, trial_id: int, artifacts, path: Path) -> str:
    """A finished trial's file, recorded as optuna-dashboard records its own uploads."""
    import mimetypes
    import uuid

    artifact_id = str(uuid.uuid4())
    with open(path, "rb") as handle:
        artifacts.write(artifact_id, handle)
    meta = {
        "artifact_id": artifact_id,
        "filename": path.name,
        "mimetype": mimetypes.guess_type(path.name)[0] or "application/octet-stream",
        "encoding": None,
    }
    key = f"{_DASHBOARD_ARTIFACT}{trial_id}:{artifact_id}"
    storage.set_study_system_attr(study_id, key, json.dumps(meta))
    return artifact_id


def _study_figures(study, run, store, artifacts, attrs) -> dict:
    """The study's optimisation history (or Pareto front) and report, uploaded once,
    name → artifact id."""
    from optuna.artifacts import upload_artifact

    key = _FIGURES + "study"
    ids = dict(attrs.get(key, {}))
    run_id = run.info.run_id
    available = {Path(p).stem: p for p in _logged_pngs(store, run_id)}
    try:
        reports = [e.path for e in store.client.list_artifacts(run_id) if e.path.endswith(".html")]
    except Exception:  # noqa: BLE001 — a run without artifacts
        reports = []
    if reports:
        available["report"] = reports[0]
    missing = [n for n in ("optimization_history", "pareto_front", "report") if n in available]
    missing = [n for n in missing if n not in ids]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            for name in missing:
                path = tracking.download(store, run_id, available[name], Path(tmp))
                ids[name] = upload_artifact(
                    artifact_store=artifacts, file_path=str(path), study_or_trial=study
                )
        study._storage.set_study_system_attr(study._study_id, key, ids)
        attrs[key] = ids
    return ids
