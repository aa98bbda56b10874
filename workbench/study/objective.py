"""One trial, as an optuna-examples objective reads: sample, open a child run, build, fit, log,
return the score. The run closes itself with the status the trial's outcome decides."""

from __future__ import annotations

import contextvars
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
# A trial enqueued with these user attributes is another kind of run of a configuration (a
# confirmation over seeds, a reproduction): its role, seed and split seed, extra run tags and
# run name. Optuna copies them to the retry of a trial whose process died.
RUN_ROLE, RUN_SEED, RUN_SPLIT = "workbench.role", "workbench.seed", "workbench.split_seed"
RUN_TAGS, RUN_NAME = "workbench.tags", "workbench.run_name"
KILLED = (optuna.TrialPruned,)  # a trial ended by these is KILLED in MLflow, not FAILED
# A study run by a notebook's handle (``background.StudyHandle``) in its thread: each trial
# reports its epochs to the handle and stops at an epoch boundary when the handle asks.
WATCH: contextvars.ContextVar = contextvars.ContextVar("workbench.study.watch", default=None)


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
        self._backbones: dict[str, Any] = {}  # backbone.source → its TrainedModel, resolved once

    def __call__(self, trial: optuna.Trial) -> float:
        watch = WATCH.get()
        try:
            return self._run(trial, watch)
        finally:
            if watch is not None and watch.stopping:
                trial.study.stop()  # a stop asked after the last epoch: no trial after this one

    def _run(self, trial: optuna.Trial, watch) -> float:
        if self.claim is not None:
            self.claim.release()  # this trial is RUNNING: other processes count it now
        import lightning.pytorch as pl

        from workbench.robustness import training_callbacks
        from workbench.study.ddp import pruning_callback
        from workbench.train import fit, module_from_spec
        from workbench.train.ddp import is_ddp

        WorkerLock.of_this_process(self.store.root).record(trial)
        params = sample_params(self.spec.search_space, trial)
        model_params = {k: v for k, v in params.items() if "." not in k}
        spec = _with_dotted_params(self.spec, {k: v for k, v in params.items() if "." in k})
        spec = _with_seed(spec, trial.user_attrs)  # a confirmation's or a reproduction's
        data = _data_for_trial(self.data, self.spec, spec)

        store = self.store
        role = trial.user_attrs.get(RUN_ROLE, "trial")
        tags = run_tags(spec, data, study_role=role, trial=trial.number)
        tags |= trial.user_attrs.get(RUN_TAGS, {})
        name = trial.user_attrs.get(RUN_NAME, f"trial-{trial.number}")
        # The run closes itself: FINISHED, KILLED (pruned, a repeat, Ctrl-C) or FAILED, by how
        # the block ends.
        with tracking.child_run(store, self.parent, name, tags, KILLED) as run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
            tracking.log_environment(store, run_id, run_environment(spec))
            repeated = _repeats(trial)
            if repeated is not None and not spec.study.allow_repeats:
                raise optuna.TrialPruned(
                    f"repeats the configuration of finished trial {repeated}; not run again "
                    "(study.allow_repeats: true runs repeats)"
                )
            pl.seed_everything(spec.seed, verbose=False)
            backbone = self._backbone(spec, data, run_id)
            model = module_from_spec(spec, data, backbone=backbone, **model_params)
            tracking.log_params(store, run_id, _logged_params(model, params, spec, data))
            # The run id makes the folder unique: a checkpoint is never overwritten, whatever
            # happened to the stores before.
            folder = store.root / "checkpoints" / spec.name / f"{role}-{trial.number}-{run_id}"
            folder.mkdir(parents=True, exist_ok=False)
            started = time.perf_counter()
            with tracking.EpochMetrics(store, run_id) as epochs:
                result = fit(
                    model,
                    data,
                    spec.trainer,
                    folder,
                    monitor=spec.study.metric,
                    mode=_mode(spec),
                    # Optuna cannot prune a trial with several objectives.
                    callbacks=[
                        *training_callbacks(spec, data),
                        *([watch.trial_callback(name)] if watch is not None else []),
                        *(
                            [pruning_callback(trial, spec.study.metric, is_ddp(spec.trainer))]
                            if not spec.study.extra_objectives
                            else []
                        ),
                    ],
                    on_epoch=lambda epoch, metrics: _log_epoch(
                        epochs, store, run_id, model, epoch, metrics, spec.tracking.data_policy
                    ),
                )
                fit_s = time.perf_counter() - started
            _log_result(store, run_id, model, result, fit_s)
            if spec.robustness.evaluate:
                log_robustness(store, run_id, attack_report(model.net, data, spec.robustness))
            if spec.tracking.log_models == "all":  # else the champion's, when the study ends
                logged = log_trained(
                    store, run_id, model, data, result.history, result.confusion,
                    result.reliability, spec.tracking.data_policy,
                )  # fmt: skip
                trial.set_user_attr("model_uri", logged)
        trial.set_user_attr("checkpoint", result.checkpoint)
        trial.set_user_attr("test_metrics", result.test_metrics)
        if result.confusion is not None:
            trial.set_user_attr("confusion", result.confusion.tolist())
        if result.reliability is not None:
            trial.set_user_attr("reliability", result.reliability.tolist())
        if spec.study.extra_objectives:
            extra = objective_values(model.net, data, spec.study.extra_objectives, spec)
            tracking.log_metrics(store, run_id, extra)
            trial.set_user_attr("objectives", extra)
            return (result.best_score, *extra.values())
        return result.best_score  # Optuna's gc_after_trial frees the model afterwards

    def _backbone(self, spec: ExperimentSpec, data, run_id: str):
        """The trial's backbone (``backbone.source``), recorded on its run for lineage with the
        training data as a dataset input."""
        from workbench.registry import model_class
        from workbench.tracking.lineage import log_base_model, log_data_input
        from workbench.train import backbone_of, check_split

        splits = getattr(data, "splits_", None) or {}  # in-memory families (not environments)
        sizes = {f"{name}_rows": len(labels) for name, (_, labels) in splits.items()}
        log_data_input(self.store, run_id, spec.data.name, data.fingerprint_, sizes)
        source = spec.backbone.source
        if source is None:
            shipped = getattr(model_class(spec.model.name), "base_model", None)
            if shipped is not None:  # pretrained weights that ship in a package
                pretrained = spec.backbone.pretrained
                log_base_model(self.store, run_id, shipped, None, None, pretrained)
            return None
        if source not in self._backbones:
            self._backbones[source] = backbone_of(spec)
        base = self._backbones[source]
        check_split(base.spec, spec)  # a searched data field may change this trial's split
        log_base_model(
            self.store, run_id, source, base.run_id, base.model_uri, spec.backbone.pretrained
        )
        return base


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


