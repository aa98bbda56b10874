"""Servers the tests start themselves on loopback: a free port, a process group, a ready wait."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log, timeout: float = 120) -> None:
    """Poll ``url`` until it answers; fail with the server's output if it exits first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")[-3000:]
                raise AssertionError(f"server exited with {process.returncode}: {output}") from None
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def serving(
    command: list[str], ready_url: str | list[str], env: dict | None = None, stop=signal.SIGTERM
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group until the block ends; yield once every ready
    URL answers.

    Output goes to a temporary file, not a pipe: a chatty server would block on a full pipe.
    """
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        try:
            for url in [ready_url] if isinstance(ready_url, str) else ready_url:
                wait_until_up(url, server, log)
            yield server
        finally:
            os.killpg(server.pid, stop)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            # Whatever the group still holds once its leader is gone (a grandchild server still
            # shutting down) is killed too: a leaked server would share the cores with every
            # later test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
