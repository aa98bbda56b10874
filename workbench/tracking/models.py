"""MLflow's model side: logging a network, the Model Registry (versions, aliases, owners),
loading a logged model back, its scoring app, and resolving ``models:/`` URIs to runs."""

from __future__ import annotations

from typing import Any

import mlflow

from workbench.tracking import STUDY, Store, filter_value
from workbench.tracking.sanitize import sanitize, synthetic_like


def log_model(
    store: Store,
    run_id: str,
    network,
    input_example,
    policy: str = "raw",
    reference=None,
    seed: int = 0,
) -> str:
    """Log a plain network with MLflow's PyTorch flavour (torch.export ``.pt2``, no pickle).

    The input example must hold at least two rows so the exported batch dimension stays dynamic.
    It goes through ``sanitize`` under ``policy`` (``reference``: rows whose statistics synthetic
    rows take, e.g. the training split): ``synthetic`` saves synthetic rows as the example;
    ``none`` saves none, and the model still gets its signature and its traced graph from
    synthetic rows that are not kept (MLflow saves no example given as a tuple of tensors).
    Requirements are given explicitly: inferring them re-imports the model and costs seconds.
    MLflow's own check of the serving example (load the saved model back, predict, warn on
    failure) is off: it costs ~0.2 s a trial. The tests do it instead (tests/test_deploy.py),
    and load every experiment's registered model and compare it with its checkpoint.
    """
    import mlflow.pytorch
    import torch

    network = network.eval().cpu()
    example, signature = sanitize(input_example, policy, seed, reference), None
    if example is None:  # policy none
        from mlflow.models import infer_signature

        traced = synthetic_like(input_example, seed, reference)
        with torch.no_grad():
            output = network(torch.from_numpy(traced)).numpy()
        signature = infer_signature(traced, output)
        example = (torch.from_numpy(traced),)
    before = store.client.get_run(run_id).info  # a finished run (the champion's) stays as it was
    try:
        with mlflow.start_run(run_id=run_id, nested=True):
            info = mlflow.pytorch.log_model(
                network,
                name="model",
                input_example=example,
                signature=signature,
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"mlflow=={mlflow.__version__}",
                ],
                validate_serving_input=False,
            )
    finally:
        if before.status != "RUNNING":  # start_run reopened it and closed it anew
            store.client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    return info.model_uri


def model_uri_of_run(store: Store, run_id: str) -> str | None:
    """The URI of the finished model a run logged (``models:/m-...``), or None."""
    from mlflow.entities import LoggedModelStatus

    run = store.client.get_run(run_id)
    found = store.client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = {filter_value(run_id)}"
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    return f"models:/{ready[0].model_id}" if ready else None


def register_version(
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


def load_network(model_uri: str):
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
