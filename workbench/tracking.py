"""MLflow, and only MLflow: store locations, study/trial runs, metrics, artifacts, model registry.

Runs are addressed by id through ``MlflowClient`` rather than the global active-run stack, so a
notebook kernel never inherits a dangling run and a child run can never lose its parent.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

# Tags the workbench sets; the MLflow UI can filter on any of them.
ROLE, STUDY, TRIAL = "workbench.role", "workbench.study", "workbench.trial"
PARENT = "mlflow.parentRunId"


@dataclass
class Store:
    """Where one workbench root keeps its runs."""

    root: Path
    tracking_uri: str
    experiment_id: str

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)


def open_store(root: str | Path, experiment: str, tracking_uri: str | None = None) -> Store:
    """Point MLflow at ``sqlite:///<root>/mlflow.db`` or ``tracking_uri``; ensure the experiment.

    A database that is not one, or a tracking server that does not answer, stops here with an
    error naming the file or URL. Two first commands on a fresh root take turns (a file lock)
    so that they do not both create the schema.
    """
    from mlflow.exceptions import MlflowException

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{root / 'mlflow.db'}"
    where = f"tracking.mlflow_uri: {uri}"
    if uri.startswith("sqlite:///"):
        where = f"the MLflow database {uri.removeprefix('sqlite:///')}"
        check_sqlite_file(Path(uri.removeprefix("sqlite:///")), "MLflow")
    elif uri.startswith(("http://", "https://")):
        _check_server(uri)  # MLflow's client would retry a dead server for minutes
    mlflow.set_tracking_uri(uri)
    try:
        with root_lock(root):
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                location = None if uri.startswith("http") else (root / "artifacts").as_uri()
                experiment_id = client.create_experiment(experiment, artifact_location=location)
            else:
                experiment_id = found.experiment_id
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConnectionError(f"{where}: cannot be opened: {first}") from exc
    return Store(root, uri, experiment_id)


def check_sqlite_file(path: Path, kind: str) -> None:
    """A file that exists must be an SQLite database (a truncated or foreign file is named)."""
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as handle:
            header = handle.read(16)
        if header != b"SQLite format 3\x00":
            raise ConnectionError(
                f"{path}: not an SQLite database (the {kind} store is corrupt or was replaced); "
                "restore it from a backup or point tracking.root elsewhere"
            )


def _check_server(uri: str, timeout_s: float = 10) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(
            f"tracking.mlflow_uri: no MLflow tracking server answers at {uri} ({reason})"
        ) from exc


@contextlib.contextmanager
def root_lock(root: Path):
    """An exclusive lock on ``<root>/.lock`` among the processes of this machine."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow filter string. Only identifier characters pass: MLflow's
    filter grammar has no escape, so a quote in a value would change the query."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", value):
        raise ValueError(f"refusing to search MLflow for {value!r}: not a name or run id")
    return f"'{value}'"


def find_study_run(store: Store, study: str) -> str | None:
    """The parent run of study ``study`` in this experiment, if one exists."""
    runs = store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.`{ROLE}` = 'study' AND tags.`{STUDY}` = {filter_value(study)}",
        max_results=2,
    )
    return runs[0].info.run_id if runs else None


def run_tags(store: Store, run_id: str) -> dict[str, str]:
    return dict(store.client.get_run(run_id).data.tags)


def start_run(store: Store, name: str, tags: dict[str, str], parent: str | None = None) -> str:
    """Open a run (nested under ``parent`` when given) and return its id."""
    tags = dict(tags)
    if parent is not None:
        tags[PARENT] = parent
    run = store.client.create_run(store.experiment_id, run_name=name, tags=tags)
    return run.info.run_id


