"""The load test against a real `workbench serve` of the tiny study's model, and against nothing."""

from __future__ import annotations

import json
import math
import time

import pytest

from tests.servers import free_port, serving
from workbench.deploy.load import find_server_pid, load_test
from workbench.deploy.serve import serve_command, serve_environment
from workbench.train import data_from_spec


def _body(spec, batch: int = 1) -> bytes:
    images = data_from_spec(spec).split("test")[0][:batch]
    return json.dumps({"inputs": images.numpy().tolist()}).encode()


@pytest.fixture(scope="module")
def served(tiny_study):
    """The tiny study's champion served as `workbench serve` runs it: (url, server process)."""
    spec, result = tiny_study
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = serve_command(f"models:/{result.registered_model}@champion", port=port)
    with serving(command, f"{url}/ping", env=serve_environment(result.tracking_uri)) as server:
        yield url, server


@pytest.mark.slow
def test_concurrent_clients_get_answers_and_the_server_memory_is_sampled(tiny_study, served):
    spec, _ = tiny_study
    url, server = served
    report = load_test(
        url,
        _body(spec),
        clients=8,
        duration_s=3.0,
        max_requests=5000,
        server_pid=server.pid,
        progress=False,
    )
    assert report.errors == 0, report.error_examples
    assert report.requests > 10
    assert report.requests <= 5000
    assert report.throughput_rps > 0
    assert 0 < report.latency_p50_ms <= report.latency_p95_ms <= report.latency_p99_ms
    assert report.latency_p99_ms <= report.latency_max_ms
    assert report.duration_s < 3.0 + 30.0  # the deadline, plus at most one request's timeout
    assert len(report.rss_samples) >= 5  # every 0.25 s over ~3 s
    assert all(mb > 0 for _, mb in report.rss_samples)
    assert report.rss_first_mb > 0 and report.rss_last_mb > 0
    assert report.memory_growth == pytest.approx(report.rss_last_mb / report.rss_first_mb - 1)

    metrics = report.as_metrics()
    assert metrics["load/errors"] == 0
    assert metrics["load/throughput_rps"] == report.throughput_rps
    assert metrics["load/latency_p95_ms"] == report.latency_p95_ms
    assert "load/memory_growth" in metrics
    table = report.table()
    assert "p50/p95/p99" in table and "server RSS" in table and url in table


@pytest.mark.slow
def test_the_listening_process_is_found_by_its_port(served):
    url, server = served
    import psutil

    pid = find_server_pid(int(url.rsplit(":", 1)[1]))
    children = [child.pid for child in psutil.Process(server.pid).children(recursive=True)]
    assert pid == server.pid or pid in children


def test_no_process_is_found_on_a_free_port():
    assert find_server_pid(free_port()) is None


def test_nothing_listening_makes_every_request_an_error_within_the_duration():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    report = load_test(url, b'{"inputs": [[0.0]]}', clients=8, duration_s=2.0, progress=False)
    assert time.monotonic() - started < 2.0 + 5.0
    assert report.requests > 0
    assert report.errors == report.requests
    assert report.throughput_rps == 0
    assert math.isnan(report.latency_p95_ms)
    assert any("Connect" in example for example in report.error_examples), report.error_examples
    assert report.memory_growth is None and report.rss_samples == []
    metrics = report.as_metrics()
    assert metrics["load/errors"] == report.errors
    assert "load/latency_p95_ms" not in metrics and "load/memory_growth" not in metrics
    assert "not measured" in report.table()


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"clients": 0}, "clients"),
        ({"duration_s": 0}, "duration_s"),
        ({"max_requests": 0}, "max_requests"),
        ({"timeout_s": -1}, "timeout_s"),
    ],
)
def test_arguments_out_of_range_are_refused_by_name(arguments, named):
    with pytest.raises(ValueError, match=named):
        load_test("http://127.0.0.1:1", b"{}", progress=False, **arguments)
