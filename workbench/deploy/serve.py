"""Serve a logged model with MLflow's scoring app on loopback, and send it data.

The app is MLflow's own (what ``mlflow models serve`` runs): it checks requests against the logged
signature and answers a 400 that names the fault for a wrong shape or a wrong type. In front of it
sits what MLflow lacks (``RequestGuard``): a cap on the body size (413), an empty body refused as
such, and, when asked, each answered request recorded to disk for ``workbench monitor``.
``python -m workbench.deploy.serve MODEL_URI [--host] [--port]`` runs it; ``with serving(uri,
tracking_uri) as url:`` runs it for the length of a block (a notebook, a test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

INVOCATIONS = "/invocations"


DEFAULT_MAX_BODY_MB = 16.0
DRAIN = 4  # an oversized body up to this many times the cap is read and dropped, not cut off


def serve_command(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 5001,
    record: str | Path | None = None,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    data_policy: str = "raw",
) -> list[str]:
    """The command line of the scoring server for ``model_uri`` in this environment; with
    ``record``, answered requests are written under that directory (through ``data_policy``)."""
    command = [sys.executable, "-m", "workbench.deploy.serve", model_uri]
    command += ["--host", host, "--port", str(port), "--max-body-mb", f"{max_body_mb:g}"]
    if record is None:
        return command
    return command + ["--record", str(record), "--data-policy", data_policy]


def scoring_app(model_uri: str, max_body_mb: float = DEFAULT_MAX_BODY_MB, recorder=None):
    """MLflow's scoring app for ``model_uri`` (resolved through ``MLFLOW_TRACKING_URI``), behind
    the request guard."""
    from workbench.tracking import scoring_app as mlflow_scoring_app

    app, schema = mlflow_scoring_app(model_uri)
    return RequestGuard(app, schema or "the model input", int(max_body_mb * 1024**2), recorder)


class RequestGuard:
    """ASGI middleware in front of MLflow's app, for ``POST /invocations``:

    - a body over ``max_body_bytes`` gets a 413 that says the cap (checked on the declared
      ``Content-Length`` before reading, and again while reading); the server keeps serving;
    - an empty body gets a 400 that says so and what to send (MLflow only calls it invalid JSON);
    - with a ``Recorder``, each answered request's body and response go to it.

    Every other request goes to ``app`` unchanged; an accepted body is replayed to it.
    """

    def __init__(self, app, expected: str, max_body_bytes: int, recorder=None) -> None:
        self.app, self.expected, self.max_body_bytes = app, expected, max_body_bytes
        self.recorder = recorder

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INVOCATIONS:
            await self.app(scope, receive, send)
            return
        # An oversized body is read to its end and dropped, so the client, still sending, reads
        # the 413 (a reply mid-upload is often seen as a reset connection) and the connection
        # stays usable; beyond DRAIN × the cap the server answers at once and closes it.
        declared = dict(scope.get("headers", [])).get(b"content-length")
        declared = int(declared) if declared is not None and declared.isdigit() else 0
        if declared > DRAIN * self.max_body_bytes:
            await self._too_large(send, declared, close=True)
            return
        chunks, more, size = [], True, 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size <= self.max_body_bytes:
                chunks.append(message.get("body", b""))
            elif size > DRAIN * self.max_body_bytes:
                await self._too_large(send, size, close=True)
                return
            more = message.get("more_body", False)
        if size > self.max_body_bytes:
            await self._too_large(send, size)
            return
        body = b"".join(chunks)
        if not body.strip():
            text = (
                'empty request body: send JSON such as {"inputs": [...]}, a batch shaped '
                f"like the model input {self.expected}"
            )
            await _answer(send, 400, "BAD_REQUEST", text)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        if self.recorder is None:
            await self.app(scope, replay, send)
            return
        status, answer = 0, []

        async def send_and_keep(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status == 200:
                answer.append(message.get("body", b""))
                if not message.get("more_body", False):
                    self.recorder.add(body, b"".join(answer))
            await send(message)

        await self.app(scope, replay, send_and_keep)

    async def _too_large(self, send, size: int, close: bool = False) -> None:
        text = (
            f"request body of {size} bytes exceeds this server's cap of "
            f"{self.max_body_bytes} bytes (--max-body-mb): send the inputs in smaller batches"
        )
        await _answer(send, 413, "REQUEST_TOO_LARGE", text, close=close)


async def _answer(send, status: int, code: str, message: str, close: bool = False) -> None:
    payload = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if close:  # the unread rest of the body must not be taken for the next request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def serve_environment(tracking_uri: str) -> dict[str, str]:
    """The server resolves ``models:/name@alias`` through this tracking store; this environment's
    ``bin/`` leads the PATH, as if it were activated."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}


@contextlib.contextmanager
def serving(
    model_uri: str,
    tracking_uri: str,
    port: int = 5001,
    timeout_s: float = 120.0,
    record: str | Path | None = None,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
) -> Iterator[str]:
    """Serve ``model_uri`` on 127.0.0.1:``port`` for the length of the block; yield its URL
    once ``/ping`` answers, and stop the server (its whole process group) on the way out.

    A server that exits or stays silent for ``timeout_s`` raises ``RuntimeError`` naming the
    model URI, with the end of the server's output.
    """
    from workbench.deploy.ui import stop_process_groups

    with socket.socket() as probe:  # another server on the port would answer our /ping
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not in use
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise RuntimeError(f"serving {model_uri}: port {port} is in use ({exc})") from None
    url = f"http://127.0.0.1:{port}"
    # Output to a file, not a pipe: a chatty server would block once a pipe filled up.
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            serve_command(model_uri, port=port, record=record, max_body_mb=max_body_mb),
            env=serve_environment(tracking_uri),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_for_ping(url, server, log, model_uri, timeout_s)
            yield url
        finally:
            stop_process_groups([server])


def _wait_for_ping(url: str, server: subprocess.Popen, log, model_uri: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return
        except OSError:
            if server.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(
                    f"serving {model_uri}: the server exited with {server.returncode} before "
                    f"answering {url}/ping; its output ends:\n{output}"
                ) from None
            time.sleep(0.5)
    raise RuntimeError(f"serving {model_uri}: {url}/ping did not answer within {timeout_s:.0f} s")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench.deploy.serve", description=__doc__)
    parser.add_argument("model_uri", help="e.g. models:/mnist_cnn@champion or runs:/<id>/model")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--max-body-mb", type=float, default=DEFAULT_MAX_BODY_MB)
    parser.add_argument("--record", help="write answered requests under this directory")
    parser.add_argument("--record-file-mb", type=float, default=16.0)
    parser.add_argument("--record-files", type=int, default=8)
    parser.add_argument(
        "--data-policy", default="raw", help="what of the inputs is recorded: raw, synthetic, none"
    )
    args = parser.parse_args(argv)
    import uvicorn

    from workbench.deploy.recording import Recorder

    recorder = None
    if args.record:
        recorder = Recorder(
            args.record, args.record_file_mb, args.record_files, policy=args.data_policy
        )
        # uvicorn shuts down gracefully on SIGTERM and then raises it again under the handler
        # that was in place before it ran: this one, so the recorder's last lines are flushed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = scoring_app(args.model_uri, args.max_body_mb, recorder)
    try:
        uvicorn.run(app, host=args.host, port=args.port, workers=1)
    finally:
        if recorder is not None:
            recorder.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