@contextlib.contextmanager
def child_run(
    store: Store,
    parent: str,
    name: str,
    tags: dict[str, str],
    killed_by: tuple[type[BaseException], ...] = (),
):
    """A run under ``parent`` that closes itself by how the block ends: FINISHED on a normal
    exit; KILLED on Ctrl-C or an exception of ``killed_by`` (e.g. a pruned trial); FAILED with
    the exception as its reason otherwise. The exception goes on."""
    run_id = start_run(store, name, tags, parent=parent)
    try:
        yield run_id
    except KeyboardInterrupt:
        end_run(store, run_id, "KILLED", "interrupted (Ctrl-C)")
        raise
    except killed_by as exc:
        end_run(store, run_id, "KILLED", str(exc) or type(exc).__name__)
        raise
    except BaseException as exc:
        end_run(store, run_id, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    end_run(store, run_id, "FINISHED")


def reopen_run(store: Store, run_id: str) -> None:
    store.client.update_run(run_id, status="RUNNING")


def end_run(store: Store, run_id: str, status: str, reason: str | None = None) -> None:
    """Close a run as FINISHED, KILLED or FAILED; a reason is kept as a tag for the UI."""
    if reason:
        store.client.set_tag(run_id, "workbench.end_reason", reason[:4000])
    store.client.set_terminated(run_id, status=status)


def child_runs(store: Store, parent: str) -> list:
    """Every run nested under ``parent``."""
    return store.client.search_runs(
        [store.experiment_id],
        filter_string=f"tags.`{PARENT}` = {filter_value(parent)}",
        max_results=10_000,
    )


def log_params(store: Store, run_id: str, params: dict[str, Any]) -> None:
    """Log all params in one batch, from one place (MLflow refuses a param logged twice)."""
    store.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])


def log_metrics(store: Store, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log a dict of metrics in one batched call."""
    import time

    now = int(time.time() * 1000)
    store.client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
    )


def set_tags(store: Store, run_id: str, tags: dict[str, Any]) -> None:
    store.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_figure(store: Store, run_id: str, figure, artifact_file: str) -> None:
    store.client.log_figure(run_id, figure, artifact_file)


def log_json(store: Store, run_id: str, data: Any, artifact_file: str) -> None:
    store.client.log_text(run_id, json.dumps(data, indent=2, default=str), artifact_file)


def log_file(store: Store, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
    store.client.log_artifact(run_id, str(path), artifact_dir)


def log_arrays(store: Store, run_id: str, artifact_file: str, **arrays) -> None:
    """Save numpy arrays as one ``.npz`` artifact."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        np.savez_compressed(path, **arrays)
        store.client.log_artifact(run_id, str(path), str(Path(artifact_file).parent) or None)


def log_model(store: Store, run_id: str, network, input_example) -> str:
    """Log a plain network with MLflow's PyTorch flavour (torch.export ``.pt2``, no pickle).

    The input example must hold at least two rows so the exported batch dimension stays dynamic.
    Requirements are given explicitly: inferring them re-imports the model and costs seconds.
    MLflow's own check of the serving example (load the saved model back, predict, warn on
    failure) is off: it costs ~0.2 s a trial. The tests do it instead (tests/test_deploy.py),
    and load every experiment's registered model and compare it with its checkpoint.
    """
    import mlflow.pytorch
    import torch

    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pytorch.log_model(
            network.eval().cpu(),
            name="model",
            input_example=input_example,
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"mlflow=={mlflow.__version__}",
            ],
            validate_serving_input=False,
        )
    return info.model_uri


def register_model(
    store: Store, model_uri: str, name: str, run_id: str, alias: str = "champion"
) -> int:
    """Point ``alias`` of registered model ``name`` at the model of ``run_id``.

    A version already registered from that run is reused, so a rerun of a finished study (or
    one killed while registering) adds no version when the champion did not change.
    """
    client = store.client
    existing = client.search_model_versions(
        f"name = {filter_value(name)} AND run_id = {filter_value(run_id)}"
    )
    if existing:
        version = min(existing, key=lambda v: int(v.version))
    else:
        # mlflow.register_model links the version to the logged model (a tracking server insists).
        version = mlflow.register_model(model_uri, name, await_registration_for=0)
    client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def claim_registered_model(store: Store, name: str, study: str) -> None:
    """Refuse to let ``study`` move the aliases of a registered model another study owns; a
    model registered by no study yet is claimed for ``study`` (a tag on the registered model)."""
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        owner = client.get_registered_model(name).tags.get(STUDY)
    except MlflowException:  # not registered yet
        client.create_registered_model(name, tags={STUDY: study})
        return
    if owner is None:
        client.set_registered_model_tag(name, STUDY, study)
    elif owner != study:
        raise ValueError(
            f"tracking.register_as: the registered model {name!r} belongs to study {owner!r}; "
            f"study {study!r} would move its @champion. Register under another name "
            f"(--set tracking.register_as=...)."
        )