def _log_result(store, run_id: str, model, result, fit_s: float) -> None:
    """The trained model's test metrics and timing."""
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


def log_trained(
    store, run_id: str, model, data, history, confusion, reliability=None, policy: str = "raw"
) -> str:
    """A trained model into its run: the network as an MLflow model (signature, input example
    as the data ``policy`` allows), its learning curves and, for a classifier, its test
    confusion matrix and reliability diagram. Its model URI."""
    from workbench import plots

    example, reference = model.example_input(data, 2).cpu().numpy(), None
    train = data.split("train")[0]  # synthetic examples take its statistics, where it fits
    if policy != "raw" and train.shape[1:] == example.shape[1:]:
        reference = train.cpu().numpy()
    model_uri = tracking.log_model(store, run_id, model.net, example, policy, reference)
    tracking.log_figure(store, run_id, plots.learning_curves(history), "plots/learning_curves.png")
    if confusion is not None:
        tracking.log_figure(
            store, run_id, plots.confusion_matrix(confusion), "plots/confusion_matrix.png"
        )
    if reliability is not None:
        figure = plots.reliability_diagram(reliability)
        tracking.log_figure(store, run_id, figure, "plots/reliability.png")
    return model_uri


def log_champion(spec: ExperimentSpec, trial, store, data) -> str | None:
    """The MLflow model of a finished trial. Under ``tracking.log_models: best`` the trial logged
    none: its model and figures are logged now, rebuilt from its checkpoint (a run that holds a
    finished model already, e.g. from a killed earlier attempt, is not logged twice). None when
    the checkpoint is on another machine's disk: that machine logs it when its worker ends."""
    from pathlib import Path

    import numpy as np

    from workbench.registry import load_module

    run_id = trial.user_attrs["mlflow_run_id"]
    logged = trial.user_attrs.get("model_uri") or tracking.model_uri_of_run(store, run_id)
    if logged is not None:
        return logged
    if not Path(trial.user_attrs["checkpoint"]).is_file():
        print(
            f"trial {trial.number}: checkpoint {trial.user_attrs['checkpoint']} is not on this "
            "machine; the machine that trained it logs its model when its worker ends"
        )
        return None
    module = load_module(trial.user_attrs["checkpoint"], spec.model.name)
    # The trial's own data (a searched data.* field changes it), for the model's input example.
    trial_spec = _with_dotted_params(spec, {k: v for k, v in trial.params.items() if "." in k})
    trial_data = _data_for_trial(data, spec, trial_spec)
    confusion = trial.user_attrs.get("confusion")
    reliability = trial.user_attrs.get("reliability")
    history = tracking.run_history(store.tracking_uri, run_id)
    matrix = None if confusion is None else np.asarray(confusion)
    bins = None if reliability is None else np.asarray(reliability)
    policy = spec.tracking.data_policy
    return log_trained(store, run_id, module, trial_data, history, matrix, bins, policy)


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


