"""Optuna configuration from the spec: samplers, pruners, storage, parameter sampling.

Wrong names, options a sampler cannot use, and unreachable storage fail here, before any trial.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import optuna

from workbench.spec import ExperimentSpec, ParamSpec, SpecError


def make_sampler(spec: ExperimentSpec) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded per trial; a wrong name or option names the field.

    The seed is ``study.sampler_options.seed`` if given, else the spec's ``seed``. A sampler
    seeded once per process repeats itself: a resumed study, a second command or a second worker
    on the same study would draw the same start-up configurations again. Seeding each trial with
    seed + trial number continues one sequence across processes and resumes, reproducibly.
    """
    options = dict(spec.study.sampler_options)
    seed = options.pop("seed", spec.seed)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise SpecError(f"study.sampler_options.seed: must be an integer; got {seed!r}")
    name = spec.study.sampler
    factories = {
        # constant_liar is set explicitly: Optuna 5 turned it on by default, 4.x had it off. On, it
        # keeps parallel workers from proposing the same point while trials are running.
        "tpe": lambda s: optuna.samplers.TPESampler(
            seed=s, **{"constant_liar": True, "multivariate": True, **options}
        ),
        "random": lambda s: optuna.samplers.RandomSampler(seed=s, **options),
        "grid": lambda s: optuna.samplers.GridSampler(grid_points(spec), seed=s, **options),
        "cmaes": lambda s: optuna.samplers.CmaEsSampler(seed=s, **options),
        "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s, **options),
    }
    if name not in factories:
        raise SpecError(f"study.sampler: unknown sampler {name!r}; valid: {', '.join(factories)}")
    try:
        if name == "grid":  # the grid's order is fixed by its seed; trials take it by number
            return factories[name](seed)
        return TrialSeededSampler(factories[name], seed)
    except TypeError as exc:
        raise SpecError(f"study.sampler_options: {exc}") from exc


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A sampler made afresh for each trial with seed ``seed + trial.number``.

    Optuna's samplers keep their state in the study's storage (TPE, random and grid keep none
    besides their random generator; CMA-ES and NSGA-II restore theirs from trial attributes), so
    a fresh instance per trial loses nothing, and trial numbers are unique across processes.
    """

    def __init__(self, factory, seed: int) -> None:
        self._factory, self._seed = factory, seed
        self._inner = factory(seed)

    @property
    def inner(self) -> optuna.samplers.BaseSampler:
        return self._inner

    def before_trial(self, study, trial) -> None:
        self._inner = self._factory(self._seed + trial.number)
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


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
    import contextlib
    import warnings

    from workbench.tracking import check_sqlite_file, root_lock

    engine_kwargs: dict[str, Any] = {}
    where, lock = f"tracking.optuna_storage: {_redact(url)}", contextlib.nullcontext()
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        where = f"the Optuna database {path}"
        check_sqlite_file(path, "Optuna")
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = root_lock(path.parent)  # two first commands must not both create the schema
        engine_kwargs = {"connect_args": {"timeout": 60}}
    with lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            if url.startswith("sqlite:///"):
                # WAL lets readers (optuna-dashboard, other workers) in while a trial writes; it
                # persists in the file. A generous busy timeout rides out short write locks.
                with sqlite3.connect(path, timeout=60) as connection:
                    connection.execute("PRAGMA journal_mode=WAL")
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
            text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ConnectionError(
                f"{where}: cannot be opened: {type(exc).__name__}: {text}"
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
