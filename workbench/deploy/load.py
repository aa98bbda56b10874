"""Health under load: many concurrent clients against a scoring server, bounded in time and count.

``load_test(url, body)`` sends ``body`` to ``url``/invocations from ``clients`` concurrent
workers (real HTTP over keep-alive connections, one per worker), each sending its next request
as soon as the last one answers, until ``duration_s`` has passed or ``max_requests`` have been
sent. It measures

- throughput: answered (2xx) requests per second of wall time;
- latency: p50/p95/p99 of the answered requests, in ms, from send to the full response read;
- errors: every non-2xx answer and every failed request (refused, reset, timed out), with a few
  examples of what went wrong;
- the server's memory (when its pid is given): RSS of the process and its children, sampled
  every 0.25 s, as the mean over the first and the last 5 s (the first and last 20 % of a run
  shorter than 15 s), and the growth between the two.

The clients run in this process, on this machine's cores: on a small machine they compete with
the server for CPU, so throughput is that of the pair, not of the server alone.
``find_server_pid(port)`` names the process that listens on a port, so a server a user started
(``workbench serve``) can be measured too.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from workbench.deploy.serve import INVOCATIONS

SAMPLE_EVERY_S = 0.25
WINDOW_S = 5.0  # the first and last windows whose mean memory is compared
SHORT_RUN_S = 15.0  # below this, the windows are the first and last 20 % of the run
MAX_EXAMPLES = 5
KEEPALIVE_EXPIRY_S = 2.0  # below uvicorn's timeout_keep_alive (5 s)
LOOPBACK = {"127.0.0.1", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1"}


@dataclass
class LoadReport:
    """What one load test measured. Latencies are NaN when no request was answered; the memory
    figures are None when no server pid was given (or it could not be read)."""

    url: str
    clients: int
    duration_s: float
    """Wall time from the first request sent to the last one finished."""
    requests: int
    """Requests that finished (answered or failed)."""
    errors: int
    error_examples: list[str]
    throughput_rps: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    rss_first_mb: float | None = None
    rss_last_mb: float | None = None
    memory_growth: float | None = None
    rss_samples: list[tuple[float, float]] = field(default_factory=list, repr=False)
    """(seconds since the start, server RSS in MB) every 0.25 s."""

    def as_metrics(self) -> dict[str, float]:
        """The figures as ``load/...`` metrics (for MLflow); the ones not measured are left out."""
        metrics = {
            "load/clients": float(self.clients),
            "load/duration_s": self.duration_s,
            "load/requests": float(self.requests),
            "load/errors": float(self.errors),
            "load/throughput_rps": self.throughput_rps,
            "load/latency_p50_ms": self.latency_p50_ms,
            "load/latency_p95_ms": self.latency_p95_ms,
            "load/latency_p99_ms": self.latency_p99_ms,
            "load/latency_max_ms": self.latency_max_ms,
            "load/rss_first_mb": self.rss_first_mb,
            "load/rss_last_mb": self.rss_last_mb,
            "load/memory_growth": self.memory_growth,
        }
        return {
            key: float(value)
            for key, value in metrics.items()
            if value is not None and math.isfinite(value)
        }

    def table(self) -> str:
        """A readable text block of the figures."""
        rows = [
            ("target", f"{self.url}{INVOCATIONS}"),
            ("clients", f"{self.clients}"),
            ("duration", f"{self.duration_s:.1f} s"),
            ("requests", f"{self.requests}"),
            ("errors", f"{self.errors}"),
            ("throughput", f"{self.throughput_rps:.1f} requests/s answered"),
            (
                "latency p50/p95/p99",
                f"{self.latency_p50_ms:.1f} / {self.latency_p95_ms:.1f} / "
                f"{self.latency_p99_ms:.1f} ms (max {self.latency_max_ms:.1f} ms)",
            ),
        ]
        if self.memory_growth is not None:
            window = "5 s" if self.duration_s >= SHORT_RUN_S else "20 %"
            rows.append(
                (
                    "server RSS",
                    f"{self.rss_first_mb:.1f} MB (first {window}) -> {self.rss_last_mb:.1f} MB "
                    f"(last {window}): {self.memory_growth:+.1%} "
                    f"({len(self.rss_samples)} samples)",
                )
            )
        else:
            rows.append(("server RSS", "not measured (no server pid)"))
        rows += [("error example", example) for example in self.error_examples]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def load_test(
    url: str,
    body: bytes,
    clients: int = 32,
    duration_s: float = 30.0,
    max_requests: int | None = None,
    server_pid: int | None = None,
    timeout_s: float = 30.0,
    progress: bool = True,
) -> LoadReport:
    """POST ``body`` (JSON such as ``{"inputs": [...]}``) to ``url``/invocations from ``clients``
    concurrent workers for ``duration_s`` seconds or ``max_requests`` requests, whichever comes
    first; a request still in flight at the end is waited for (at most ``timeout_s``, its own
    limit). With ``server_pid``, the server's memory is sampled throughout."""
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients}")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be positive, got {duration_s}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be at least 1 (or None), got {max_requests}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    sampler = _MemorySampler(server_pid) if server_pid is not None else None
    run = _Run(url.rstrip("/"), body, clients, duration_s, max_requests, timeout_s, progress)
    if sampler is not None:
        sampler.start()
    try:
        _run_coroutine(run.main())
    finally:
        if sampler is not None:
            sampler.stop()
    samples = [] if sampler is None else sampler.relative_to(run.started)
    return _report(run, samples)


