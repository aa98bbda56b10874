"""Serve a logged model with MLflow's scoring server on loopback, and send it data.

The server is MLflow's own (``mlflow models serve``): it checks requests against the logged
signature and answers a readable 4xx for a wrong shape, a wrong type or an empty body.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001) -> list[str]:
    """The command line of MLflow's scoring server for ``model_uri`` in this environment."""
    mlflow = str(Path(sys.executable).parent / "mlflow")
    return [
        mlflow,
        "models",
        "serve",
        "-m",
        model_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--env-manager",
        "local",
        "--workers",
        "1",
    ]


def serve_environment(tracking_uri: str) -> dict[str, str]:
    """The server resolves ``models:/name@alias`` through this tracking store, and starts uvicorn
    by name, so this environment's ``bin/`` must lead the PATH even when it is not activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}


class PredictionError(RuntimeError):
    """The server refused a request; the message is the server's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def predict(url: str, inputs: np.ndarray | list, timeout: float = 60.0) -> np.ndarray:
    """POST ``{"inputs": ...}`` to ``url``/invocations and return the predictions as an array."""
    body = json.dumps({"inputs": np.asarray(inputs).tolist()}).encode()
    return np.asarray(post_json(url, body, timeout)["predictions"])


def post_json(url: str, body: bytes, timeout: float = 60.0) -> dict:
    """Send raw JSON bytes to the scoring endpoint; a 4xx/5xx raises ``PredictionError``."""
    request = urllib.request.Request(
        url.rstrip("/") + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            text = json.loads(text).get("message", text)
        except ValueError:
            pass
        raise PredictionError(error.code, text) from None
