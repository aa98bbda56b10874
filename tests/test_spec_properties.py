"""Bad input found by a machine: Hypothesis draws names, field values and ``--set`` strings.

The property: loading either gives a valid spec or stops with a ``SpecError`` that names the
field at fault; nothing else escapes, and a populated store is byte-identical afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import EXPERIMENTS
from workbench.spec import NAME_RULE, ExperimentSpec, SpecError, load_spec

SPEC = EXPERIMENTS / "mnist_cnn.yaml"
RAW = yaml.safe_load(SPEC.read_text())
CHEAP = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _field_paths(cls: type = ExperimentSpec, prefix: str = "") -> list[str]:
    """Every scalar field of the spec as a dotted path (``data.batch_size``, ``seed``, ...)."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            paths += _field_paths(hint, f"{prefix}{f.name}.")
        elif typing.get_origin(hint) is not dict:
            paths.append(f"{prefix}{f.name}")
    return paths


FIELDS = _field_paths()
# Counts that must be positive in any valid spec (and the least value each allows).
MINIMUMS = {
    "seed": 0,
    "data.batch_size": 1,
    "data.max_samples": 20,
    "trainer.max_epochs": 1,
    "trainer.patience": 1,
    "study.trials": 1,
    "study.workers": 1,
    "study.heartbeat_s": 1,
    "study.retries": 0,
    "explain.n_images": 1,
    "explain.background": 1,
    "explain.shap_samples": 1,
    "explain.lime_samples": 10,
}

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _load_or_error(source, overrides=()) -> ExperimentSpec | SpecError:
    try:
        return load_spec(source, list(overrides))
    except SpecError as error:
        return error


@CHEAP
@given(name=st.text(max_size=120))
def test_any_name_is_valid_by_the_rule_or_refused_naming_the_field(name: str):
    outcome = _load_or_error({**RAW, "name": name})
    if isinstance(outcome, SpecError):
        assert str(outcome).startswith("name: ")
    else:
        assert NAME_RULE.fullmatch(outcome.name) and ".." not in outcome.name
        assert len(outcome.name) <= 100 and "/" not in outcome.name and "'" not in outcome.name


@CHEAP
@given(field=st.sampled_from(FIELDS), value=values)
def test_any_field_value_gives_a_valid_spec_or_an_error_naming_that_field(field, value):
    raw = yaml.safe_load(SPEC.read_text())
    node = raw
    *sections, last = field.split(".")
    for section in sections:
        node = node.setdefault(section, {})
    node[last] = value
    outcome = _load_or_error(raw)
    if isinstance(outcome, SpecError):
        assert str(outcome).split(":")[0].startswith(field), (field, value, str(outcome))
        return
    loaded = outcome
    for part in field.split("."):
        loaded = getattr(loaded, part)
    if field in MINIMUMS and not (field == "data.max_samples" and loaded is None):
        assert isinstance(loaded, int) and loaded >= MINIMUMS[field], (field, loaded)
    if isinstance(loaded, float):
        assert math.isfinite(loaded), (field, loaded)


@CHEAP
@given(item=st.text(max_size=60))
def test_any_override_string_gives_a_valid_spec_or_a_spec_error(item: str):
    outcome = _load_or_error(SPEC, [item])  # nothing but SpecError may escape
    assert isinstance(outcome, ExperimentSpec | SpecError)


@CHEAP
@given(field=st.sampled_from(FIELDS), text=st.text(max_size=20))
def test_any_override_of_a_real_field_is_named_when_refused(field: str, text: str):
    outcome = _load_or_error(SPEC, [f"{field}={text}"])
    if isinstance(outcome, SpecError):
        message = str(outcome)
        assert message.startswith((field, f"override {field}")), (field, text, message)


@pytest.fixture(scope="module")
def populated_store(tmp_path_factory) -> Path:
    from tests.conftest import tiny
    from workbench.study import run_study

    root = tmp_path_factory.mktemp("props") / "mlruns"
    run_study(SPEC, trials=1, overrides=tiny(root, **{"explain.enabled": False}))
    return root


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(field=st.sampled_from(FIELDS), value=values)
def test_a_refused_spec_leaves_a_populated_store_byte_identical(populated_store, field, value):
    from workbench.study import run_study

    before = _digest(populated_store)
    override = f"{field}={yaml.safe_dump(value, default_flow_style=True).strip()}"
    overrides = [f"tracking.root={populated_store}", override]
    outcome = _load_or_error(SPEC, overrides)
    if isinstance(outcome, ExperimentSpec):
        return  # a valid spec would train: not this test's business
    with pytest.raises(SpecError):
        run_study(SPEC, trials=1, overrides=overrides)
    assert _digest(populated_store) == before