def find_server_pid(port: int) -> int | None:
    """The pid of the process listening on loopback ``port`` (127.0.0.1, or every address), or
    None when no process this user may see listens there."""
    import psutil

    def listens(connection) -> bool:
        return (
            connection.status == psutil.CONN_LISTEN
            and connection.laddr
            and connection.laddr.port == port
            and connection.laddr.ip in LOOPBACK
        )

    try:
        for connection in psutil.net_connections(kind="tcp"):
            if listens(connection) and connection.pid is not None:
                return connection.pid
    except psutil.AccessDenied:  # macOS: the system-wide table needs root
        pass
    # The table may hide pids of processes it may not inspect; ask each process instead.
    for process in psutil.process_iter():
        try:
            if any(listens(c) for c in process.net_connections(kind="tcp")):
                return process.pid
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return None


class _Run:
    """The clients of one load test and what they recorded."""

    def __init__(self, url, body, clients, duration_s, max_requests, timeout_s, progress):
        self.url, self.body, self.clients = url, body, clients
        self.duration_s, self.max_requests = duration_s, max_requests
        self.timeout_s, self.progress = timeout_s, progress
        self.sent = 0
        self.latencies_ms: list[float] = []
        self.errors = 0
        self.error_examples: list[str] = []
        self.started = self.finished = self.deadline = 0.0

    async def main(self) -> None:
        import httpx

        # The pool reuses its first free connection, so one near its end can sit idle for
        # seconds; retiring idle connections (2 s) well before uvicorn closes them (5 s) keeps the
        # server's close from racing a request sent on the same connection (a ReadError).
        limits = httpx.Limits(
            max_connections=self.clients,
            max_keepalive_connections=self.clients,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(
            limits=limits, timeout=httpx.Timeout(self.timeout_s), headers=headers
        ) as client:
            self.started = time.monotonic()
            self.deadline = self.started + self.duration_s
            bar = asyncio.create_task(self._progress()) if self.progress else None
            try:
                await asyncio.gather(*(self._client(client) for _ in range(self.clients)))
            finally:
                self.finished = time.monotonic()
                if bar is not None:
                    bar.cancel()
                    await asyncio.gather(bar, return_exceptions=True)

    def _more(self) -> bool:
        if time.monotonic() >= self.deadline:
            return False
        return self.max_requests is None or self.sent < self.max_requests

    async def _client(self, client) -> None:
        target = f"{self.url}{INVOCATIONS}"
        while self._more():
            self.sent += 1  # one event loop: no lock needed
            start = time.perf_counter()
            try:
                response = await client.post(target, content=self.body)
            except Exception as exc:  # refused, reset, timed out: all count as errors
                self._error(_describe(exc))
                await asyncio.sleep(0)  # a refused connection fails at once; let others run
                continue
            elapsed_ms = (time.perf_counter() - start) * 1000
            if 200 <= response.status_code < 300:
                self.latencies_ms.append(elapsed_ms)
            else:
                self._error(f"HTTP {response.status_code}: {response.text[:200]}")

    def _error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_examples) < MAX_EXAMPLES and message not in self.error_examples:
            self.error_examples.append(message)

    async def _progress(self) -> None:
        from tqdm.auto import tqdm

        total = math.ceil(self.duration_s)
        with tqdm(total=total, unit="s", desc=f"load, {self.clients} clients") as bar:
            while True:
                await asyncio.sleep(0.5)
                done = min(int(time.monotonic() - self.started), total)
                bar.update(done - bar.n)
                bar.set_postfix(requests=len(self.latencies_ms) + self.errors, errors=self.errors)


