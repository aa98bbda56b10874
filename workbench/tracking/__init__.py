"""MLflow, and only MLflow: store locations, study/trial runs, metrics, artifacts, model registry.

Runs are addressed by id through ``MlflowClient`` rather than the global active-run stack, so a
notebook kernel never inherits a dangling run and a child run can never lose its parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

# Tags the workbench sets; the MLflow UI can filter on any of them.
ROLE, STUDY, TRIAL = "workbench.role", "workbench.study", "workbench.trial"
PARENT = "mlflow.parentRunId"

from workbench.tracking.sanitize import (  # noqa: E402
    DATA_POLICY,
    check_policy,
    sanitize,
    synthetic_like,
    without_data_files,
)
from workbench.tracking.store import (  # noqa: E402
    Store,
    check_sqlite_file,
    open_store,
    root_lock,
)


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
    parent: str | None,
    name: str,
    tags: dict[str, str],
    killed_by: tuple[type[BaseException], ...] = (),
):
    """A run under ``parent`` (a top-level run when None) that closes itself by how the block
    ends: FINISHED on a normal exit; KILLED on Ctrl-C or an exception of ``killed_by`` (e.g. a
    pruned trial); FAILED with the exception as its reason otherwise. The exception goes on."""
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
    """Log a dict of metrics in one batched call. (MLflow's asynchronous logging was tried for
    the per-epoch batches: waiting for its queue when a run closed cost ~0.9 s a trial.)"""
    import time

    now = int(time.time() * 1000)
    store.client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()]
    )


class EpochMetrics:
    """A run's per-epoch metrics, written in batches: when ``flush_s`` seconds have passed since
    the last write, when MLflow's limit of values a batch waits, and when the ``with`` block
    ends however it ends (a pruned, failed or interrupted run keeps every epoch it logged; a
    process killed outright, SIGKILL or out of memory, loses at most the last ``flush_s``
    seconds of them). Each write is a SQLite transaction, about 10 ms: written one an epoch it
    was a sixth of a small trial's fit. Each value keeps the time it was added; a run watched
    live in the MLflow UI shows its epochs up to ``flush_s`` late."""

    MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch

    def __init__(self, store: Store, run_id: str, flush_s: float = 5.0) -> None:
        import time

        self.store, self.run_id, self.flush_s = store, run_id, flush_s
        self.waiting: list[Metric] = []
        self._clock = time.monotonic
        self._last = self._clock()

    def add(self, metrics: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        self.waiting += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self.waiting) >= self.MAX_BATCH or self._clock() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        while self.waiting:  # a batch leaves the queue once written: a failed write is retried
            self.store.client.log_batch(self.run_id, metrics=self.waiting[: self.MAX_BATCH])
            del self.waiting[: self.MAX_BATCH]
        self._last = self._clock()

    def __enter__(self) -> EpochMetrics:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.flush()
        except Exception as exc:
            if kind is None:
                raise
            import warnings  # the run's own error goes on, not this one

            warnings.warn(
                f"run {self.run_id}: {len(self.waiting)} epoch metric values not written "
                f"({type(exc).__name__}: {exc})",
                stacklevel=2,
            )


def set_tags(store: Store, run_id: str, tags: dict[str, Any]) -> None:
    store.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_figure(store: Store, run_id: str, figure, artifact_file: str) -> None:
    store.client.log_figure(run_id, figure, artifact_file)


def log_json(store: Store, run_id: str, data: Any, artifact_file: str) -> None:
    store.client.log_text(run_id, json.dumps(data, indent=2, default=str), artifact_file)


def download(store: Store, run_id: str, path: str, folder: str | Path) -> Path:
    """One artifact of a run into ``folder``, without MLflow's progress bar (the workbench's
    own small reads printed one bar each at the end of every study)."""
    with _QUIET:  # a notebook's background study may read at the same time
        previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            return Path(store.client.download_artifacts(run_id, path, str(folder)))
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


_QUIET = threading.Lock()


def read_json(store: Store, run_id: str, artifact_file: str) -> Any:
    """A JSON artifact of a run; None when the run has none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download(store, run_id, artifact_file, tmp)
        except Exception:  # MLflow raises several types for a missing artifact
            return None
        return json.loads(Path(path).read_text())


def run_metrics(store: Store, run_id: str) -> dict[str, float]:
    """A run's latest value of each metric."""
    return dict(store.client.get_run(run_id).data.metrics)


def read_artifacts(store: Store, run_id: str, folder: str, suffix: str = "") -> dict[str, bytes]:
    """The bytes of each artifact of a run directly under ``folder`` ("" for the run's root)
    whose path ends with ``suffix``, by artifact path."""
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        for info in store.client.list_artifacts(run_id, folder or None):
            if info.is_dir or not info.path.endswith(suffix):
                continue
            files[info.path] = download(store, run_id, info.path, tmp).read_bytes()
    return files


def log_text(store: Store, run_id: str, text: str, artifact_file: str) -> None:
    store.client.log_text(run_id, text, artifact_file)


def log_file(store: Store, run_id: str, path: str | Path, artifact_dir: str | None = None) -> None:
    store.client.log_artifact(run_id, str(path), artifact_dir)


