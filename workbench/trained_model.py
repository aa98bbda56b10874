"""One door to a trained model: from what a user names (a spec or ``study:NAME``, an MLflow run
id, a ``models:/`` URI, a checkpoint path) to one object with the module, its network, data, spec
and run. The CLI's explain/export/compress/serve, the notebooks and compress all enter here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.spec import STUDY_REFERENCE, ExperimentSpec, load_spec
from workbench.spec.types import RUN_ID_RULE as RUN_ID


@dataclass
class TrainedModel:
    """A trained model and everything it came from. The module and data load on first use."""

    spec: ExperimentSpec
    checkpoint: str
    run_id: str | None = None
    model_uri: str | None = None
    """The MLflow model the run logged (``models:/m-...``), what ``workbench serve`` serves."""
    store: Any = None
    _module: Any = field(default=None, repr=False)
    _data: Any = field(default=None, repr=False)

    @property
    def module(self):
        """The LightningModule, rebuilt from the checkpoint (eval mode)."""
        if self._module is None:
            from workbench.registry import load_module

            self._module = load_module(self.checkpoint, self.spec.model.name)
        return self._module

    def mlflow_model(self) -> str:
        """The MLflow model this trial logged (what ``workbench serve`` serves); an error saying
        why when it logged none."""
        if self.model_uri is None:
            raise LookupError(
                f"run {self.run_id}: no MLflow model was logged for this trial "
                "(tracking.log_models: best logs the champion's only); serve the champion "
                "(models:/NAME@champion) or run the study with tracking.log_models=all"
            )
        return self.model_uri

    @property
    def network(self):
        """The plain ``nn.Module`` inside: what export, explanation and compression take."""
        return self.module.net

    @property
    def data(self):
        """The spec's data module, set up (the same splits and normalisation as in training)."""
        if self._data is None:
            from workbench.train import data_from_spec

            self._data = data_from_spec(self.spec)
            self._data.setup()
        return self._data

    @property
    def explain_skipped_because(self) -> str | None:
        """``None`` when ``explain()`` applies; otherwise one sentence saying why it does not
        (what a notebook prints in place of the explanation)."""
        from workbench.registry import explainable, model_class

        name, data = self.spec.model.name, self.spec.data.name
        if not getattr(model_class(name), "explainable", False):
            return (
                f"Explanation skipped: SHAP and LIME explain classifiers, and {name!r} is not "
                "one (it has no class whose evidence they could attribute)."
            )
        if not explainable(name, data):
            return (
                f"Explanation skipped: on {data!r} data, {name!r} predicts nothing the pixel, "
                "feature and time-step explainers attribute (they explain classifications, not "
                "regression values or actions; text has workbench.explain.text.explain_text)."
            )
        if not self.spec.explain.enabled:
            return "Explanation skipped: the spec turns it off (explain.enabled: false)."
        return None

    def explain(self, log: bool = True, **options):
        """SHAP and LIME with trust metrics (``workbench.explain.explain_model`` options); the
        report is logged to this model's run when it has one and ``log`` is true.

        Logged under ``tracking.data_policy: synthetic``, the report explains synthetic rows
        (``tracking.sanitize``) instead of test rows, and that is the report returned (with
        ``log=False``, the test rows); under ``none`` only its trust metrics are logged.
        """
        from workbench import tracking
        from workbench.explain import explain_model

        logged = log and self.run_id is not None and self.store is not None
        policy = self.spec.tracking.data_policy
        if logged and policy == "synthetic":
            import inspect

            import torch

            defaults = inspect.signature(explain_model).parameters
            n, seed = (options.get(k, defaults[k].default) for k in ("n", "seed"))
            test_x, train_x = self.data.split("test")[0], self.data.split("train")[0]
            rows = tracking.sanitize(
                test_x[:n].cpu().numpy(), policy, seed, reference=train_x.cpu().numpy()
            )
            options["rows"] = torch.from_numpy(rows)
        report = explain_model(self.module, self.data, **options)
        if logged:
            if policy == "synthetic":
                report.settings["rows"] = "synthetic"
            tracking.log_explanation(self.store, self.run_id, report, policy=policy)
        return report


