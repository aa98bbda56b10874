"""``workbench reproduce RUN_ID``: a finished trial (or confirmation) trained again from what its
run recorded, into a new run linked to the original, with both runs' metrics side by side and
every recorded difference that could explain a mismatch.

What is rebuilt: the study's spec (``spec.json`` of the parent run), the trial's sampled
parameters (from its Optuna trial, with their types), its seed and its split seed (run tags).
The new run is a child of the same study run, tagged ``workbench.role=reproduce`` and
``workbench.reproduces=<RUN_ID>``; it is a trial of the Optuna study ``NAME:reproduce:<RUN_ID>``,
so the machinery of trials (a run closed by its outcome, a dead process's trial failed on the
next command) holds for it too. With ``trainer.deterministic`` on, the same machine gives the
same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from workbench import environment, tracking
from workbench.spec import load_spec
from workbench.study.objective import RUN_NAME, RUN_ROLE, RUN_SEED, RUN_SPLIT, RUN_TAGS

REPRODUCES = "workbench.reproduces"  # on the new run: the run it reproduces


@dataclass
class Reproduction:
    original_run: str
    new_run: str
    metrics: list[tuple[str, float, float]] = field(default_factory=list)
    """(metric, original, new): the study's metric (best validation score) and every test
    metric."""
    differences: list[str] = field(default_factory=list)
    """Every recorded difference between the two runs: data, commit, packages, machine."""

    @property
    def identical(self) -> bool:
        return all(a == b or (math.isnan(a) and math.isnan(b)) for _, a, b in self.metrics)

    def table(self) -> str:
        width = max((len(name) for name, _, _ in self.metrics), default=6)
        lines = [f"{'metric':{width}s}  {'original':>10s}  {'reproduced':>10s}  difference"]
        for name, before, after in self.metrics:
            lines.append(f"{name:{width}s}  {before:10.6f}  {after:10.6f}  {after - before:+.2e}")
        return "\n".join(lines)


def reproduce(run_id: str, root: str | Path = "mlruns", experiment: str = "workbench"):
    """Train run ``run_id`` again from its record; a ``Reproduction``. Errors name the run id
    before any training: an unknown run, a run that is not a finished trial or confirmation."""
    from workbench.study import recovery
    from workbench.study import workers as pool
    from workbench.study.summary import load_trial, study_of_run
    from workbench.train import data_from_spec
    from workbench.trained_model import _store

    store = _store(root, experiment)
    run_id = tracking.resolve_run_id(store, run_id)
    tags = tracking.run_tags(store, run_id)
    role = tags.get(tracking.ROLE)
    if role not in {"trial", "confirm", "reproduce"}:
        raise LookupError(f"run id {run_id!r}: a {role} run; reproduce a trial's run")
    status = store.client.get_run(run_id).info.status
    if status != "FINISHED":
        raise LookupError(
            f"run id {run_id!r}: its status is {status} (pruned, failed or interrupted); "
            "reproduce a finished run"
        )
    raw = tracking.run_spec(store, run_id)
    raw.setdefault("tracking", {})["root"] = str(store.root)
    spec = load_spec(raw)
    name = study_of_run(spec.name, tags)
    original = load_trial(spec, name, int(tags[tracking.TRIAL]))

    data = data_from_spec(spec)
    data.setup()
    attrs = {
        RUN_ROLE: "reproduce", RUN_SEED: int(tags["seed"]),
        RUN_NAME: f"reproduce-{run_id[:8]}", RUN_TAGS: {REPRODUCES: run_id},
    }  # fmt: skip
    if "data.split_seed" in tags and hasattr(data, "split_seed"):
        attrs[RUN_SPLIT] = int(tags["data.split_seed"])
    one = dataclasses.replace(
        spec.study, trials=1, workers=1, pruner="none", pruner_options={}, extra_objectives={}
    )
    rerun_spec = dataclasses.replace(spec, study=one)
    storage = pool.open_study_storage(rerun_spec)
    study = pool.open_study(rerun_spec, storage, study_name(spec.name, run_id))

    parent = tags["mlflow.parentRunId"]
    recovery.recover(study, store, parent, "reproduce", **{REPRODUCES: run_id})
    if not pool.count(study, optuna.trial.TrialState.WAITING):  # else a killed one's retry
        study.enqueue_trial(original.params, user_attrs=attrs)
    print(f"reproducing run {run_id} ({name}, trial {original.number}) with seed {tags['seed']}")
    pool.optimize(rerun_spec, study, data, store, parent, 1, count_running=False, queued_only=True)
    new = study.trials[-1]
    if new.state != optuna.trial.TrialState.COMPLETE:
        raise RuntimeError(f"the reproduction of run {run_id} ended {new.state.name}")
    new_run = new.user_attrs["mlflow_run_id"]

    result = Reproduction(run_id, new_run)
    result.metrics.append((f"best {spec.study.metric}", original.values[0], new.values[0]))
    before, after = original.user_attrs["test_metrics"], new.user_attrs["test_metrics"]
    result.metrics += [(k, before[k], after[k]) for k in sorted(before) if k in after]
    new_tags = tracking.run_tags(store, new_run)
    if tags.get("data.fingerprint") != new_tags.get("data.fingerprint"):
        result.differences.append(
            f"data fingerprint: {tags.get('data.fingerprint')} → {new_tags.get('data.fingerprint')}"
        )
    result.differences += environment.differences(
        tracking.read_json(store, run_id, "environment.json"),
        tracking.read_json(store, new_run, "environment.json"),
    )
    tracking.log_metrics(store, new_run, {"reproduce/identical": float(result.identical)}, step=0)
    return result


def study_name(name: str, run_id: str) -> str:
    return f"{name}:reproduce:{run_id}"