def load_model(model_uri: str):
    """Load a logged network back (``models:/name@alias``, ``models:/m-…`` or ``runs:/…``).

    The network is a ``torch.export`` graph traced in eval mode, whose ``train()``/``eval()``
    raise; callers such as SHAP call ``eval()``, so both are made to do nothing.
    """
    import types

    import mlflow.pytorch

    network = mlflow.pytorch.load_model(model_uri)
    try:
        network.eval()
    except NotImplementedError:
        for module in network.modules():
            module.train = types.MethodType(lambda self, mode=True: self, module)
            module.eval = types.MethodType(lambda self: self, module)
    return network


def scoring_app(model_uri: str) -> tuple[Any, str | None]:
    """MLflow's own scoring app (what ``mlflow models serve`` runs) for a logged model, and its
    input schema as text (resolved through ``MLFLOW_TRACKING_URI``)."""
    import mlflow.artifacts
    from mlflow.pyfunc import scoring_server

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    model = scoring_server.load_model_with_mlflow_config(local)
    schema = model.metadata.get_input_schema()
    return scoring_server.init(model), str(schema) if schema else None


def run_history(tracking_uri: str, run_id: str) -> list[dict[str, float]]:
    """A run's per-epoch metrics as rows ``{"epoch": e, "val/acc": ..., ...}`` (for plotting)."""
    client = MlflowClient(tracking_uri)
    rows: dict[int, dict[str, float]] = {}
    epochs = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    for key in client.get_run(run_id).data.metrics:
        for metric in client.get_metric_history(run_id, key):
            if metric.step in epochs:
                rows.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [rows[e] for e in sorted(rows)]


def git_commit(path: str | Path = ".") -> str:
    """The current git commit of ``path`` (with ``-dirty`` when there are local changes)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def logged_model_uri(store: Store, run_id: str) -> str:
    """The URI of the model a run logged; clear errors for a missing run or a run without one."""
    from mlflow.exceptions import MlflowException

    try:
        run = store.client.get_run(run_id)
    except MlflowException as exc:
        raise LookupError(f"run id {run_id!r}: no such run in {store.tracking_uri}") from exc
    outputs = run.outputs.model_outputs if run.outputs else []
    if not outputs:
        raise LookupError(f"run id {run_id!r}: the run has no logged model (is it a trial run?)")
    return f"models:/{outputs[0].model_id}"


def resolve_run_id(store: Store, source: str) -> str:
    """The run behind a run id or a ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or
    ``models:/m-...`` URI; a clear ``LookupError`` for anything the store does not hold."""
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        if not source.startswith("models:/"):
            return client.get_run(source).info.run_id
        target = source.removeprefix("models:/")
        if target.startswith("m-"):
            return client.get_logged_model(target).source_run_id
        name, _, alias = target.partition("@")
        if alias:
            return client.get_model_version_by_alias(name, alias).run_id
        name, _, version = target.partition("/")
        return client.get_model_version(name, version).run_id
    except MlflowException as exc:
        what = source if source.startswith("models:/") else f"run id {source!r}: no such run"
        raise LookupError(f"{what} in {store.tracking_uri}") from exc


def log_explanation(store: Store, run_id: str, report, prefix: str = "explain") -> None:
    """An explanation report into a run: PNG plots, the arrays (.npz), trust metrics (JSON and
    MLflow metrics)."""
    import numpy as np

    for name, figure in report.figures().items():
        log_figure(store, run_id, figure, f"{prefix}/{name}.png")
    arrays = {name: e.attributions for name, e in report.explanations.items()}
    first = next(iter(report.explanations.values()))
    arrays.update(inputs=first.display, targets=first.targets, probabilities=first.probabilities)
    if first.labels is not None:
        arrays["labels"] = np.asarray(first.labels)
    log_arrays(store, run_id, f"{prefix}/attributions.npz", **arrays)
    log_json(
        store, run_id, {"trust": report.trust, "settings": report.settings}, f"{prefix}/trust.json"
    )
    metrics = {f"{prefix}/{k}": v for k, v in report.trust.items() if np.isfinite(v)}
    log_metrics(store, run_id, metrics)


def run_spec(store: Store, run_id: str) -> dict:
    """The experiment spec of a trial run, from ``spec.json`` of its study's parent run."""
    run = store.client.get_run(run_id)
    parent = run.data.tags.get("mlflow.parentRunId", run_id)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = store.client.download_artifacts(parent, "spec.json", tmp)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise LookupError(f"run id {run_id!r}: its study run has no spec.json") from exc
        return json.loads(Path(path).read_text())