def trained(
    source: str | Path | ExperimentSpec,
    overrides: list[str] | tuple[str, ...] = (),
    root: str | Path = "mlruns",
    experiment: str = "workbench",
    model: str | None = None,
    data=None,
) -> TrainedModel:
    """The trained model ``source`` names.

    - a spec (path or ``ExperimentSpec``, with ``overrides``): its study's best trial;
    - ``study:NAME``: the best trial of study NAME in the store at ``root``;
    - a 32-hex MLflow run id of a trial, ``runs:/ID/model``, or a registry URI
      (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-...``);
    - a checkpoint file (``.ckpt``) with ``model``, the registered architecture it holds.
    """
    if isinstance(source, ExperimentSpec) or str(source).endswith((".yaml", ".yml")):
        spec = source if isinstance(source, ExperimentSpec) else load_spec(source, overrides)
        return _best_of_study(spec, data)
    text = str(source)
    if text.startswith(STUDY_REFERENCE):
        store = _store(root, experiment)
        from workbench import tracking

        name = text[len(STUDY_REFERENCE) :]
        parent = tracking.find_study_run(store, name)
        if parent is None:
            raise LookupError(f"{text}: no study {name!r} in {store.tracking_uri}")
        return _best_of_study(load_spec(tracking.run_spec(store, parent), overrides), data)
    if text.startswith(("models:/", "runs:/")) or RUN_ID.fullmatch(text):
        from workbench import tracking

        store = _store(root, experiment)
        if text.startswith("runs:/"):  # runs:/<run id>/model
            text = text.removeprefix("runs:/").split("/")[0]
        run_id = tracking.resolve_run_id(store, text)
        return _from_run(store, run_id, overrides, data)
    if text.endswith(".ckpt"):
        if model is None:
            raise ValueError(f"{text}: a checkpoint needs model= (a registered architecture)")
        from workbench.registry import UnknownNameError, explainable

        try:  # a checkpoint of a model SHAP and LIME cannot explain is still a model
            explained = explainable(model, "mnist_subset")
        except UnknownNameError as exc:
            raise ValueError(f"{text}: {exc}") from exc
        raw = {"name": "checkpoint", "model": {"name": model}, "explain": {"enabled": explained}}
        spec = load_spec(raw, overrides)
        return TrainedModel(spec, text, _data=data)
    raise ValueError(
        f"{text!r}: expected a spec file, study:NAME, an MLflow run id, a models:/ URI or a "
        ".ckpt checkpoint"
    )


def from_trial(spec: ExperimentSpec, trial, store=None, data=None) -> TrainedModel:
    """The model of a finished Optuna trial of ``spec``'s study (its checkpoint and run)."""
    checkpoint = trial.user_attrs.get("checkpoint")
    if checkpoint is None:
        raise LookupError(f"study {spec.name!r}, trial {trial.number}: it left no checkpoint")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"study {spec.name!r}, trial {trial.number}: {checkpoint} is gone")
    return TrainedModel(
        spec,
        checkpoint,
        run_id=trial.user_attrs.get("mlflow_run_id"),
        model_uri=trial.user_attrs.get("model_uri") or _logged_model(store, trial),
        store=store,
        _data=data,
    )


def _logged_model(store, trial) -> str | None:
    """The model a trial's run logged (the champion's is logged when its study ends)."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if store is None or run_id is None:
        return None
    from workbench import tracking

    return tracking.model_uri_of_run(store, run_id)


def _best_of_study(spec: ExperimentSpec, data=None) -> TrainedModel:
    from workbench.study import load_best_trial, storage_url

    store = _store(spec.tracking.root, spec.tracking.experiment, spec.tracking.mlflow_uri)
    try:
        best = load_best_trial(spec)
    except KeyError as exc:  # Optuna's "Record does not exist."
        raise LookupError(f"study {spec.name!r}: not in {storage_url(spec)}; run it first") from exc
    return from_trial(spec, best, store, data)


def _from_run(store, run_id: str, overrides, data=None) -> TrainedModel:
    from workbench import tracking
    from workbench.study import load_trial
    from workbench.study.summary import study_of_run

    tags = tracking.run_tags(store, run_id)
    if tags.get(tracking.ROLE) not in {"trial", "confirm", "reproduce"}:
        role = tags.get(tracking.ROLE)
        raise LookupError(f"run id {run_id!r}: a {role} run, not a trial: it has no logged model")
    raw = tracking.run_spec(store, run_id)
    raw.setdefault("tracking", {})["root"] = str(store.root)
    if tags.get(tracking.ROLE) != "trial" and "seed" in tags:  # a confirmation's own seed
        raw["seed"] = int(tags["seed"])
        split = tags.get("data.split_seed")
        if split is not None and split != tags["seed"]:  # the search's split, kept
            raw.setdefault("data", {})["split_seed"] = int(split)
    spec = load_spec(raw, overrides)
    name = study_of_run(tags[tracking.STUDY], tags)
    trial = load_trial(spec, name, int(tags[tracking.TRIAL]))
    return from_trial(spec, trial, store, data)


def _store(root, experiment: str, tracking_uri: str | None = None):
    from workbench import tracking

    if tracking_uri is None and not (Path(root) / "mlflow.db").is_file():
        raise FileNotFoundError(f"{Path(root).resolve()}: no mlflow.db; run a study first")
    return tracking.open_store(root, experiment, tracking_uri)
