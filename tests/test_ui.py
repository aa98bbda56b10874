"""`workbench ui`: both servers start on loopback over one store and show the study's runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import EXPERIMENTS, tiny
from workbench.study import run_study


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str, deadline: float, data: bytes | None = None) -> dict:
    last: Exception | None = None
    while time.time() < deadline:
        try:
            request = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except Exception as exc:  # server still starting
            last = exc
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer: {last}")


@pytest.mark.slow
def test_ui_serves_mlflow_and_optuna_dashboard_on_loopback(tmp_path: Path):
    root = tmp_path / "mlruns"
    result = run_study(
        EXPERIMENTS / "mnist_cnn.yaml", trials=1, overrides=tiny(root, **{"explain.enabled": False})
    )
    mlflow_port, dashboard_port = _free_port(), _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "workbench.cli",
            "ui",
            "--root",
            str(root),
            "--mlflow-port",
            str(mlflow_port),
            "--dashboard-port",
            str(dashboard_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        studies = _get_json(f"http://127.0.0.1:{dashboard_port}/api/studies", deadline)
        assert [s["study_name"] for s in studies["study_summaries"]] == [result.study_name]
        study_id = studies["study_summaries"][0]["study_id"]
        detail = _get_json(f"http://127.0.0.1:{dashboard_port}/api/studies/{study_id}", deadline)
        assert [t["state"] for t in detail["trials"]] == ["Complete"]
        runs = _get_json(
            f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/search",
            deadline,
            json.dumps({"experiment_ids": ["1"], "max_results": 100}).encode(),
        )
        tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs["runs"]]
        assert sorted(t["workbench.role"] for t in tags) == ["study", "trial"]
        # Bound to loopback only: the machine's other addresses refuse the connection.
        outside = socket.gethostbyname(socket.gethostname())
        if not outside.startswith("127."):
            with (
                pytest.raises(OSError),
                socket.create_connection((outside, mlflow_port), timeout=2),
            ):
                pass
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
