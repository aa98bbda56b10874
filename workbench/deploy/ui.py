"""The two review UIs over one store: the MLflow UI and optuna-dashboard, on loopback by default,
started together and stopped together (process groups, so their own workers go too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def serve_uis(root: Path, host: str, mlflow_port: int, dashboard_port: int) -> int:
    """Run the MLflow UI and optuna-dashboard over one store until Ctrl-C, SIGTERM or SIGHUP
    (or until one of them exits: then 1); both bind ``host``."""
    root = Path(root).resolve()
    if not (root / "mlflow.db").is_file() and not (root / "optuna.db").is_file():
        raise FileNotFoundError(f"--root: no mlflow.db or optuna.db in {root}; run a study first")
    servers = ui_commands(root, host, mlflow_port, dashboard_port)
    processes: dict[str, subprocess.Popen] = {}
    # SIGTERM (kill, systemd, a container stop) and SIGHUP (the terminal closed) stop both servers
    # as Ctrl-C does; without this the interpreter dies at once and leaves them running.
    previous = {signum: signal.getsignal(signum) for signum in (*_STOP_SIGNALS, signal.SIGINT)}
    for signum in _STOP_SIGNALS:
        signal.signal(signum, _interrupt)
    try:
        for name, command in servers.items():
            # Each server leads its own process group: stopping the group also stops the workers
            # it spawned (MLflow's uvicorn and job consumers).
            processes[name] = subprocess.Popen(command, start_new_session=True)
        print(f"MLflow UI:        http://{host}:{mlflow_port}")
        print(f"optuna-dashboard: http://{host}:{dashboard_port}")
        print("Ctrl-C stops both.")
        while all(p.poll() is None for p in processes.values()):
            time.sleep(0.5)
        ended = next(name for name, p in processes.items() if p.poll() is not None)
        code = processes[ended].returncode
        print(f"workbench: {ended} exited with code {code}; stopping the other", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for signum in previous:  # a second signal must not cut the clean-up short
            signal.signal(signum, signal.SIG_IGN)
        stop_process_groups(list(processes.values()))
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python
                signal.signal(signum, handler)


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_process_groups(processes: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM each process's group, wait up to ``timeout``, then SIGKILL what is left."""

    def signal_group(process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):  # the whole group has already gone
            pass

    for process in processes:
        signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        signal_group(process, signal.SIGKILL)  # workers that outlived their server, if any
        process.wait()


def ui_commands(
    root: Path, host: str, mlflow_port: int, dashboard_port: int
) -> dict[str, list[str]]:
    """The two server command lines over one store; both bind ``host`` (loopback by default)."""
    bin_dir = Path(sys.executable).parent
    return {
        "mlflow": [
            str(bin_dir / "mlflow"),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            (root / "artifacts").as_uri(),
            "--host",
            host,
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        "optuna-dashboard": [
            str(bin_dir / "optuna-dashboard"),
            f"sqlite:///{root / 'optuna.db'}",
            "--host",
            host,
            "--port",
            str(dashboard_port),
        ],
    }