def _log_epoch(
    epochs: tracking.EpochMetrics,
    store,
    run_id: str,
    model,
    epoch: int,
    metrics: dict[str, float],
    policy: str = "raw",
) -> None:
    """An epoch's metrics (into ``epochs``, written in batches), and the figures the model draws
    (samples, reconstructions) if any. The figures are drawn from data the model holds (a
    reconstruction draws validation images), which no sanitising step reaches: under a data
    policy other than ``raw`` none is logged."""
    epochs.add(metrics, epoch)
    if isinstance(model, DrawsEpochFigures) and policy == "raw":
        for name, figure in model.epoch_figures().items():
            tracking.log_figure(store, run_id, figure, f"plots/{name}/epoch_{epoch:03d}.png")


def attack_report(network, data, robustness):
    """The spec's adversarial evaluation of a trained network (``robustness`` section)."""
    from workbench.robustness.attacks import evaluate

    return evaluate(
        network, data, robustness.attacks, robustness.epsilons, robustness.pgd_steps,
        robustness.pgd_restarts, robustness.n_examples,
    )  # fmt: skip


def log_robustness(store, run_id: str, report) -> None:
    """Robust accuracies as ``robust/*`` metrics, the accuracy-against-ε plot, the table, and a
    ``workbench.robustness.warning`` tag when a masking check failed."""
    tracking.log_metrics(store, run_id, report.metrics())
    tracking.log_figure(store, run_id, report.plot(), "robustness/accuracy_vs_epsilon.png")
    tracking.log_text(store, run_id, report.table() + "\n", "robustness/report.txt")
    if report.warnings:
        tracking.set_tags(
            store, run_id, {"workbench.robustness.warning": "; ".join(report.warnings)}
        )


def objective_values(network, data, names, spec: ExperimentSpec | None = None) -> dict[str, float]:
    """Secondary objectives of a multi-objective study, measured on the trained network, in the
    order of ``names``."""
    from workbench.compress.report import latency_ms

    values = {}
    for name in names:
        if name == "params/count":
            values[name] = float(sum(p.numel() for p in network.parameters()))
        elif name == "latency/batch1_ms":
            example = data.split("test")[0][:1]
            values[name] = latency_ms(network.cpu().eval(), example, repeats=20)
        elif name == "robust/val_acc":  # PGD on the validation split: a study chooses on it
            from workbench.robustness.attacks import robust_accuracy

            robustness = spec.robustness
            values[name] = robust_accuracy(
                network,
                data,
                robustness.objective_epsilon,
                robustness.pgd_steps,
                robustness.n_examples,
            )
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


def _with_seed(spec: ExperimentSpec, attrs: dict[str, Any]) -> ExperimentSpec:
    """``spec`` with the seed (and split seed) an enqueued trial carries, if any."""
    if RUN_SEED not in attrs:
        return spec
    raw = spec.to_dict()
    raw["seed"] = attrs[RUN_SEED]
    if RUN_SPLIT in attrs:
        raw["data"]["split_seed"] = attrs[RUN_SPLIT]
    return load_spec(raw)


def _data_for_trial(data, base: ExperimentSpec, spec: ExperimentSpec):
    """Share the loaded data between trials; a searched batch size needs no reload."""
    from workbench.train import data_from_spec

    if spec.data == base.data and spec.seed == base.seed:
        return data
    same_but_batches = dataclasses.replace(spec.data, batch_size=base.data.batch_size)
    if same_but_batches == base.data and spec.seed == base.seed:
        shared = copy.copy(data)  # same tensors, other batch size
        shared.batch_size = spec.data.batch_size
        return shared
    fresh = data_from_spec(spec)  # another split, or another seed: another batch order
    fresh.setup()
    return fresh
