"""The package's import rules (README "Boundaries") as import-linter contracts, checked here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_package_keeps_every_import_contract():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_module_that_breaks_a_contract_is_rejected(tmp_path: Path):
    shutil.copytree(REPO / "workbench", tmp_path / "workbench")
    probe = tmp_path / "workbench" / "models" / "probe.py"
    probe.write_text('"""A model that talks to MLflow: not allowed."""\n\nimport mlflow  # noqa\n')
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "workbench.models.probe -> mlflow" in done.stdout
    assert "models know nothing of Optuna, MLflow" in done.stdout


def test_the_only_x_imports_y_rules_cover_every_top_level_module():
    """A new module (workbench/x.py or workbench/x/) must be listed in the "only study imports
    optuna" and "only tracking imports mlflow" contracts, or it could import either unseen."""
    import pkgutil

    import tomllib

    import workbench

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    by_name = {c["name"]: set(c["source_modules"]) for c in contracts["contracts"]}
    top = {f"workbench.{m.name}" for m in pkgutil.iter_modules(workbench.__path__)}
    optuna_rule = next(v for k, v in by_name.items() if k.startswith("only workbench.study"))
    mlflow_rule = next(v for k, v in by_name.items() if k.startswith("only workbench.tracking"))
    assert top - {"workbench.study"} == optuna_rule
    assert top - {"workbench.tracking"} == mlflow_rule
