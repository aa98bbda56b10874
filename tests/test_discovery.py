"""Adding an architecture is two files: a toy model file and its spec, written into a copy of the
repository, are found by the registry and run by the parametrised model, spec and study tests
with no edit to any list."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

TOY_MODEL = '''"""A toy architecture written by tests/test_discovery.py: one hidden layer."""

import math

from torch import nn

from workbench.models.supervised import SupervisedModule
from workbench.registry import register_model


@register_model("toy_probe")
class ToyProbeModule(SupervisedModule):
    """``hidden`` ReLU units on flattened inputs."""

    def __init__(
        self,
        input_shape: tuple[int, ...] = (30,),
        num_classes: int = 2,
        task: str = "classification",
        hidden: int = 32,
        lr: float = 0.05,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(num_classes, task)
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.output_size(num_classes, task)),
        )
'''

TOY_SPEC = """# workbench study experiments/toy_probe.yaml   (written by tests/test_discovery.py)
seed: 0
data: {name: breast_cancer, batch_size: 16}
model: {name: toy_probe}
study: {trials: 1, metric: val/loss, direction: minimize}
search_space:
  lr: {type: float, low: 0.02, high: 0.1, log: true}
"""

# Each parametrised test that must pick the toy up by itself.
EXPECTED = [
    "tests/test_models.py::test_every_registered_model_has_an_experiment",
    "tests/test_models.py::test_output_shape[toy_probe]",
    "tests/test_models.py::test_a_supervised_model_overfits_a_single_batch[toy_probe]",
    "tests/test_models.py::test_checkpoint_round_trip_gives_identical_outputs[toy_probe]",
    "tests/test_models.py::test_same_seed_same_weights[toy_probe]",
    "tests/test_spec.py::test_every_checked_in_spec_loads[toy_probe.yaml]",
    "tests/test_architectures.py::test_experiment_runs_through_the_study_path[toy_probe]",
]


@pytest.mark.slow
def test_a_new_architecture_is_two_files_and_no_list(tmp_path: Path):
    copy = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("workbench", "tests", "experiments"):
        shutil.copytree(REPO / part, copy / part, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    (copy / "workbench" / "models" / "toy_probe.py").write_text(TOY_MODEL)
    (copy / "experiments" / "toy_probe.yaml").write_text(TOY_SPEC)

    # The copy comes first on the path (the working directory), ahead of the installed package.
    env = {**os.environ, "PYTHONPATH": str(copy)}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "-k",
         "toy_probe or has_an_experiment", "-W", "ignore",
         "tests/test_models.py", "tests/test_spec.py", "tests/test_architectures.py"],
        cwd=copy, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    passed = set(re.findall(r"^PASSED (\S+)", report, re.MULTILINE))
    missing = [test for test in EXPECTED if test not in passed]
    assert not missing, (missing, report[-4000:])
    assert str(copy / "workbench") in subprocess.run(
        [sys.executable, "-c", "import workbench; print(workbench.__file__)"],
        cwd=copy, env=env, capture_output=True, text=True,
    ).stdout  # fmt: skip
