"""`workbench ui`: both servers start on loopback over one store and show the study's runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import EXPERIMENTS, tiny
from workbench.study import run_study


def listening_addresses(port: int) -> set[str]:
    """The local addresses of every TCP socket in LISTEN state on ``port``, from the kernel's
    socket tables (``/proc/net/tcp`` and ``tcp6``; psutil where there is no ``/proc``)."""
    import ipaddress

    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].is_file():
        psutil = pytest.importorskip("psutil", reason="no /proc/net/tcp and no psutil")
        return {
            c.laddr.ip
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
    found = set()
    for table in tables:
        if not table.is_file():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # the kernel prints 32-bit words in host byte order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words)))
    return found


def assert_loopback_only(port: int) -> None:
    """Something listens on ``port``, and only on 127.0.0.1: not 0.0.0.0, ::, or an outside
    address of this machine."""
    addresses = listening_addresses(port)
    assert addresses, f"nothing listens on port {port}"
    assert addresses == {"127.0.0.1"}, f"port {port} listens on {sorted(addresses)}"


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
        # Bound to loopback only, as the kernel's socket tables show every listening socket.
        assert_loopback_only(mlflow_port)
        assert_loopback_only(dashboard_port)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # a grandchild still shutting down
            os.killpg(server.pid, signal.SIGKILL)


def _alive(process) -> bool:
    """Running and not a zombie (an orphan's zombie waits for an init that may never reap it)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_ui_stops_both_servers_and_their_workers_on_sigint_to_it_alone(tmp_path: Path):
    """SIGINT to `workbench ui` alone (not its group; the servers lead their own sessions) stops
    the MLflow UI, optuna-dashboard and every worker under them, even when SIGINT came in ignored
    as in a shell's background job (Python then installs no Ctrl-C handler of its own)."""
    psutil = pytest.importorskip("psutil")
    import optuna

    from tests.servers import wait_until_up

    root = tmp_path / "mlruns"
    root.mkdir()
    optuna.create_study(storage=f"sqlite:///{root / 'optuna.db'}", study_name="s")
    mlflow_port, dashboard_port = _free_port(), _free_port()
    command = [
        sys.executable, "-m", "workbench.cli", "ui", "--root", str(root),
        "--mlflow-port", str(mlflow_port), "--dashboard-port", str(dashboard_port),
    ]  # fmt: skip
    descendants: list = []
    groups: set[int] = set()
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        try:
            wait_until_up(f"http://127.0.0.1:{mlflow_port}/health", server, log)
            wait_until_up(f"http://127.0.0.1:{dashboard_port}/api/studies", server, log)
            descendants = psutil.Process(server.pid).children(recursive=True)
            for process in descendants:
                with contextlib.suppress(OSError):
                    groups.add(os.getpgid(process.pid))
            assert len(psutil.Process(server.pid).children()) == 2, descendants
            os.kill(server.pid, signal.SIGINT)
            try:
                code = server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.seek(0)
                output = log.read().decode(errors="replace")[-3000:]
                raise AssertionError(f"workbench ui ignored SIGINT for 60 s: {output}") from None
            assert code == 0
            left = {p.pid: p for p in descendants if _alive(p)}
            for process in psutil.process_iter():  # also workers started after the snapshot
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getpgid(process.pid) in groups and _alive(process):
                        left[process.pid] = process
            assert not left, f"still running after workbench ui exited: {list(left.values())}"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            for group in groups:  # never leave a server behind for later tests
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, signal.SIGKILL)
            for process in descendants:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            psutil.wait_procs(descendants, timeout=10)
