"""The two review UIs over one store: the MLflow UI and optuna-dashboard, on loopback by default,
started together and stopped together (process groups, so their own workers go too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# Ctrl-C, kill/systemd/a container stop, the terminal closed: each stops both servers.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def serve_uis(root: Path, host: str, mlflow_port: int, dashboard_port: int) -> int:
    """Run the MLflow UI and optuna-dashboard over one store until Ctrl-C, SIGTERM or SIGHUP
    (then 0) or until one of them exits (then 1, after stopping the other); both bind ``host``.
    """
    root = Path(root).resolve()
    if not (root / "mlflow.db").is_file() and not (root / "optuna.db").is_file():
        raise FileNotFoundError(f"--root: no mlflow.db or optuna.db in {root}; run a study first")
    servers = ui_commands(root, host, mlflow_port, dashboard_port)
    processes: dict[str, subprocess.Popen] = {}
    # The handlers only note the signal; the loop below sees it within a poll. Nothing is raised
    # asynchronously, so a signal can neither land between a server's fork and its entry in
    # ``processes`` (an unrecorded server outlives us) nor cut the clean-up short.
    # SIGINT gets a handler even when it came in ignored: a shell's background job (`&` in a
    # script, a test harness) inherits SIGINT ignored, and Python then installs no Ctrl-C handler,
    # so SIGINT was a no-op, the sender fell back to SIGKILL, and both servers (each leading its
    # own session) were left running. An ignored SIGHUP stays ignored: that is nohup's request.
    received: list[int] = []
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}
    for signum in _STOP_SIGNALS:
        if signum == signal.SIGHUP and previous[signum] == signal.SIG_IGN:
            continue
        signal.signal(signum, lambda signum, frame: received.append(signum))
    try:
        for name, command in servers.items():
            if received:
                break
            # Each server leads its own process group: stopping the group also stops the workers
            # it spawned (MLflow's uvicorn, job runner and huey consumers; the dashboard's).
            processes[name] = subprocess.Popen(command, start_new_session=True)
        else:
            print(f"MLflow UI:        http://{host}:{mlflow_port}")
            print(f"optuna-dashboard: http://{host}:{dashboard_port}")
            print("Ctrl-C stops both.", flush=True)
        while not received and all(p.poll() is None for p in processes.values()):
            time.sleep(0.2)
        if received:
            name = signal.Signals(received[0]).name
            print(f"workbench: {name}; stopping both servers", file=sys.stderr, flush=True)
            return 0
        ended = next(name for name, p in processes.items() if p.poll() is not None)
        code = processes[ended].returncode
        print(f"workbench: {ended} exited with code {code}; stopping the other", file=sys.stderr)
        return 1
    finally:
        stop_process_groups(list(processes.values()))
        for signum, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python
                signal.signal(signum, handler)


def stop_process_groups(processes: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM each process's group, wait up to ``timeout``, then SIGKILL what is left; with
    psutil at hand, also every descendant that left its group (``setsid``) and is still alive."""

    def signal_group(process: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except (ProcessLookupError, PermissionError):  # the whole group has already gone
            pass

    descendants = _descendants(processes)  # before any exits: orphans cannot be found later
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
    _kill(descendants)


def _descendants(processes: list[subprocess.Popen]) -> list:
    """Every live descendant of ``processes`` as psutil processes; none without psutil."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    for process in processes:
        try:
            found.extend(psutil.Process(process.pid).children(recursive=True))
        except psutil.Error:  # already gone
            pass
    return found


def _kill(descendants: list) -> None:
    """SIGKILL those of ``descendants`` still running (psutil checks that a pid was not reused)
    and wait for them."""
    if not descendants:
        return
    import psutil

    for process in descendants:
        try:
            process.kill()
        except psutil.Error:  # gone already
            pass
    psutil.wait_procs(descendants, timeout=5)


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
            # The trials' figures that their notes embed (workbench/study/review.py).
            "--artifact-dir",
            str(root / "optuna-artifacts"),
        ],
    }