class _MemorySampler:
    """Samples the RSS of a process and its children every 0.25 s in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)  # NoSuchProcess now, not silently no samples later
        self.samples: list[tuple[float, float]] = []  # (monotonic time, MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def relative_to(self, started: float) -> list[tuple[float, float]]:
        return [(max(t - started, 0.0), mb) for t, mb in self.samples]

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._sample()

    def _sample(self) -> None:
        import psutil

        try:
            processes = [self.process, *self.process.children(recursive=True)]
        except psutil.Error:  # the server has gone: nothing more to sample
            return
        rss = 0
        for process in processes:
            try:
                rss += process.memory_info().rss
            except psutil.Error:  # a child that exited between the two calls
                pass
        self.samples.append((time.monotonic(), rss / 2**20))


def _describe(exc: BaseException) -> str:
    """The exception and what caused it: httpx's ReadError says nothing by itself."""
    parts = []
    while exc is not None and len(parts) < 4:
        parts.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def _run_coroutine(coroutine) -> None:
    """``asyncio.run``, also from inside a running loop (a notebook): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coroutine)
        return
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=target, name="load-test")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def _report(run: _Run, samples: list[tuple[float, float]]) -> LoadReport:
    elapsed = max(run.finished - run.started, 1e-9)
    latencies = np.asarray(run.latencies_ms)
    if latencies.size:
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        worst = latencies.max()
    else:
        p50 = p95 = p99 = worst = math.nan
    first, last = _memory_windows(samples, elapsed)
    return LoadReport(
        url=run.url,
        clients=run.clients,
        duration_s=elapsed,
        requests=len(run.latencies_ms) + run.errors,
        errors=run.errors,
        error_examples=run.error_examples,
        throughput_rps=len(run.latencies_ms) / elapsed,
        latency_p50_ms=float(p50),
        latency_p95_ms=float(p95),
        latency_p99_ms=float(p99),
        latency_max_ms=float(worst),
        rss_first_mb=first,
        rss_last_mb=last,
        memory_growth=None if first is None else last / first - 1,
        rss_samples=samples,
    )


def _memory_windows(
    samples: list[tuple[float, float]], elapsed: float
) -> tuple[float | None, float | None]:
    """Mean RSS over the first and the last window: 5 s each, or 20 % of a run under 15 s."""
    if not samples:
        return None, None
    window = WINDOW_S if elapsed >= SHORT_RUN_S else 0.2 * elapsed
    first = [mb for t, mb in samples if t <= window] or [samples[0][1]]
    last = [mb for t, mb in samples if t >= elapsed - window] or [samples[-1][1]]
    return float(np.mean(first)), float(np.mean(last))
