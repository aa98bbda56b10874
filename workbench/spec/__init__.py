"""Experiment specs: typed dataclasses loaded from YAML, validated once at the door.

Every error names the field at fault (``trainer.max_epochs: expected int, got 'ten'``) and is
raised before any data is read or any run is opened. ``types`` holds the sections and their
fields; ``loading`` reads YAML, applies ``--set`` overrides and checks names against the registry.
"""

from workbench.spec.loading import apply_override, load_spec
from workbench.spec.types import (
    NAME_RULE,
    NAME_RULE_TEXT,
    STUDY_REFERENCE,
    BackboneSpec,
    ConfirmSpec,
    DataSpec,
    ExperimentSpec,
    ExplainSpec,
    ModelSpec,
    ParamSpec,
    SpecError,
    StudySpec,
    TrackingSpec,
    TrainerSpec,
    check_name,
)

__all__ = [
    "NAME_RULE",
    "NAME_RULE_TEXT",
    "STUDY_REFERENCE",
    "BackboneSpec",
    "ConfirmSpec",
    "DataSpec",
    "ExperimentSpec",
    "ExplainSpec",
    "ModelSpec",
    "ParamSpec",
    "SpecError",
    "StudySpec",
    "TrackingSpec",
    "TrainerSpec",
    "apply_override",
    "check_name",
    "load_spec",
]
