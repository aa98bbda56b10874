"""Optuna configuration from the spec: samplers, pruners, storage, parameter sampling.

Wrong names, options a sampler cannot use, and unreachable storage fail here, before any trial.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import optuna

from workbench.spec import ExperimentSpec, ParamSpec, SpecError


def make_sampler(spec: ExperimentSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler; a wrong name or option names the field.

    The seed is ``study.sampler_options.seed`` if given, else the spec's ``seed``; each worker
    adds its index, or all workers would propose the same first points.
    """
    options = dict(spec.study.sampler_options)
    seed = options.pop("seed", spec.seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SpecError(f"study.sampler_options.seed: must be an integer; got {seed!r}")
    seed += worker
    name = spec.study.sampler
    factories = {
        # constant_liar is set explicitly: Optuna 5 turned it on by default, 4.x had it off. On, it
        # keeps parallel workers from proposing the same point while trials are running.
        "tpe": lambda: optuna.samplers.TPESampler(
            seed=seed, **{"constant_liar": True, "multivariate": True, **options}
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed, **options),
        "grid": lambda: optuna.samplers.GridSampler(grid_points(spec), seed=seed, **options),
        "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, **options),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed, **options),
    }
    if name not in factories:
        raise SpecError(f"study.sampler: unknown sampler {name!r}; valid: {', '.join(factories)}")
    try:
        return factories[name]()
    except TypeError as exc:
        raise SpecError(f"study.sampler_options: {exc}") from exc


def grid_points(spec: ExperimentSpec) -> dict[str, list]:
    """Every value of each searched parameter; a continuous range without a step has no grid."""
    import numpy as np

    grid: dict[str, list] = {}
    for key, p in spec.search_space.items():
        if p.type == "categorical":
            grid[key] = list(p.choices)
        elif p.step is None and p.type == "float":
            raise SpecError(
                f"search_space.{key}: the grid sampler needs a step (or choices) for a float range"
            )
        else:
            step = p.step or 1
            values = np.arange(p.low, p.high + step / 2, step)
            grid[key] = [int(v) for v in values] if p.type == "int" else [float(v) for v in values]
    return grid


def make_pruner(spec: ExperimentSpec) -> optuna.pruners.BasePruner:
    """The spec's pruner; a wrong name or option names the field."""
    options = dict(spec.study.pruner_options)
    epochs = spec.trainer.max_epochs
    factories = {
        "median": lambda: optuna.pruners.MedianPruner(
            **{"n_startup_trials": 2, "n_warmup_steps": 1, **options}
        ),
        "percentile": lambda: optuna.pruners.PercentilePruner(**{"percentile": 25.0, **options}),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(**options),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(
            **{"min_resource": 1, "max_resource": epochs, **options}
        ),
        "threshold": lambda: optuna.pruners.ThresholdPruner(**options),
        "none": lambda: optuna.pruners.NopPruner(**options),
    }
    name = spec.study.pruner
    if name not in factories:
        raise SpecError(f"study.pruner: unknown pruner {name!r}; valid: {', '.join(factories)}")
    try:
        return factories[name]()
    except (TypeError, ValueError) as exc:
        raise SpecError(f"study.pruner_options: {exc}") from exc


def storage_url(spec: ExperimentSpec) -> str:
    root = Path(spec.tracking.root).resolve()
    return spec.tracking.optuna_storage or f"sqlite:///{root / 'optuna.db'}"


def open_storage(url: str, heartbeat_s: int = 15, retries: int = 1) -> optuna.storages.RDBStorage:
    """RDB storage (SQLite or PostgreSQL) with heartbeats: a trial whose worker died (SIGKILL,
    a lost machine) is marked FAILED once its heartbeat is older than the grace period, and
    re-queued with the same parameters up to ``retries`` times."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL lets readers (optuna-dashboard, other workers) in while a trial writes; it persists
        # in the file. A generous busy timeout rides out short write locks.
        with sqlite3.connect(path) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
        engine_kwargs = {"connect_args": {"timeout": 60}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=4 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=retries
                ),
            )
        except Exception as exc:  # sqlalchemy's errors: bad URL, refused connection, no driver
            raise ConnectionError(
                f"tracking.optuna_storage: cannot open {_redact(url)}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from exc


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def sample_params(space: dict[str, ParamSpec], trial: optuna.Trial) -> dict[str, Any]:
    """Draw one value per searched hyperparameter."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.type == "categorical":
            values[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            values[key] = trial.suggest_int(
                key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        else:
            values[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
    return values
