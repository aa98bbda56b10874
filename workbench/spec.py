"""Experiment specs: typed dataclasses loaded from YAML, validated once at the door.

Every error names the field at fault (``trainer.max_epochs: expected int, got 'ten'``) and is
raised before any data is read or any run is opened.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# A checkpoint given as "study:NAME" means the best trial's checkpoint of study NAME in the same
# storage (resolved by ``workbench.study.run_study``), e.g. a distillation teacher or GAN judge.
STUDY_REFERENCE = "study:"
# Data whose models the study's explanation step cannot explain (no class to attribute).
UNEXPLAINED_DATA = frozenset({"adding", "gym"})
# Study, experiment and registered-model names become MLflow filter values, Optuna keys and
# directory names: one rule for all of them, checked before any store is opened.
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE_TEXT = (
    "a name is 1 to 100 characters: letters, digits, '_', '-' and '.', starting with a letter "
    "or digit, without '..'"
)


class SpecError(ValueError):
    """A spec field is unknown, of the wrong type or holds an impossible value."""


def check_name(value: Any, where: str) -> str:
    """Refuse a name outside ``NAME_RULE`` (quotes, slashes, ``..``, spaces, overlong names)."""
    ok = isinstance(value, str) and NAME_RULE.fullmatch(value) is not None and ".." not in value
    _require(ok, where, f"{NAME_RULE_TEXT}; got {value!r}")
    return value


@dataclass
class DataSpec:
    name: str = "mnist_subset"
    """Registered data family (``workbench.available_data()``)."""
    path: str | None = None
    """Directory of IDX files (``idx`` data only)."""
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    batch_size: int = 128
    augment: bool = False
    """Small random shifts and rotations of training images, on the batch's device."""
    max_samples: int | None = None
    """Stratified subsample before splitting: tiny runs for tests and notebooks."""
    on_device: bool = True
    """Keep the in-memory splits on the model's device and batch them there (no DataLoader)."""
    normalize: bool = True
    """Standardise inputs with statistics of the training split; off keeps [0, 1] pixels."""
    options: dict[str, Any] = field(default_factory=dict)
    """Arguments of the data family itself, e.g. ``{length: 100}`` for ``adding``."""

    def check(self) -> None:
        _require(0 < self.val_fraction < 0.5, "data.val_fraction", "must be in (0, 0.5)")
        _require(0 < self.test_fraction < 0.5, "data.test_fraction", "must be in (0, 0.5)")
        _require(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        if self.max_samples is not None:
            _require(self.max_samples >= 20, "data.max_samples", "must be >= 20 (or null)")


@dataclass
class ModelSpec:
    name: str = "cnn"
    """Registered architecture (``workbench.available_models()``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Fixed constructor arguments; the search space overrides them per trial."""


@dataclass
class TrainerSpec:
    max_epochs: int = 10
    patience: int = 3
    """Early stopping: epochs without improvement of ``study.metric``."""
    accelerator: str = "auto"
    devices: str | int = "auto"
    precision: str = "auto"
    """``auto``: bf16 autocast on a GPU that supports it, else float32; or a Lightning value."""
    matmul_precision: str = "auto"
    """float32 matmuls: ``auto`` (``high``, TF32, on CUDA), ``highest``, ``high``, ``medium``."""
    compile: str = "off"
    """``torch.compile`` mode: ``off``, ``default``, ``reduce-overhead``, ``max-autotune``."""
    progress_bar: bool = False
    """Lightning's per-epoch bar; off by default in studies, which show one bar over trials."""

    def check(self) -> None:
        _require(self.max_epochs >= 1, "trainer.max_epochs", "must be >= 1")
        _require(self.patience >= 1, "trainer.patience", "must be >= 1")
        _require(
            self.accelerator in {"auto", "cpu", "gpu", "cuda", "mps"},
            "trainer.accelerator",
            f"must be one of auto, cpu, gpu, cuda, mps; got {self.accelerator!r}",
        )
        _require(
            self.matmul_precision in {"auto", "highest", "high", "medium"},
            "trainer.matmul_precision",
            f"must be auto, highest, high or medium; got {self.matmul_precision!r}",
        )
        _require(
            self.compile in {"off", "default", "reduce-overhead", "max-autotune"},
            "trainer.compile",
            f"must be off, default, reduce-overhead or max-autotune; got {self.compile!r}",
        )
        precisions = {
            "auto",
            "32-true",
            "32",
            "16-mixed",
            "bf16-mixed",
            "bf16-true",
            "16-true",
            "64-true",
        }
        _require(
            self.precision in precisions,
            "trainer.precision",
            f"must be one of {', '.join(sorted(precisions))}; got {self.precision!r}",
        )


@dataclass
class StudySpec:
    trials: int = 10
    """Total finished trials (complete + pruned) the study aims for; a resume runs the rest."""
    metric: str = "val/acc"
    direction: str = "maximize"
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    pruner: str = "median"
    pruner_options: dict[str, Any] = field(default_factory=dict)
    progress_bar: bool = True
    """One bar over the study's trials, with a line per finished trial."""
    extra_objectives: dict[str, str] = field(default_factory=dict)
    """Further objectives, e.g. ``{params/count: minimize}``: a multi-objective study (NSGA-II)."""
    workers: int = 1
    """Worker processes on this machine sharing the study's storage."""
    heartbeat_s: int = 15
    """Trial heartbeat; a trial silent for 4 heartbeats (a killed worker) is failed and retried."""
    retries: int = 1
    """How many times a trial whose worker died is re-queued with the same parameters."""
    allow_repeats: bool = False
    """Run a drawn configuration that a finished trial already ran (off: the trial is skipped,
    recorded PRUNED with the reason)."""

    def check(self) -> None:
        _require(self.trials >= 1, "study.trials", "must be >= 1")
        _require(self.workers >= 1, "study.workers", "must be >= 1")
        _require(self.heartbeat_s >= 1, "study.heartbeat_s", "must be >= 1")
        _require(self.retries >= 0, "study.retries", "must be >= 0")
        for name, direction in self.extra_objectives.items():
            _require(
                name in {"params/count", "latency/batch1_ms"},
                f"study.extra_objectives.{name}",
                "supported: params/count, latency/batch1_ms",
            )
            _require(
                direction in {"maximize", "minimize"},
                f"study.extra_objectives.{name}",
                f"must be 'maximize' or 'minimize'; got {direction!r}",
            )
        if self.extra_objectives:
            _require(
                self.pruner == "none",
                "study.pruner",
                "Optuna cannot prune a multi-objective study: use pruner: none",
            )
        _require(
            self.direction in {"maximize", "minimize"},
            "study.direction",
            f"must be 'maximize' or 'minimize'; got {self.direction!r}",
        )
        _require("/" in self.metric, "study.metric", "reads 'stage/metric', e.g. 'val/acc'")


@dataclass
class TrackingSpec:
    root: str = "mlruns"
    """Everything a run generates: MLflow and Optuna databases, artifacts, checkpoints."""
    mlflow_uri: str | None = None
    """Defaults to ``sqlite:///<root>/mlflow.db``; an ``http://`` tracking server also works."""
    optuna_storage: str | None = None
    """Defaults to ``sqlite:///<root>/optuna.db``; a ``postgresql://`` URL also works."""
    experiment: str = "workbench"
    register_as: str | None = None
    """Model Registry name for the study's best model; defaults to the spec name."""


@dataclass
class ExplainSpec:
    enabled: bool = True
    n_images: int = 4
    background: int = 64
    """SHAP background drawn from the training split."""
    shap_samples: int = 200
    lime_samples: int = 1000

    def check(self) -> None:
        _require(self.n_images >= 1, "explain.n_images", "must be >= 1")
        _require(self.background >= 1, "explain.background", "must be >= 1")
        _require(self.lime_samples >= 10, "explain.lime_samples", "must be >= 10")
        _require(self.shap_samples >= 1, "explain.shap_samples", "must be >= 1")


@dataclass
class ParamSpec:
    """One searched hyperparameter: ``float``/``int`` ranges or ``categorical`` choices."""

    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    def check(self, where: str) -> None:
        _require(
            self.type in {"float", "int", "categorical"},
            f"{where}.type",
            f"must be float, int or categorical; got {self.type!r}",
        )
        if self.type == "categorical":
            _require(bool(self.choices), f"{where}.choices", "a categorical needs choices")
            return
        _require(self.low is not None and self.high is not None, where, "needs low and high")
        _require(self.low < self.high, where, f"low ({self.low}) must be < high ({self.high})")
        if self.log:
            _require(self.low > 0, f"{where}.low", "must be > 0 when log: true")
            _require(self.step is None, f"{where}.step", "cannot be combined with log: true")


@dataclass
class ExperimentSpec:
    name: str
    """Study name in Optuna and MLflow; re-running the same name resumes it."""
    seed: int = 42
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    study: StudySpec = field(default_factory=StudySpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    explain: ExplainSpec = field(default_factory=ExplainSpec)
    search_space: dict[str, ParamSpec] = field(default_factory=dict)
    """Keys are model constructor arguments, or dotted spec fields such as ``data.batch_size``."""

    def check(self) -> None:
        check_name(self.name, "name")
        _require(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32); got {self.seed}")
        check_name(self.tracking.experiment, "tracking.experiment")
        if self.tracking.register_as is not None:
            check_name(self.tracking.register_as, "tracking.register_as")
        for key, value in self.model.params.items():
            if key.endswith("checkpoint") and str(value).startswith(STUDY_REFERENCE):
                check_name(str(value)[len(STUDY_REFERENCE) :], f"model.params.{key}")
        for part in (self.data, self.trainer, self.study, self.explain):
            part.check()
        for key, param in self.search_space.items():
            param.check(f"search_space.{key}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise SpecError(f"{where}: {message}")


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
    if spec.explain.enabled:
        _require(
            spec.data.name not in UNEXPLAINED_DATA
            and getattr(registry.model_class(spec.model.name), "explainable", False),
            "explain.enabled",
            f"SHAP and LIME explain classifiers, not {spec.model.name!r} on {spec.data.name!r} "
            "data; set it to false",
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
