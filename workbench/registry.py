"""Name → architecture and name → data family: the only doors to models and data.

Adding an architecture touches one file: it decorates its LightningModule with ``@register_model``
and its module path is listed in ``_MODEL_MODULES`` so the registry can import it on demand.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Imported on first lookup, so `import workbench` stays cheap (these pull in torch and Lightning).
_MODEL_MODULES = (
    "workbench.models.cnn",
    "workbench.models.mlp",
    "workbench.models.rnn",
    "workbench.models.transformer",
    "workbench.models.autoencoder",
    "workbench.models.gan",
    "workbench.models.dqn",
    "workbench.compress.distill",
)
_DATA_MODULES = (
    "workbench.data.images",
    "workbench.data.tabular",
    "workbench.data.sequences",
    "workbench.data.rl",
)

# Constructor arguments that the data module supplies, not the spec.
DATA_PROVIDED_ARGS = frozenset({"input_shape", "num_classes", "task", "env"})

_MODELS: dict[str, type] = {}


class UnknownNameError(LookupError):
    """A model or data name that is not registered; the message lists the valid ones."""


_DATA: dict[str, Callable[..., Any]] = {}


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator: make a LightningModule buildable as ``build_model(name, ...)``."""

    def add(cls: type) -> type:
        _MODELS[name] = cls
        return cls

    return add


def register_data(name: str) -> Callable[[Callable], Callable]:
    """Decorator for a factory returning a LightningDataModule."""

    def add(factory: Callable) -> Callable:
        _DATA[name] = factory
        return factory

    return add


def _import_all(modules: tuple[str, ...]) -> None:
    for module in modules:
        importlib.import_module(module)


def available_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a glob pattern."""
    _import_all(_MODEL_MODULES)
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def available_data(pattern: str = "*") -> list[str]:
    """Registered data family names matching a glob pattern."""
    _import_all(_DATA_MODULES)
    return sorted(n for n in _DATA if fnmatch.fnmatch(n, pattern))


def model_class(name: str) -> type:
    """The LightningModule class registered as ``name``; a wrong name lists the valid ones."""
    _import_all(_MODEL_MODULES)
    if name not in _MODELS:
        raise UnknownNameError(
            f"model.name: unknown architecture {name!r}; valid: {', '.join(sorted(_MODELS))}"
        )
    return _MODELS[name]


def data_factory(name: str) -> Callable[..., Any]:
    """The data-module factory registered as ``name``; a wrong name lists the valid ones."""
    _import_all(_DATA_MODULES)
    if name not in _DATA:
        raise UnknownNameError(
            f"data.name: unknown data family {name!r}; valid: {', '.join(sorted(_DATA))}"
        )
    return _DATA[name]


def constructor_arguments(name: str) -> set[str]:
    """Every argument of the constructor of ``name``."""
    return set(inspect.signature(model_class(name).__init__).parameters) - {"self"}


def model_arguments(name: str) -> set[str]:
    """Hyperparameters a spec may set for ``name``: constructor arguments the data does not fix."""
    return constructor_arguments(name) - DATA_PROVIDED_ARGS


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
    return required - {"self"} - DATA_PROVIDED_ARGS


def build_model(name: str, **hparams: Any) -> Any:
    """Construct the registered LightningModule ``name`` with explicit hyperparameters."""
    return model_class(name)(**hparams)


def build_data(name: str, **options: Any) -> Any:
    """Construct the registered LightningDataModule ``name``."""
    return data_factory(name)(**options)


def load_module(path: str | Path, name: str) -> Any:
    """Rebuild registered model ``name`` from a checkpoint's saved hyperparameters and weights
    (as timm's ``create_model(name, checkpoint_path=...)``), in eval mode."""
    state = read_checkpoint(path)
    module = build_model(name, **state["hyper_parameters"])
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
