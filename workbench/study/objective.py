"""One trial, as an optuna-examples objective reads: sample, open a child run, build, fit, log,
return the score. The run closes itself with the status the trial's outcome decides."""

from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any

import optuna

from workbench import tracking
from workbench.contracts import DrawsEpochFigures
from workbench.spec import ExperimentSpec, apply_override, load_spec
from workbench.study.config import sample_params
from workbench.study.liveness import WorkerLock
from workbench.study.recovery import run_environment, run_tags

FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
KILLED = (optuna.TrialPruned,)  # a trial ended by these is KILLED in MLflow, not FAILED


class Objective:
    """One trial: sample, build, fit inside an MLflow child run, close it with the right status."""

    def __init__(
        self,
        spec: ExperimentSpec,
        data,
        store: tracking.Store,
        parent: str,
        claim=None,
    ) -> None:
        self.spec, self.data, self.store, self.parent = spec, data, store, parent
        self.claim = claim

    def __call__(self, trial: optuna.Trial) -> float:
        if self.claim is not None:
            self.claim.release()  # this trial is RUNNING: other processes count it now
        import lightning.pytorch as pl

        from workbench.study.ddp import pruning_callback
        from workbench.train import fit, module_from_spec
        from workbench.train.ddp import is_ddp

        WorkerLock.of_this_process(self.store.root).record(trial)
        params = sample_params(self.spec.search_space, trial)
        model_params = {k: v for k, v in params.items() if "." not in k}
        spec = _with_dotted_params(self.spec, {k: v for k, v in params.items() if "." in k})
        data = _data_for_trial(self.data, self.spec, spec)

        store = self.store
        tags = run_tags(spec, data, study_role="trial", trial=trial.number)
        # The run closes itself: FINISHED, KILLED (pruned, a repeat, Ctrl-C) or FAILED, by how
        # the block ends.
        with tracking.child_run(
            store, self.parent, f"trial-{trial.number}", tags, KILLED
        ) as run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
            tracking.log_environment(store, run_id, run_environment(spec))
            repeated = _repeats(trial)
            if repeated is not None and not spec.study.allow_repeats:
                raise optuna.TrialPruned(
                    f"repeats the configuration of finished trial {repeated}; not run again "
                    "(study.allow_repeats: true runs repeats)"
                )
            pl.seed_everything(spec.seed, verbose=False)
            model = module_from_spec(spec, data, **model_params)
            tracking.log_params(store, run_id, _logged_params(model, params, spec, data))
            # The run id makes the folder unique: a checkpoint is never overwritten, whatever
            # happened to the stores before.
            folder = store.root / "checkpoints" / spec.name / f"trial-{trial.number}-{run_id}"
            folder.mkdir(parents=True, exist_ok=False)
            started = time.perf_counter()
            result = fit(
                model,
                data,
                spec.trainer,
                folder,
                monitor=spec.study.metric,
                mode=_mode(spec),
                # Optuna cannot prune a trial with several objectives.
                callbacks=[pruning_callback(trial, spec.study.metric, is_ddp(spec.trainer))]
                if not spec.study.extra_objectives
                else [],
                on_epoch=lambda epoch, metrics: _log_epoch(store, run_id, model, epoch, metrics),
            )
            _log_result(store, run_id, model, data, result, time.perf_counter() - started)
            model_uri = tracking.log_model(
                store, run_id, model.net, model.example_input(data, 2).cpu().numpy()
            )
        trial.set_user_attr("checkpoint", result.checkpoint)
        trial.set_user_attr("model_uri", model_uri)
        trial.set_user_attr("test_metrics", result.test_metrics)
        if spec.study.extra_objectives:
            extra = objective_values(model.net, data, spec.study.extra_objectives)
            trial.set_user_attr("objectives", extra)
            return (result.best_score, *extra.values())
        return result.best_score  # Optuna's gc_after_trial frees the model afterwards


def _logged_params(model, params: dict[str, Any], spec: ExperimentSpec, data) -> dict[str, Any]:
    """What a trial's run records as params: the model's hyperparameters and the data/trainer
    settings a trial may change."""
    return {
        **dict(model.hparams),
        **{k: v for k, v in params.items() if "." in k},
        "data.batch_size": data.batch_size,
        "data.augment": spec.data.augment,
        "trainer.max_epochs": spec.trainer.max_epochs,
    }


def _log_result(store, run_id: str, model, data, result, fit_s: float) -> None:
    """The trained model's test metrics, timing and figures."""
    from workbench import plots

    tracking.log_metrics(
        store,
        run_id,
        {
            **result.test_metrics,
            "time/fit_s": fit_s,
            "epochs": result.epochs,
            "params/count": sum(p.numel() for p in model.parameters()),
        },
        step=result.epochs,
    )
    tracking.log_figure(
        store, run_id, plots.learning_curves(result.history), "plots/learning_curves.png"
    )
    if result.confusion is not None:
        tracking.log_figure(
            store, run_id, plots.confusion_matrix(result.confusion), "plots/confusion_matrix.png"
        )


def _repeats(trial: optuna.Trial) -> int | None:
    """The number of a finished trial with the same parameters, unless this trial's parameters
    were given on purpose (a retry of a failed trial, an enqueued configuration)."""
    system = trial.study._storage.get_trial_system_attrs(trial._trial_id)
    if "fixed_params" in system or "failed_trial" in system:
        return None
    for other in trial.study.get_trials(deepcopy=False, states=FINISHED_STATES):
        if other.number != trial.number and other.params == trial.params:
            return other.number
    return None


def _log_epoch(store, run_id: str, model, epoch: int, metrics: dict[str, float]) -> None:
    """An epoch's metrics, and the figures the model draws (samples, reconstructions) if any."""
    tracking.log_metrics(store, run_id, metrics, epoch)
    if isinstance(model, DrawsEpochFigures):
        for name, figure in model.epoch_figures().items():
            tracking.log_figure(store, run_id, figure, f"plots/{name}/epoch_{epoch:03d}.png")


EXTRA_OBJECTIVES = ("params/count", "latency/batch1_ms")


def objective_values(network, data, names) -> dict[str, float]:
    """Secondary objectives of a multi-objective study, measured on the trained network."""
    from workbench.compress.report import latency_ms

    values = {}
    for name in names:
        if name == "params/count":
            values[name] = float(sum(p.numel() for p in network.parameters()))
        elif name == "latency/batch1_ms":
            example = data.split("test")[0][:1]
            values[name] = latency_ms(network.cpu().eval(), example, repeats=20)
    return values


def _mode(spec: ExperimentSpec) -> str:
    return "max" if spec.study.direction == "maximize" else "min"


def _with_dotted_params(spec: ExperimentSpec, dotted: dict[str, Any]) -> ExperimentSpec:
    if not dotted:
        return spec
    raw = spec.to_dict()
    for key, value in dotted.items():
        apply_override(raw, f"{key}={value}")
    return load_spec(raw)


def _data_for_trial(data, base: ExperimentSpec, spec: ExperimentSpec):
    """Share the loaded data between trials; a searched batch size needs no reload."""
    from workbench.train import data_from_spec

    if spec.data == base.data:
        return data
    if dataclasses.replace(spec.data, batch_size=base.data.batch_size) == base.data:
        shared = copy.copy(data)  # same tensors, other batch size
        shared.batch_size = spec.data.batch_size
        return shared
    return data_from_spec(spec)
