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
    URL answers. On the way out ``stop`` goes to the group, and after up to 30 s every process
    the server started is killed: those in other groups (`workbench ui`'s servers lead their
    own) and those left over. A leaked server would share the cores with every later test.

    Output goes to a temporary file, not a pipe: a chatty server would block on a full pipe.
    """
    import psutil

    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        descendants: dict[int, psutil.Process] = {}
        try:
            for url in [ready_url] if isinstance(ready_url, str) else ready_url:
                wait_until_up(url, server, log)
                _collect_descendants(server.pid, descendants)
            yield server
        finally:
            # Once the leader has exited its children are re-parented and cannot be found from
            # it any more: look now, just before stopping (workers start after the ready URL).
            _collect_descendants(server.pid, descendants)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, stop)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            _kill_all(list(descendants.values()))


def _collect_descendants(pid: int, found: dict) -> None:
    """Add every live descendant of ``pid`` to ``found`` (by pid; psutil's process objects
    also recognise a pid that has been reused since)."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            found.setdefault(child.pid, child)


def _kill_all(processes: list) -> None:
    """SIGKILL each of ``processes`` still alive and its own children, and wait for them."""
    import psutil

    doomed: dict[int, psutil.Process] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.is_running():
                doomed.setdefault(process.pid, process)
                for child in process.children(recursive=True):
                    doomed.setdefault(child.pid, child)
    for process in doomed.values():
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(list(doomed.values()), timeout=10)
