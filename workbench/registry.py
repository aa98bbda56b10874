"""Name → architecture and name → data family: the only doors to models and data.

Adding an architecture is two files: ``workbench/models/x.py``, whose LightningModule is decorated
with ``@register_model("x")``, and ``experiments/x.yaml``. Every module under ``workbench/models/``
and ``workbench/data/`` is imported on the first lookup, so no list here names them. A data family
is a factory decorated with ``@register_data("name")`` that returns a data module keeping
``workbench.contracts.DataFamily``.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Constructor arguments that the data module supplies, not the spec.
DATA_PROVIDED_ARGS = frozenset({"input_shape", "num_classes", "task", "env"})
# Constructor arguments that the spec's ``backbone:`` section supplies (the base model's name and
# hyperparameters come from ``backbone.source``).
BACKBONE_ARGS = ("pretrained", "freeze", "lr_factor", "unfreeze_every")
BACKBONE_PROVIDED_ARGS = frozenset({"base", "base_params", *BACKBONE_ARGS})

_MODELS: dict[str, type] = {}
_DATA: dict[str, Callable[..., Any]] = {}
_UNEXPLAINED_DATA: set[str] = set()


class UnknownNameError(LookupError):
    """A model or data name that is not registered; the message lists the valid ones."""


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make a LightningModule buildable as ``create_model(name, ...)``."""

    def add(cls: type) -> type:
        _MODELS[name] = cls
        return cls

    return add


def register_data(name: str, explainable: bool = True) -> Callable[[Callable], Callable]:
    """Decorator for a factory returning a data module (``workbench.contracts.DataFamily``).
    ``explainable=False`` marks families whose targets SHAP and LIME cannot explain (regression,
    environments)."""

    def add(factory: Callable) -> Callable:
        _DATA[name] = factory
        if not explainable:
            _UNEXPLAINED_DATA.add(name)
        return factory

    return add


@functools.cache
def _import_package(package: str) -> None:
    """Import every module of ``package`` (on first lookup, so ``import workbench`` stays cheap:
    these pull in torch and Lightning)."""
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__, f"{package}."):
        importlib.import_module(info.name)


def _import_models() -> None:
    _import_package("workbench.models")


def _import_data() -> None:
    _import_package("workbench.data")


def available_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob pattern."""
    _import_models()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def available_data(pattern: str = "*") -> list[str]:
    """Registered data family names matching a glob pattern."""
    _import_data()
    return sorted(n for n in _DATA if fnmatch.fnmatch(n, pattern))


def model_class(name: str) -> type:
    """The LightningModule class registered as ``name``; a wrong name lists the valid ones."""
    _import_models()
    if name not in _MODELS:
        raise UnknownNameError(
            f"model.name: unknown architecture {name!r}; valid: {', '.join(sorted(_MODELS))}"
        )
    return _MODELS[name]


def data_factory(name: str) -> Callable[..., Any]:
    """The data-module factory registered as ``name``; a wrong name lists the valid ones."""
    _import_data()
    if name not in _DATA:
        raise UnknownNameError(
            f"data.name: unknown data family {name!r}; valid: {', '.join(sorted(_DATA))}"
        )
    return _DATA[name]


def constructor_arguments(name: str) -> set[str]:
    """Every argument of the constructor of ``name``."""
    return set(inspect.signature(model_class(name).__init__).parameters) - {"self"}


def model_arguments(name: str) -> set[str]:
    """Hyperparameters a spec may set for ``name`` in ``model.params``: constructor arguments
    that neither the data nor the ``backbone:`` section fixes."""
    return constructor_arguments(name) - DATA_PROVIDED_ARGS - BACKBONE_PROVIDED_ARGS


def model_argument_types(name: str) -> dict[str, Any]:
    """The annotated type of each constructor argument of ``name`` (where it has one)."""
    import typing

    try:
        hints = typing.get_type_hints(model_class(name).__init__)
    except Exception:  # an annotation that cannot be resolved: no types, no conversion
        return {}
    return {k: v for k, v in hints.items() if k != "return"}


def required_model_arguments(name: str) -> set[str]:
    """Hyperparameters of ``name`` that have no default, so a spec must set them."""
    params = inspect.signature(model_class(name).__init__).parameters
    required = {p for p, v in params.items() if v.default is inspect.Parameter.empty}
    return required - {"self"} - DATA_PROVIDED_ARGS - BACKBONE_PROVIDED_ARGS


def explainable(model: str, data: str) -> bool:
    """Whether SHAP and LIME apply: a model class that says it is an explainable classifier
    (``explainable = True``) on a data family registered as explainable."""
    _import_data()
    return data not in _UNEXPLAINED_DATA and bool(getattr(model_class(model), "explainable", False))


def create_model(name: str, **hparams: Any) -> Any:
    """Construct the registered LightningModule ``name`` with explicit hyperparameters."""
    return model_class(name)(**hparams)


def create_data(name: str, **options: Any) -> Any:
    """Construct the registered LightningDataModule ``name``."""
    return data_factory(name)(**options)


def load_module(path: str | Path, name: str) -> Any:
    """Rebuild registered model ``name`` from a checkpoint's saved hyperparameters and weights
    (as timm's ``create_model(name, checkpoint_path=...)``), in eval mode."""
    state = read_checkpoint(path)
    module = create_model(name, **state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    return module.eval()


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only=True``; errors name the file."""
    import pickle

    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ValueError(f"{path}: refused: it holds more than weights ({first})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from exc
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return state
