"""Confirmation over seeds: after the search, the ``study.confirm.top_k`` best configurations are
trained again with ``study.confirm.seeds`` fresh seeds, and the champion is the configuration with
the best confirmed mean validation score, not the best of N noisy draws. The gap between the
search's best single score and that trial's confirmed mean is the search's *optimism*.

Each confirmation is a trial of a second Optuna study, ``NAME:confirm``, in the same storage
(``:`` is outside the names a spec may take): an enqueued trial holding the configuration's
parameters and, as user attributes, the search trial it confirms and its seed. The search's
machinery then serves it unchanged: worker processes, dead workers' trials failed and retried, a
resume that runs only what is missing. A configuration's seed is counted once, however often a
process died while training it. Test metrics are reported, never used to choose.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from workbench import tracking
from workbench.spec import ExperimentSpec
from workbench.stats import mean_interval
from workbench.study.objective import RUN_NAME, RUN_ROLE, RUN_SEED, RUN_SPLIT, RUN_TAGS

CONFIG, SEED = "workbench.confirm.config", "workbench.confirm.seed"  # run tags
CHAMPION = "workbench.champion_trial"  # on the search study: the confirmed champion's number
COMPLETE = optuna.trial.TrialState.COMPLETE


def study_name(name: str) -> str:
    return f"{name}:confirm"


def seeds(spec: ExperimentSpec) -> list[int]:
    """Fresh seeds: every search trial ran with ``spec.seed``."""
    return [spec.seed + 1 + i for i in range(spec.study.confirm.seeds)]


def of_trial(trial) -> tuple[int, int] | None:
    """(search trial, seed) of a confirmation trial; None for anything else."""
    tags = trial.user_attrs.get(RUN_TAGS) or {}
    return (int(tags[CONFIG]), int(tags[SEED])) if CONFIG in tags else None


def attributes(spec: ExperimentSpec, config: int, seed: int, data) -> dict[str, Any]:
    """What a confirmation trial carries: search trial ``config`` trained with ``seed`` (a new
    initialisation and batch order) on the search's split unless ``study.confirm.resplit``.
    (Data drawn from the seed itself, the adding problem's sequences or an environment's
    episodes, is drawn anew.)"""
    attrs = {
        RUN_ROLE: "confirm", RUN_SEED: seed, RUN_NAME: f"confirm-trial-{config}-seed-{seed}",
        RUN_TAGS: {CONFIG: str(config), SEED: str(seed)},
    }  # fmt: skip
    if hasattr(data, "split_seed"):  # the search's split, or (resplit) the seed's own
        attrs[RUN_SPLIT] = seed if spec.study.confirm.resplit else spec.split_seed()
    return attrs


def spec_for(spec: ExperimentSpec) -> ExperimentSpec:
    """The spec the confirmation study runs: one objective, no pruning, a trial per run (its
    Optuna study is ``study_name(spec.name)``; its runs keep the spec's name)."""
    count = spec.study.confirm.top_k * spec.study.confirm.seeds
    study = dataclasses.replace(
        spec.study, trials=count, pruner="none", pruner_options={}, extra_objectives={}
    )
    return dataclasses.replace(spec, study=study)


@dataclass
class Confirmed:
    """One configuration of the search and its confirmation runs."""

    trial: int
    """The search trial whose configuration (``params``) this is."""
    params: dict[str, Any]
    search_value: float
    """Its validation score in the search: one draw, the one that got it chosen."""
    seeds: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    """The confirmed validation scores, one per seed."""
    tests: list[dict[str, float]] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return mean_interval(self.values)[0]

    @property
    def half_width(self) -> float:
        return mean_interval(self.values)[1]

    def test_interval(self, metric: str) -> tuple[float, float]:
        return mean_interval([t[metric] for t in self.tests if metric in t])

    def summary(self, metric: str) -> dict[str, Any]:
        row: dict[str, Any] = {
            "trial": self.trial, "params": self.params, "n": len(self.values),
            "search_value": self.search_value, f"{metric}_mean": self.mean,
            f"{metric}_ci": self.half_width,
        }  # fmt: skip
        for name in self.test_names():
            row[f"{name}_mean"], row[f"{name}_ci"] = self.test_interval(name)
        return row

    def test_names(self) -> list[str]:
        """The test metrics summarised: all but the per-class ones (``test/class_K/...``)."""
        return sorted({k for t in self.tests for k in t if "/class_" not in k})


@dataclass
class Confirmation:
    configs: list[Confirmed]
    """Best confirmed mean validation score first."""
    optimism: float
    """The search's best single validation score minus that configuration's confirmed mean
    (for a metric to minimise: the confirmed mean minus the best score)."""

    @property
    def champion(self) -> Confirmed:
        return self.configs[0]


def top_configurations(study: optuna.Study, spec: ExperimentSpec) -> list:
    """The ``top_k`` completed search trials of distinct parameters, best first (on the first
    objective)."""
    maximize = spec.study.direction == "maximize"
    complete = study.get_trials(deepcopy=False, states=(COMPLETE,))
    ranked = sorted(complete, key=lambda t: t.values[0], reverse=maximize)
    chosen, seen = [], []
    for trial in ranked:
        if trial.params not in seen:
            seen.append(trial.params)
            chosen.append(trial)
    return chosen[: spec.study.confirm.top_k]


def enqueue_missing(spec: ExperimentSpec, confirm_study: optuna.Study, configs: list, data) -> int:
    """Queue each (configuration, seed) not already finished, running or queued; how many."""
    present = {
        of_trial(t)
        for t in confirm_study.get_trials(deepcopy=False)
        if t.state in (COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    }
    queued = 0
    for trial in configs:
        for seed in seeds(spec):
            if (trial.number, seed) not in present:
                attrs = attributes(spec, trial.number, seed, data)
                confirm_study.enqueue_trial(trial.params, user_attrs=attrs)
                queued += 1
    return queued


def collect(study: optuna.Study, confirm_study: optuna.Study, spec: ExperimentSpec):
    """The confirmed configurations, each seed counted once, best confirmed mean first."""
    maximize = spec.study.direction == "maximize"
    top = top_configurations(study, spec)
    found = {t.number: Confirmed(t.number, dict(t.params), t.values[0]) for t in top}
    for trial in confirm_study.get_trials(deepcopy=False, states=(COMPLETE,)):
        if of_trial(trial) is None:
            continue
        number, seed = of_trial(trial)
        entry = found.get(number)
        if entry is None or seed in entry.seeds:
            continue  # another top-k before a resume, or a seed counted already
        entry.seeds.append(seed)
        entry.values.append(trial.values[0])
        entry.tests.append(dict(trial.user_attrs.get("test_metrics", {})))
        entry.run_ids.append(trial.user_attrs["mlflow_run_id"])
    # Configurations with every seed first: one lucky surviving seed must not win.
    full, sign = spec.study.confirm.seeds, (1 if maximize else -1)
    ranked = sorted(
        (c for c in found.values() if c.values),
        key=lambda c: (len(c.values) >= full, sign * c.mean),
        reverse=True,
    )
    if not ranked:
        return None
    best = found[top[0].number]  # the search's best single score
    optimism = (best.search_value - best.mean) * (1 if maximize else -1) if best.values else 0.0
    return Confirmation(ranked, float(optimism))


def run(spec: ExperimentSpec, study: optuna.Study, storage, data, store, parent: str, helpers=None):
    """Confirm the search's best configurations (resuming what a killed run left), record the
    champion on the search study, log the table and figure to the parent run. ``helpers``
    (``workers.Helpers``): the search's worker processes, reused; started where missing."""
    from workbench.study import recovery
    from workbench.study import workers as pool

    configs = top_configurations(study, spec)
    if not configs:
        return None
    confirm_spec = spec_for(spec)
    confirm_study = pool.open_study(confirm_spec, storage, study_name(spec.name))
    recovery.recover(confirm_study, store, parent, role="confirm")
    enqueue_missing(spec, confirm_study, configs, data)
    waiting = pool.count(confirm_study, optuna.trial.TrialState.WAITING)
    if waiting:
        confirm_spec = pool.cap_workers(confirm_spec, waiting)
        workers = confirm_spec.study.workers
        which = "the best configuration" if len(configs) == 1 else f"the top {len(configs)}"
        print(
            f"confirming {which} over {spec.study.confirm.seeds} fresh seeds: {waiting} runs"
            + (f" on {workers} workers" if workers > 1 else "")
        )
        own = helpers is None
        helpers = pool.Helpers(parent) if own else helpers
        try:
            helpers.run(confirm_spec, confirm_study.study_name)
            with pool.share_cores(workers):
                pool.optimize(
                    confirm_spec, confirm_study, data, store, parent, waiting, queued_only=True
                )
            helpers.wait()
        except KeyboardInterrupt:
            helpers.stop()
            raise
        finally:
            if own:
                helpers.close()
        recovery.recover(confirm_study, store, parent, role="confirm")
    confirmation = collect(study, confirm_study, spec)
    if confirmation is None:
        return None
    study.set_user_attr(CHAMPION, confirmation.champion.trial)
    _log(spec, confirmation, store, parent)
    return confirmation


def _log(spec: ExperimentSpec, confirmation: Confirmation, store, parent: str) -> None:
    import csv

    from workbench import plots

    metric = spec.study.metric
    champion = confirmation.champion
    values = {
        "confirm/optimism": confirmation.optimism,
        f"confirm/{metric.replace('/', '_')}_mean": champion.mean,
        f"confirm/{metric.replace('/', '_')}_ci": champion.half_width,
    }
    for name in champion.test_names():
        mean, half = champion.test_interval(name)
        values[f"confirm/{name.replace('/', '_')}_mean"] = mean
        values[f"confirm/{name.replace('/', '_')}_ci"] = half
    tracking.log_metrics(store, parent, values)
    tracking.set_tags(store, parent, {CHAMPION: champion.trial})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "confirmation.csv"
        tests = sorted({k for c in confirmation.configs for t in c.tests for k in t})
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["trial", "params", "seed", "run_id", metric, *tests])
            for c in confirmation.configs:
                for seed, value, test, run_id in zip(
                    c.seeds, c.values, c.tests, c.run_ids, strict=True
                ):
                    row = [c.trial, c.params, seed, run_id, value]
                    writer.writerow(row + [test.get(name, "") for name in tests])
        tracking.log_file(store, parent, path, "confirm")
    tracking.log_json(
        store, parent, [c.summary(metric) for c in confirmation.configs], "confirm/summary.json"
    )
    figure = plots.confirmation(
        [f"trial {c.trial}" for c in confirmation.configs],
        [c.values for c in confirmation.configs],
        [(c.mean, c.half_width) for c in confirmation.configs],
        [c.search_value for c in confirmation.configs],
        metric,
    )
    tracking.log_figure(store, parent, figure, "confirm/confirmation.png")
