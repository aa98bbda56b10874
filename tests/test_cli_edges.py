"""Edges of the `workbench` command: a bad table, a study where nothing finished, numbers out of
range, a SIGTERM to `workbench ui`, a server that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXPERIMENTS, tiny

WORKBENCH = [sys.executable, "-m", "workbench.cli"]


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        WORKBENCH + args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _table_study(root: Path, extra: dict | None = None) -> list[str]:
    """The breast-cancer MLP spec, shrunk to one epoch; ``extra`` overrides more."""
    return [
        "study",
        str(EXPERIMENTS / "breast_cancer_mlp.yaml"),
        "--trials",
        "1",
        *_sets(tiny(root, **{"explain.enabled": False, **(extra or {})})),
    ]


# --- 1. a CSV with empty labels ---------------------------------------------------------------
def test_study_on_a_csv_with_empty_labels_exits_2_before_opening_a_store(tmp_path: Path):
    table = tmp_path / "table.csv"
    rows = [f"{i},{i % 3},{i % 2}" for i in range(60)]
    for row in (4, 24, 44):
        rows[row] = f"{row},1,"  # empty labels: before the check, a third class
    table.write_text("\n".join(["a,b,label", *rows]) + "\n")
    root = tmp_path / "mlruns"
    done = _run(
        _table_study(root, {"data.name": "csv", "data.path": str(table)}), tmp_path, timeout=120
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    expected = f"data.path: {table}: column 'label' has 3 empty values (data rows 5, 25, 45)"
    assert f"workbench: error: {expected}" in done.stderr
    assert not root.exists(), sorted(str(p) for p in root.rglob("*"))
