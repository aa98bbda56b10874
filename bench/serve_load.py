"""Benchmark: health of `workbench serve` under load, on loopback.

Starts the scoring server for ``--model-uri`` (MLflow's scoring app under uvicorn, one process,
as `workbench serve` runs it), waits for /ping, then sends ``--clients`` concurrent clients'
requests back-to-back for ``--seconds`` (each request ``--batch`` test images of the model's own
data, as JSON) and prints throughput, p50/p95/p99 latency, the error count and the server's
memory over the first and last 5 s. The server is stopped (its process group) at the end.

The clients run in this process on the same machine: on a small machine they share its cores
with the server, so the throughput is that of the pair.

Exits 1 if any request failed or the server's memory grew by more than 10 % between the first
and last 5 s. ``--compare-recording`` then measures servers without and with ``--record`` in
alternating pairs of ``--compare-seconds`` runs and fails when recording costs more than 10 % of
the throughput.

    python bench/serve_load.py [--model-uri models:/mnist_cnn@champion] [--root mlruns]
                               [--clients 32] [--seconds 30] [--batch 1]
                               [--compare-recording [--rounds 3] [--compare-seconds 15]]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

MAX_GROWTH = 0.10
MAX_RECORDING_COST = 0.10  # issue 23: recording costs at most 10 % of throughput


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--model-uri", default="models:/mnist_cnn@champion")
    parser.add_argument("--root", default="mlruns", help="the workbench store (default: mlruns)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--batch", type=int, default=1, help="images per request")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--compare-recording", action="store_true",
        help="also measure throughput without and with --record, in alternating pairs",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="pairs for --compare-recording")
    parser.add_argument("--compare-seconds", type=float, default=15.0)
    args = parser.parse_args()
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")

    from workbench.deploy.load import find_server_pid, load_test
    from workbench.deploy.serve import serving
    from workbench.trained_model import trained

    model = trained(args.model_uri, root=Path(args.root).resolve())
    images = model.data.split("test")[0][: args.batch]
    body = json.dumps({"inputs": images.numpy().astype("float32").tolist()}).encode()

    def measure(seconds: float, record: Path | None = None, progress: bool = True):
        port = args.port or _free_port()
        with serving(args.model_uri, model.store.tracking_uri, port, record=record) as url:
            pid = find_server_pid(port)
            return load_test(url, body, args.clients, seconds, server_pid=pid, progress=progress)

    report = measure(args.seconds)
    print(
        f"\nload test of {args.model_uri} (workbench serve, one uvicorn process), "
        f"{args.clients} clients, {args.seconds:g} s, {len(images)} image(s) a request "
        f"({len(body) / 1024:.1f} KiB)"
    )
    print(
        f"machine: {_cpu()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"python {platform.python_version()}; "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )
    print(report.table())
    failed = []
    if report.errors:
        failed.append(f"{report.errors} errors")
    if report.memory_growth is None:
        failed.append("the server's memory was not measured")
    elif report.memory_growth > MAX_GROWTH:
        failed.append(f"memory grew {report.memory_growth:.1%} (> {MAX_GROWTH:.0%})")
    print("FAIL: " + "; ".join(failed) if failed else "PASS: no errors, memory growth <= 10 %")

    if args.compare_recording:
        # Alternating servers without and with --record, so a drift of the machine's speed
        # falls on both sides; the ratio is taken pair by pair.
        ratios = []
        print(f"\nrecording's cost: {args.rounds} pairs of {args.compare_seconds:g} s runs")
        with tempfile.TemporaryDirectory() as folder:
            for round_ in range(args.rounds):
                plain = measure(args.compare_seconds, progress=False)
                recorded = measure(
                    args.compare_seconds, Path(folder) / f"round-{round_}", progress=False
                )
                ratios.append(recorded.throughput_rps / plain.throughput_rps)
                print(
                    f"  pair {round_ + 1}: {plain.throughput_rps:6.1f} requests/s without, "
                    f"{recorded.throughput_rps:6.1f} with recording ({ratios[-1]:.3f}); "
                    f"p95 {plain.latency_p95_ms:.0f} / {recorded.latency_p95_ms:.0f} ms; "
                    f"errors {plain.errors} / {recorded.errors}"
                )
            lines = sum(len(p.read_bytes().splitlines()) for p in Path(folder).rglob("*.jsonl"))
        mean = sum(ratios) / len(ratios)
        print(f"  throughput with recording / without: {mean:.3f} (mean of {len(ratios)} pairs)")
        print(f"  requests recorded: {lines}")
        if mean < 1 - MAX_RECORDING_COST:
            failed.append(f"recording cost {1 - mean:.1%} of throughput (> 10 %)")
        print("recording: " + ("PASS" if mean >= 1 - MAX_RECORDING_COST else "FAIL"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