def log_arrays(store: Store, run_id: str, artifact_file: str, **arrays) -> None:
    """Save numpy arrays as one ``.npz`` artifact."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        np.savez_compressed(path, **arrays)
        store.client.log_artifact(run_id, str(path), str(Path(artifact_file).parent) or None)


def run_history(tracking_uri: str, run_id: str) -> list[dict[str, float]]:
    """A run's per-epoch metrics as rows ``{"epoch": e, "val/acc": ..., ...}`` (for plotting)."""
    client = MlflowClient(tracking_uri)
    histories = {
        key: client.get_metric_history(run_id, key) for key in client.get_run(run_id).data.metrics
    }
    epochs = {  # steps of the per-epoch metrics (a GAN logs two train losses, no train/loss)
        m.step for key, history in histories.items() if key.startswith(("train/", "val/"))
        for m in history
    }  # fmt: skip
    rows: dict[int, dict[str, float]] = {}
    for key, history in histories.items():
        for metric in history:
            if metric.step in epochs:
                rows.setdefault(metric.step, {"epoch": metric.step})[key] = metric.value
    return [rows[e] for e in sorted(rows)]


# Environment tags: filter runs by commit, a dirty tree, the torch version or the lock file.
GIT_COMMIT, GIT_DIRTY = "workbench.git_commit", "workbench.git_dirty"
TORCH, LOCK_SHA256 = "workbench.torch", "workbench.lock_sha256"


def environment_tags(env: dict[str, Any]) -> dict[str, str]:
    """The few values of ``workbench.environment.capture()`` worth a tag."""
    git, lock = env.get("git") or {}, env.get("lock") or {}
    return {
        GIT_COMMIT: str(git.get("commit") or "none"),
        GIT_DIRTY: str(git.get("dirty")).lower() if git.get("dirty") is not None else "unknown",
        TORCH: str((env.get("packages") or {}).get("torch", "none")),
        LOCK_SHA256: str(lock.get("sha256") or "none"),
    }


def log_environment(store: Store, run_id: str, env: dict[str, Any]) -> None:
    """The run's environment: ``environment.json``, its tags, and ``environment/diff.patch``
    (the uncommitted changes) when the tree was dirty."""
    git = dict(env.get("git") or {})
    diff = git.pop("diff", None)
    git["diff"] = "environment/diff.patch" if diff else None  # the same keys, clean or dirty
    if diff:
        store.client.log_text(run_id, diff, "environment/diff.patch")
    log_json(store, run_id, {**env, "git": git}, "environment.json")
    set_tags(store, run_id, environment_tags(env))


def log_explanation(
    store: Store, run_id: str, report, prefix: str = "explain", policy: str = "raw"
) -> None:
    """An explanation report into a run: PNG plots, the arrays (.npz), trust metrics (JSON and
    MLflow metrics).

    Under data policy ``synthetic`` the report must explain synthetic rows (``sanitize``; its
    ``settings["rows"]`` says so), else it is refused; under ``none`` only what sums over the
    rows is logged: the trust metrics and the faithfulness curves.
    """
    import numpy as np

    if check_policy(policy) == "synthetic" and report.settings.get("rows") != "synthetic":
        raise ValueError(
            "data_policy synthetic: this report explains data rows; explain synthetic rows "
            "(sanitize(..., 'synthetic')) to log it"
        )
    figures = report.figures()
    if policy == "none":
        figures = {name: f for name, f in figures.items() if name == "faithfulness"}
    for name, figure in figures.items():
        log_figure(store, run_id, figure, f"{prefix}/{name}.png")
    if policy == "none":
        _log_trust(store, run_id, report, prefix)
        return
    arrays = {name: e.attributions for name, e in report.explanations.items()}
    first = next(iter(report.explanations.values()))
    arrays.update(inputs=first.display, targets=first.targets, probabilities=first.probabilities)
    if first.labels is not None:
        arrays["labels"] = np.asarray(first.labels)
    log_arrays(store, run_id, f"{prefix}/attributions.npz", **arrays)
    _log_trust(store, run_id, report, prefix)


def _log_trust(store: Store, run_id: str, report, prefix: str) -> None:
    """The trust metrics (JSON and MLflow metrics): numbers over all explained rows."""
    import numpy as np

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
            path = download(store, parent, "spec.json", tmp)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise LookupError(f"run id {run_id!r}: its study run has no spec.json") from exc
        return json.loads(Path(path).read_text())


# The model side lives in tracking/models.py; its names are part of this module's API.
from workbench.tracking.models import (  # noqa: E402
    claim_registered_model,
    load_network,
    log_model,
    model_uri_of_run,
    register_version,
    resolve_run_id,
    scoring_app,
)

__all__ = [
    "DATA_POLICY",
    "Store",
    "check_policy",
    "check_sqlite_file",
    "child_run",
    "child_runs",
    "claim_registered_model",
    "end_run",
    "environment_tags",
    "filter_value",
    "find_study_run",
    "load_network",
    "log_arrays",
    "log_environment",
    "log_explanation",
    "log_figure",
    "log_file",
    "log_json",
    "log_metrics",
    "log_model",
    "log_params",
    "model_uri_of_run",
    "open_store",
    "register_version",
    "reopen_run",
    "resolve_run_id",
    "root_lock",
    "run_history",
    "run_spec",
    "run_tags",
    "sanitize",
    "scoring_app",
    "set_tags",
    "start_run",
    "synthetic_like",
    "without_data_files",
]
