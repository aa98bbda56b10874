"""workbench: pick an architecture by name, describe an experiment in YAML, run an Optuna study
whose every trial is a Lightning run tracked in MLflow, then explain the best model.

Imports are lazy: ``import workbench`` loads neither torch, Lightning, MLflow nor SHAP until a
function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "load_spec": "workbench.spec",
    "ExperimentSpec": "workbench.spec",
    "SpecError": "workbench.spec",
    "run_study": "workbench.study",
    "StudyResult": "workbench.study",
    "available_models": "workbench.registry",
    "available_data": "workbench.registry",
    "create_model": "workbench.registry",
    "create_data": "workbench.registry",
    "fit": "workbench.train",
    "data_from_spec": "workbench.train",
    "load_module": "workbench.registry",
    "explain_model": "workbench.explain",
    "load_network": "workbench.tracking",
    "trained": "workbench.trained_model",
    "report_of": "workbench.study.report",
    "show_report": "workbench.study.report",
    "TrainedModel": "workbench.trained_model",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from workbench.explain import explain_model
    from workbench.registry import (
        available_data,
        available_models,
        create_data,
        create_model,
        load_module,
    )
    from workbench.spec import ExperimentSpec, SpecError, load_spec
    from workbench.study import StudyResult, run_study
    from workbench.study.report import report_of, show_report
    from workbench.tracking import load_network
    from workbench.train import data_from_spec, fit
    from workbench.trained_model import TrainedModel, trained


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
