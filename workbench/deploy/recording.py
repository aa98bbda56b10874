"""Served inputs written to disk as the server runs, for ``workbench monitor`` to read back.

Each answered request becomes one JSON line ``{"t": <unix time>, "request": <the request body>,
"response": <the response body>}``: the bodies are copied as bytes, not parsed, so recording
costs the server little (``bench/serve_load.py --compare-recording`` measures it). Lines are
buffered in memory and flushed by a background thread every ``flush_s`` seconds or
``flush_lines`` lines; files rotate at ``max_file_mb`` and only the newest ``max_files`` are
kept, so the recording never holds more than ``max_files × max_file_mb``.

A data ``policy`` decides what of the inputs is written (``workbench.tracking.sanitize``): under
``raw`` (the default) the files hold them as clients sent them, so keep them where the data itself
may be kept; under ``synthetic`` each request's rows are replaced by synthetic rows of the same
shape (drawn in the writer thread, off the request path); under ``none`` a request is written as
its row count only. Responses (the model's answers) are kept under every policy. Recording is off
unless ``--record`` asks for it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

PREFIX = "served-"


class Recorder:
    """Appends request/response pairs to rotating JSON-lines files under ``directory``."""

    def __init__(
        self,
        directory: str | Path,
        max_file_mb: float = 16.0,
        max_files: int = 8,
        flush_s: float = 1.0,
        flush_lines: int = 256,
        policy: str = "raw",
    ) -> None:
        from workbench.tracking.sanitize import check_policy

        self.policy = check_policy(policy)
        if max_file_mb <= 0:
            raise ValueError(f"max_file_mb: must be positive, got {max_file_mb}")
        if max_files < 1:
            raise ValueError(f"max_files: at least 1, got {max_files}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_file_bytes = int(max_file_mb * 1024 * 1024)
        self.max_files, self.flush_s, self.flush_lines = max_files, flush_s, flush_lines
        self._lines: list[bytes] = []
        self._count = 0  # requests sanitised so far: each one's seed
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._file = None
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def add(self, request: bytes, response: bytes) -> None:
        # JSON allows raw newlines only as whitespace (inside strings they are escaped), so
        # replacing them keeps each body valid JSON on one line.
        line = b'{"t": %.3f, "request": %s, "response": %s}\n' % (
            time.time(),
            request.replace(b"\n", b" ").replace(b"\r", b" "),
            response.replace(b"\n", b" ").replace(b"\r", b" "),
        )
        with self._lock:
            self._lines.append(line)
            full = len(self._lines) >= self.flush_lines
        if full:
            self._wake.set()

    def close(self) -> None:
        """Flush what is buffered and stop the writer thread."""
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self._flush()
            if self._stopped:
                if self._file is not None:
                    self._file.close()
                return

    def _flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        if self.policy != "raw":
            lines = [self._sanitized(line) for line in lines]
        for line in lines:
            if self._file is None or self._file.tell() + len(line) > self.max_file_bytes:
                self._rotate()
            self._file.write(line)
        if self._file is not None:
            self._file.flush()

    def _sanitized(self, line: bytes) -> bytes:
        """A recorded line with its request's rows as the policy allows (``sanitize``); a body
        with no ``inputs``/``instances`` array keeps nothing of its request."""
        from workbench.tracking.sanitize import sanitize

        self._count += 1
        try:
            record = json.loads(line)
        except ValueError:  # a body that is not JSON
            record = {}
        request = record.get("request")
        found = (
            request.get("inputs", request.get("instances")) if isinstance(request, dict) else None
        )
        try:
            rows = None if found is None else np.asarray(found, dtype=np.float32)
        except (ValueError, TypeError):  # ragged or not numbers
            rows = None
        request = {"rows": None}
        if rows is not None and rows.ndim > 0:
            kept = sanitize(rows, self.policy, seed=self._count)
            request = {"rows": len(rows)} if kept is None else {"inputs": kept.tolist()}
        record = {"t": record.get("t"), "request": request, "response": record.get("response")}
        return json.dumps(record).encode() + b"\n"

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        name = f"{PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}.jsonl"
        self._file = open(self.directory / name, "ab")  # noqa: SIM115 (closed on rotate/close)
        for old in recorded_files(self.directory)[: -self.max_files]:
            old.unlink(missing_ok=True)


def recorded_files(directory: str | Path) -> list[Path]:
    """The recording's files, oldest first (their names sort by time)."""
    return sorted(Path(directory).glob(f"{PREFIX}*.jsonl"))


def read_recorded(directory: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, predictions and times of every recorded request, in order: ``(inputs, outputs,
    times)`` with one row per input row. A request body may hold ``inputs`` or ``instances``.

    Errors name the directory: none there, no recording in it, or nothing readable.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"inputs: no recording directory at {directory}")
    files = recorded_files(directory)
    if not files:
        raise FileNotFoundError(
            f"inputs: {directory} holds no recorded requests ({PREFIX}*.jsonl); serve with "
            "`workbench serve MODEL --record` and send it requests first"
        )
    inputs, outputs, times = [], [], []
    for path in files:
        for line in path.read_bytes().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a killed server
                continue
            rows = record["request"].get("inputs", record["request"].get("instances"))
            if rows is None:
                continue
            rows = np.asarray(rows, dtype=np.float32)
            predictions = np.asarray(record["response"].get("predictions", []), dtype=np.float32)
            if len(predictions) != len(rows):
                continue
            inputs.append(rows)
            outputs.append(predictions)
            times.append(np.full(len(rows), record["t"]))
    if not inputs:
        raise ValueError(f"inputs: no readable request in {len(files)} files under {directory}")
    return np.concatenate(inputs), np.concatenate(outputs), np.concatenate(times)
