"""Where a fine-tuned model came from: each run that started from a backbone records it (tags,
and the base model as an MLflow 3 model input), and ``lineage`` walks those records back to the
first pretraining run.

Registered versions are found by their run id (``search_model_versions``): on a SQLite store a
version's ``model_id`` can come back empty, while its ``run_id`` is always set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.tracking import STUDY, Store, filter_value, set_tags

BASE_SOURCE = "workbench.base.source"  # what the spec named: study:NAME, models:/..., a .ckpt
BASE_RUN = "workbench.base.run"  # the run that trained the backbone's weights
BASE_MODEL = "workbench.base.model"  # its logged model, models:/m-...
BASE_VERSION = "workbench.base.version"  # its registered version, NAME/VERSION
BASE_PRETRAINED = "workbench.base.pretrained"  # false: the architecture only, random weights


@dataclass
class Step:
    """One run of a lineage, with the registered versions of its model."""

    run_id: str
    run_name: str
    study: str | None
    model_name: str | None
    versions: list[str] = field(default_factory=list)
    """``models:/NAME/VERSION`` (with ``@alias`` where one points at it)."""
    base_source: str | None = None
    base_model: str | None = None
    base_version: str | None = None
    base_pretrained: bool = False


def log_base_model(
    store: Store,
    run_id: str,
    source: str,
    base_run: str | None,
    base_model_uri: str | None,
    pretrained: bool,
) -> None:
    """Record on ``run_id`` the backbone it started from; with pretrained weights, the base
    model also becomes an input of the run (``MlflowClient.log_inputs(models=...)``)."""
    from mlflow.entities import LoggedModelInput

    tags = {BASE_SOURCE: source, BASE_PRETRAINED: str(pretrained).lower()}
    if pretrained and base_run is not None:
        tags[BASE_RUN] = base_run
        version = named_version(store, source, base_run)
        if version:
            tags[BASE_VERSION] = version
    if pretrained and base_model_uri and base_model_uri.startswith("models:/m-"):
        tags[BASE_MODEL] = base_model_uri
        model_id = base_model_uri.removeprefix("models:/")
        store.client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
    set_tags(store, run_id, tags)


def named_version(store: Store, source: str, run_id: str) -> str | None:
    """``NAME/VERSION`` of the registered version ``source`` names (``models:/NAME/VERSION``,
    ``models:/NAME@ALIAS``); for another source, the version of ``run_id`` that holds the
    ``champion`` alias, else its first."""
    client = store.client
    target = source.removeprefix("models:/") if source.startswith("models:/") else ""
    if target and not target.startswith("m-"):
        name, _, alias = target.partition("@")
        if alias:
            return f"{name}/{client.get_model_version_by_alias(name, alias).version}"
        return target
    versions = registered_versions(store, run_id)
    chosen = next((v for v in versions if "champion" in v.partition("@")[2].split(",")), None)
    chosen = chosen or (versions[0] if versions else None)
    return chosen.removeprefix("models:/").split("@")[0] if chosen else None


def log_data_input(store: Store, run_id: str, name: str, digest: str, sizes: dict) -> None:
    """The run's training data as an MLflow dataset input: the data family, its fingerprint as
    the digest, and the split sizes as its profile (the run page's Dataset column)."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=name, digest=digest[:36], source_type="workbench", source=json.dumps({"data": name}),
        profile=json.dumps(sizes),
    )  # fmt: skip
    context = [InputTag("mlflow.data.context", "training")]
    store.client.log_inputs(run_id, datasets=[DatasetInput(dataset, context)])


def registered_versions(store: Store, run_id: str) -> list[str]:
    """``models:/NAME/VERSION[@alias,...]`` of every registered version made from ``run_id``."""
    found = store.client.search_model_versions(f"run_id = {filter_value(run_id)}")
    out = []
    for v in sorted(found, key=lambda v: (v.name, int(v.version))):
        v = store.client.get_model_version(v.name, v.version)  # a search leaves aliases out
        aliases = f"@{','.join(v.aliases)}" if v.aliases else ""
        out.append(f"models:/{v.name}/{v.version}{aliases}")
    return out


def lineage(store: Store, run_id: str) -> list[Step]:
    """The runs behind ``run_id``'s model, first pretraining run first, ``run_id`` last."""
    chain: list[Step] = []
    seen: set[str] = set()
    current: str | None = run_id
    while current is not None and current not in seen:
        seen.add(current)
        try:
            run = store.client.get_run(current)
        except Exception as exc:  # MLflow raises its own types for a deleted or unknown run
            raise LookupError(f"lineage: run {current} is not in {store.tracking_uri}") from exc
        tags = run.data.tags
        chain.append(
            Step(
                run_id=current,
                run_name=run.info.run_name,
                study=tags.get(STUDY),
                model_name=tags.get("model.name"),
                versions=[v.split("@")[0] for v in registered_versions(store, current)],
                base_source=tags.get(BASE_SOURCE),
                base_model=tags.get(BASE_MODEL),
                base_version=tags.get(BASE_VERSION),
                base_pretrained=tags.get(BASE_PRETRAINED) == "true",
            )
        )
        current = tags.get(BASE_RUN) if tags.get(BASE_PRETRAINED) == "true" else None
    return chain[::-1]


def describe(chain: list[Step], store: Store) -> str:
    """The chain as text: pretraining run → base model version → fine-tuning run → … →
    registered model."""
    lines = []
    first = chain[0]
    outside = first.base_pretrained and first.base_source is not None  # a package, a .ckpt
    if outside:
        lines.append(f"pretrained model {first.base_source} (outside the tracking store)")
    for index, step in enumerate(chain):
        arrow = "  → " if index or outside else ""
        if index > 0:
            base = step.base_version and f"models:/{step.base_version}"
            lines.append(f"  → base model {base or step.base_source} ({step.base_model or '-'})")
        role = "fine-tuning run" if index > 0 or outside else "run"
        if index == 0 and len(chain) > 1 and not outside:
            role = "pretraining run"
        lines.append(
            f"{arrow}{role} {step.run_id} ({step.run_name}; study {step.study or '-'}; "
            f"model {step.model_name or '-'})"
        )
    last = chain[-1]
    for version in registered_versions(store, last.run_id):
        lines.append(f"  → registered model {version}")
    return "\n".join(lines)
