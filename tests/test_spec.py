"""Specs: every checked-in file loads; bad input names the field before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import EXPERIMENTS
from workbench.spec import SpecError, load_spec

SPEC_FILES = sorted(EXPERIMENTS.glob("*.yaml"))


def test_experiments_directory_is_not_empty():
    assert SPEC_FILES, "experiments/ holds no specs"


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_every_checked_in_spec_loads(path: Path, teacher_checkpoint: str):
    raw = yaml.safe_load(path.read_text())
    checkpoints = [k for k in raw.get("model", {}).get("params", {}) if k.endswith("checkpoint")]
    spec = load_spec(path, [f"model.params.{k}={teacher_checkpoint}" for k in checkpoints])
    assert spec.name == path.stem
    # a search space, or one fixed configuration trained once (confirmed over seeds)
    assert spec.search_space or spec.study.trials == 1, "each experiment defines a search space"
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# workbench study experiments/"), "specs open with their command"


def test_overrides_set_nested_fields_with_yaml_types():
    spec = load_spec(
        EXPERIMENTS / "mnist_cnn.yaml",
        [
            "trainer.max_epochs=1",
            "model.params.width=8",
            "data.augment=false",
            "search_space.lr.high=1e-2",
        ],
    )
    assert spec.trainer.max_epochs == 1
    assert spec.model.params["width"] == 8
    assert spec.data.augment is False
    assert spec.search_space["lr"].high == pytest.approx(0.01)


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


BASE = yaml.safe_load((EXPERIMENTS / "mnist_cnn.yaml").read_text())


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("trainer.max_epoch=3", "trainer.max_epoch"),  # misspelt field
        ("trainer.max_epochs=ten", "trainer.max_epochs"),  # wrong type
        ("trainer.max_epochs=0", "trainer.max_epochs"),  # impossible value
        ("trainer.devices=0", "trainer.devices"),
        ("trainer.devices=auto", "trainer.devices"),  # a count of processes, not "auto"
        ("trainer.strategy=fsdp", "trainer.strategy"),
        ("trainer.devices=2", "trainer.devices"),  # several processes need strategy: ddp
        ("data.val_fraction=0.9", "data.val_fraction"),
        ("data.batch_size=true", "data.batch_size"),  # a bool is not an int
        ("study.direction=up", "study.direction"),
        ("tracking.log_models=some", "tracking.log_models"),
        ("model.name=resnet9000", "model.name"),
        ("model.params.widht=3", "model.params.widht"),
        ("search_space.lr.low=-1", "search_space.lr.low"),  # log scale needs low > 0
        ("search_space.lr.high=1e-9", "search_space.lr"),  # low >= high
        ("search_space.colour={type: categorical, choices: [1]}", "search_space.colour"),
        ("data.name=cifar", "data.name"),
        ("data.name=adding", "explain.enabled"),  # regression targets: no class to explain
    ],
)
def test_bad_fields_are_named(tmp_path: Path, override: str, field: str):
    with pytest.raises((SpecError, LookupError)) as error:
        load_spec(_write(tmp_path, BASE), [override])
    assert field in str(error.value)


def test_wrong_architecture_lists_the_valid_ones(tmp_path: Path):
    with pytest.raises(SpecError, match="^model.name: .*valid: .*cnn"):
        load_spec(_write(tmp_path, BASE), ["model.name=nope"])


def test_missing_spec_file_names_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_spec(tmp_path / "nowhere.yaml")


def test_override_needs_key_value():
    with pytest.raises(SpecError, match="key=value"):
        load_spec(EXPERIMENTS / "mnist_cnn.yaml", ["trainer.max_epochs"])


def test_defaults_fill_missing_sections(tmp_path: Path):
    spec = load_spec(
        _write(tmp_path, {"search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}})
    )
    assert spec.model.name == "cnn" and spec.data.name == "mnist_subset"
    assert spec.tracking.root == "mlruns"


def test_required_and_missing_checkpoint_arguments_are_named(tmp_path: Path):
    distill = EXPERIMENTS / "mnist_distill.yaml"
    with pytest.raises(SpecError, match="model.params.teacher_checkpoint: file not found"):
        load_spec(distill, [f"model.params.teacher_checkpoint={tmp_path / 'none.ckpt'}"])
    raw = yaml.safe_load(distill.read_text())
    del raw["model"]["params"]["teacher_checkpoint"]
    with pytest.raises(SpecError, match="model.params.teacher_checkpoint: required"):
        load_spec(_write(tmp_path, raw))


def test_a_study_reference_to_a_missing_study_is_named(tmp_path: Path):
    from workbench.study import run_study

    spec = load_spec(
        EXPERIMENTS / "mnist_distill.yaml",
        [f"tracking.root={tmp_path / 'mlruns'}", "model.params.teacher_checkpoint=study:nope"],
    )
    with pytest.raises(SpecError, match="model.params.teacher_checkpoint: no study 'nope'"):
        run_study(spec, trials=1)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # failed before any run was opened
