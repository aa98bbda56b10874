"""Loading a spec: YAML (or a dict) → overrides → typed dataclasses → checks against the registry.

Every error names the field at fault (``trainer.max_epochs: expected int, got 'ten'``) and is
raised before any data is read or any run is opened.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from workbench.spec.types import (
    FREEZE_RULE,
    STUDY_REFERENCE,
    BackboneSpec,
    ExperimentSpec,
    SpecError,
    _require,
)


def load_spec(
    source: str | Path | dict, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentSpec:
    """Load a YAML file (or a dict), apply ``a.b=c`` overrides, type-check and validate it."""
    if isinstance(source, dict):
        raw, default_name = copy.deepcopy(source), "experiment"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"spec file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path}: not a YAML text file ({exc.reason})") from exc
        except yaml.YAMLError as exc:
            raise SpecError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
        default_name = path.stem
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: the top level must be a mapping of fields")
    raw.setdefault("name", default_name)
    for item in overrides:
        apply_override(raw, item)
    spec = _build(ExperimentSpec, raw, "")
    spec.check()
    from workbench.registry import UnknownNameError

    try:
        _check_against_registry(spec)
    except UnknownNameError as exc:
        raise SpecError(str(exc)) from exc
    return spec


def apply_override(raw: dict, item: str) -> None:
    """Set ``a.b.c=value`` in a raw spec dict; the value is parsed as YAML (``1e-3``, ``true``)."""
    if "=" not in item:
        raise SpecError(f"override {item!r}: expected key=value, e.g. trainer.max_epochs=1")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"override {item!r}: {key!r} is not a field path such as data.batch_size")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise SpecError(f"override {key}: cannot read {text!r} as a YAML value") from exc
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a raw mapping, naming any unknown or mistyped field."""
    label = where or "spec"
    if not isinstance(raw, dict):
        raise SpecError(f"{label}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise SpecError(
            f"{_join(where, unknown[0])}: unknown field; valid fields: {', '.join(sorted(fields))}"
        )
    values = {name: _convert(hints[name], value, _join(where, name)) for name, value in raw.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise SpecError(f"{_join(where, missing[0])}: required field is missing")
    return cls(**values)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except SpecError as exc:
                errors.append(str(exc))
        raise SpecError(
            errors[0] if len(errors) == 1 else f"{where}: got {value!r}, expected {hint}"
        )
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(hint)
        return {k: _convert(value_type, v, _join(where, str(k))) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads '1e-3' as a string
            return float(value)
        except ValueError:
            pass
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise SpecError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _check_against_registry(spec: ExperimentSpec) -> None:
    """Names and constructor arguments must exist before anything expensive happens."""
    from workbench import registry

    registry.data_factory(spec.data.name)  # raises naming the valid ones
    valid = registry.model_arguments(spec.model.name)
    types_ = registry.model_argument_types(spec.model.name)
    for key, value in spec.model.params.items():
        _require(
            key in valid,
            f"model.params.{key}",
            f"not an argument of {spec.model.name!r}; valid: {', '.join(sorted(valid))}",
        )
        hint = types_.get(key)
        plain = typing.get_args(hint) or (hint,)
        if hint is not None and all(t in (int, float, bool, str, type(None)) for t in plain):
            # YAML 1.1 reads 1e-3 as a string: the constructor's own types decide.
            spec.model.params[key] = _convert(hint, value, f"model.params.{key}")
    for key in sorted(registry.required_model_arguments(spec.model.name)):
        _require(
            key in spec.model.params or key in spec.search_space,
            f"model.params.{key}",
            f"required by {spec.model.name!r}",
        )
    for key, value in spec.model.params.items():
        if key.endswith("checkpoint") and not str(value).startswith(STUDY_REFERENCE):
            _require(Path(str(value)).is_file(), f"model.params.{key}", f"file not found: {value}")
    _check_backbone(spec)
    if spec.explain.enabled:
        _require(
            registry.explainable(spec.model.name, spec.data.name),
            "explain.enabled",
            f"the study's SHAP and LIME step explains image, table and sequence classifiers, "
            f"not {spec.model.name!r} on {spec.data.name!r} data; set it to false (text: "
            "workbench.explain.text.explain_text)",
        )
    for key in spec.search_space:
        if "." in key:
            section, _, name = key.partition(".")
            part = getattr(spec, section, None)
            _require(
                dataclasses.is_dataclass(part)
                and name in {f.name for f in dataclasses.fields(part)},
                f"search_space.{key}",
                "dotted keys must name a spec field such as data.batch_size",
            )
        else:
            _require(
                key in valid,
                f"search_space.{key}",
                f"not an argument of {spec.model.name!r}; valid: {', '.join(sorted(valid))}",
            )


def _check_backbone(spec: ExperimentSpec) -> None:
    """A backbone source only for a model built on one, and the fine-tuning fields (set or
    searched) only for a model that takes them."""
    from workbench import registry

    backbone, name = spec.backbone, spec.model.name
    accepted = registry.constructor_arguments(name)
    if backbone.source is not None:
        _require(
            "base" in accepted,
            "backbone.source",
            f"model {name!r} is trained from scratch; a classifier on a pretrained backbone is "
            "model.name: transfer",
        )
        if backbone.source.endswith(".ckpt"):
            _require(
                Path(backbone.source).is_file(),
                "backbone.source",
                f"file not found: {backbone.source}",
            )
            try:
                registry.model_class(backbone.model)
            except registry.UnknownNameError as exc:
                raise SpecError(str(exc).replace("model.name:", "backbone.model:", 1)) from exc
        else:
            _require(
                backbone.model is None,
                "backbone.model",
                f"only a .ckpt source needs it; {backbone.source} names its architecture",
            )
    else:
        _require(
            "base" not in accepted,
            "backbone.source",
            f"model {name!r} starts from a pretrained backbone: name one (study:NAME, "
            "models:/NAME@ALIAS, a run id or a .ckpt file)",
        )
    if "base" in accepted:  # a transfer model: module_from_spec copies the weights or not
        accepted = accepted | {"pretrained"}
    freeze = spec.search_space.get("backbone.freeze")
    for choice in (freeze.choices or []) if freeze is not None else []:
        _require(
            isinstance(choice, str) and FREEZE_RULE.fullmatch(choice) is not None,
            "search_space.backbone.freeze.choices",
            f"each must be all, none or first_N (N >= 1); got {choice!r}",
        )
    factor = spec.search_space.get("backbone.lr_factor")
    if factor is not None and factor.type != "categorical":
        _require(factor.low > 0, "search_space.backbone.lr_factor.low", "must be > 0")
    unfreezing = backbone.unfreeze_every > 0 or "backbone.unfreeze_every" in spec.search_space
    _require(
        not (unfreezing and spec.trainer.strategy == "ddp"),
        "backbone.unfreeze_every",
        "gradual unfreezing cannot run under trainer.strategy: ddp (DDP registers only the "
        "parameters trainable when it starts; blocks unfrozen later would not be synchronised)",
    )
    defaults = BackboneSpec()
    searched = {k.partition(".")[2] for k in spec.search_space if k.startswith("backbone.")}
    for field_name in registry.BACKBONE_ARGS:
        if getattr(backbone, field_name) != getattr(defaults, field_name) or field_name in (
            searched
        ):
            _require(
                field_name in accepted,
                f"backbone.{field_name}",
                f"model {name!r} has no pretrained backbone to fine-tune",
            )
