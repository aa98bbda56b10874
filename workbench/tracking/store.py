"""Where runs live: the MLflow store of one workbench root (SQLite by default, or a tracking
server), checked on opening: a corrupt file or a dead server is named, a fresh root created once."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"


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
            if uri.startswith("sqlite:///"):
                new_sqlite_database(Path(uri.removeprefix("sqlite:///")))
            client = MlflowClient(uri)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                location = None if uri.startswith("http") else (root / "artifacts").as_uri()
                experiment_id = client.create_experiment(experiment, artifact_location=location)
            else:
                experiment_id = found.experiment_id
            if found is None or EXPERIMENT_KIND not in found.tags:
                # The MLflow 3 UI opens an experiment of no declared kind on its GenAI traces
                # overview; this one holds training runs.
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, TRAINING)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ConnectionError(f"{where}: cannot be opened: {first}") from exc
    return Store(root, uri, experiment_id)


def new_sqlite_database(path: Path) -> None:
    """Where no database is yet, MLflow's empty one, copied from a database migrated once per
    process: MLflow runs its ~50 schema migrations for every new SQLite file (about 2 s), a copy
    takes milliseconds. It is the database MLflow would create (the same schema version and
    Default experiment), written under a temporary name and renamed."""
    if path.is_file() and path.stat().st_size > 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(_empty_database())
    os.replace(partial, path)


@functools.cache
def _empty_database() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlflow.db"
        MlflowClient(f"sqlite:///{path}").search_experiments()  # creates and migrates it
        return path.read_bytes()


def check_sqlite_file(path: Path, kind: str) -> None:
    """A file that exists must be an SQLite database (a truncated or foreign file is named).

    SQLite itself reads it: a plain ``open()``/``close()`` of a database file drops every POSIX
    lock this process holds on it, so another process could take the file for unused and
    delete its WAL under this process's open connections ("disk I/O error")."""
    import sqlite3

    if path.is_file() and path.stat().st_size > 0:
        # Read-only, so that closing it never checkpoints the WAL: the file stays byte-identical.
        uri = f"{path.resolve().as_uri()}?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=60)) as connection:
                connection.execute("PRAGMA schema_version").fetchone()
        except sqlite3.DatabaseError as exc:
            if "not a database" not in str(exc):
                return  # not readable read-only (e.g. a WAL file without its index): opened later
            raise ConnectionError(
                f"{path}: not an SQLite database (the {kind} store is corrupt or was replaced: "
                f"{exc}); restore it from a backup or point tracking.root elsewhere"
            ) from exc


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
