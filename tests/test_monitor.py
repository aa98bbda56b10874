"""Monitoring: the drift tests against hand-computed cases and scipy, their false alarms and
power on known distributions, the recording a served model writes, and `workbench monitor`'s run
checked through MLflow's client (a clean batch passes, a rotated one is flagged)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tests.servers import free_port
from workbench.deploy.recording import Recorder, read_recorded, recorded_files
from workbench.monitor import shifts
from workbench.monitor.drift import (
    DriftDetector,
    Sample,
    confidence_drop,
    ks_test,
    mmd_test,
    psi,
)


def test_ks_matches_scipy_column_by_column_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(120, 6)).astype(float)  # many ties, as background pixels have
    y = rng.integers(0, 6, size=(70, 6)).astype(float)
    expected = [stats.ks_2samp(x[:, j], y[:, j], method="asymp").pvalue for j in range(6)]
    assert np.allclose(ks_test(x, y), expected, rtol=1e-10, atol=1e-14)


def test_mmd_of_two_points_by_hand():
    # Pooled {0, 1}: the only off-diagonal squared distance is 1, so the bandwidth is 1 and
    # MMD² = k(0,0) + k(1,1) - 2 k(0,1) = 2 - 2/e.
    value, p = mmd_test(np.array([[0.0]]), np.array([[1.0]]), permutations=99)
    assert value == pytest.approx(2 - 2 / math.e)
    assert p == pytest.approx((1 + 99) / 100)  # every permutation is as extreme: nothing to tell


def test_psi_by_hand():
    reference = np.array([0.0, 0.0, 1.0, 1.0])
    new = np.array([1.0, 1.0, 1.0, 1.0])
    # Two bins split at 0.5: reference 50 % / 50 %, new 0 % (floored at 1e-4) / 100 %.
    expected = (1e-4 - 0.5) * math.log(1e-4 / 0.5) + (1 - 0.5) * math.log(1 / 0.5)
    assert psi(reference, new, np.array([0.5])) == pytest.approx(expected)
    assert psi(reference, reference, np.array([0.5])) == 0.0


def test_confidence_drop_is_one_sided():
    high, low = np.full(50, 0.95), np.linspace(0.4, 0.9, 50)
    drop, p = confidence_drop(high, low)
    assert drop == pytest.approx(0.95 - 0.65) and p < 1e-6
    assert confidence_drop(low, high)[1] > 0.99  # a rise is not a drop


def _gaussian_sample(rng, n: int, shift: float = 0.0, prior: np.ndarray | None = None) -> Sample:
    classes = rng.choice(3, size=n, p=prior if prior is not None else [1 / 3] * 3)
    embeddings = rng.normal(shift, 1.0, size=(n, 8)) + classes[:, None]
    features = np.round(rng.normal(shift, 1.0, size=(n, 20)), 2)
    confidence = np.clip(rng.normal(0.9 - shift / 5, 0.05, size=n), 0, 1)
    return Sample(features, embeddings, classes, confidence)


def test_false_alarms_near_alpha_and_shifts_found_on_known_distributions():
    """Measured, not assumed: 60 null batches stay near α = 0.05 for every test, a mean shift of
    half a standard deviation is found in every batch, and a prior shift by the class test."""
    rng = np.random.default_rng(1)
    detector = DriftDetector(_gaussian_sample(rng, 400), alpha=0.05, permutations=99)
    null = [detector.check(_gaussian_sample(rng, 100)) for _ in range(60)]
    for test in ("ks", "mmd", "chi2", "confidence"):
        rate = np.mean([r.flags[test] for r in null])
        assert rate <= 0.15, (test, rate)  # 0.05 expected; 0.15 is 3 standard errors above
    assert np.mean([r.drifted for r in null]) <= 0.15
    shifted = [detector.check(_gaussian_sample(rng, 100, shift=0.5)) for _ in range(10)]
    assert all(r.flags["ks"] and r.flags["mmd"] and r.flags["confidence"] for r in shifted)
    assert all(r.drifted for r in shifted)
    prior = [detector.check(_gaussian_sample(rng, 100, prior=np.array([0.7, 0.2, 0.1])))]
    assert prior[0].flags["chi2"]


def test_detector_refuses_bad_settings_and_mismatched_batches():
    rng = np.random.default_rng(2)
    reference = _gaussian_sample(rng, 50)
    with pytest.raises(ValueError, match="alpha"):
        DriftDetector(reference, alpha=1.5)
    with pytest.raises(ValueError, match="permutations"):
        DriftDetector(reference, permutations=5)
    detector = DriftDetector(reference)
    wrong = Sample(np.zeros((10, 3)), np.zeros((10, 8)))
    with pytest.raises(ValueError, match="inputs: 3 features per row, the reference has 20"):
        detector.check(wrong)


def test_rotation_keeps_pixel_values_and_its_control_stands_upright():
    image = np.zeros((1, 9, 9), np.float32)
    image[0, 1:8, 4] = 1.0  # a vertical bar
    turned = shifts.rotate(image, 90)
    assert set(np.unique(turned)) <= {0.0, 1.0}  # nearest neighbour: no blur
    assert turned[0, 4, 1:8].sum() == 7 and turned[0, :, 4].sum() == 1  # now horizontal
    assert np.array_equal(shifts.resampled(image, 90), image)
    rng = np.random.default_rng(0)
    rows = shifts.draw(np.repeat(np.arange(5), 20), 50, rng, classes=(0,), strength=0.4)
    assert len(set(rows)) == 50 and np.sum(rows < 20) >= 20  # 40 % from class 0, rest at random


def test_recording_rotates_within_its_cap_and_reads_back_in_order(tmp_path: Path):
    recorder = Recorder(tmp_path, max_file_mb=0.0005, max_files=3, flush_s=0.05, flush_lines=4)
    for i in range(40):
        # A pretty-printed body (newlines) still becomes one line.
        request = json.dumps({"inputs": [[i, i + 0.5]]}, indent=1).encode()
        recorder.add(request, json.dumps({"predictions": [[float(i)]]}).encode())
    recorder.close()
    files = recorded_files(tmp_path)
    assert len(files) == 3  # older files were removed
    assert all(f.stat().st_size <= 0.0005 * 1024 * 1024 for f in files)
    with files[-1].open("ab") as f:
        f.write(b'{"t": 1, "request": {"inputs": [[9')  # a line cut short by a killed server
    inputs, outputs, times = read_recorded(tmp_path)
    assert inputs.shape[1:] == (2,) and 0 < len(inputs) < 40
    assert np.array_equal(inputs[:, 0], outputs[:, 0])  # each input beside its own prediction
    assert np.all(np.diff(inputs[:, 0]) == 1) and inputs[-1, 0] == 39  # the newest are kept
    assert np.all(np.diff(times) >= 0)


def test_reading_a_recording_names_what_is_missing(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no recording directory"):
        read_recorded(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="holds no recorded requests"):
        read_recorded(tmp_path)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_served_inputs_recorded_then_monitored_clean_passes_rotated_is_flagged(
    tiny_study, tmp_path: Path
):
    from mlflow.tracking import MlflowClient

    from workbench.deploy import serve
    from workbench.monitor.monitor import monitor
    from workbench.trained_model import trained

    spec, result = tiny_study
    uri = f"models:/{result.registered_model}@champion"
    model = trained(uri, root=spec.tracking.root)
    inputs = model.data.split("test")[0]
    pixels = model.data.to_pixels(inputs).squeeze(1).numpy()
    rotated = model.data._to_tensor(shifts.rotate(pixels, 30)).numpy()
    record = tmp_path / "recording"
    with serve.serving(
        uri, result.tracking_uri, free_port(), record=record, max_body_mb=0.5
    ) as url:
        for start in range(0, len(inputs), 25):
            serve.predict(url, inputs[start : start + 25].numpy())
        too_big = json.dumps({"inputs": np.zeros((200, 1, 28, 28)).tolist()}).encode()
        status, answer = _post(url, too_big)
        assert status == 413 and "cap of 524288 bytes" in answer["message"]
        for start in range(0, len(rotated), 25):  # the server kept serving
            serve.predict(url, rotated[start : start + 25])
    recorded, predictions, _ = read_recorded(record)
    assert len(recorded) == len(inputs) + len(rotated)  # the refused request is not recorded
    assert np.allclose(recorded[: len(inputs)], inputs.numpy(), atol=1e-6)
    assert predictions.shape == (len(recorded), 10)

    # The command a user runs; the function it calls gives the same windows.
    command = [sys.executable, "-m", "workbench.cli", "monitor", uri, str(record)]
    options = ["--root", str(spec.tracking.root), "--window", str(len(inputs))]
    done = subprocess.run(
        [*command, *options, "--permutations", "99"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "DRIFT in the newest window" in done.stdout
    run_id = done.stdout.split("monitoring run ")[1].split(",")[0]
    found = monitor(uri, record, root=spec.tracking.root, window=len(inputs), permutations=99)
    assert [r.drifted for r in found.results] == [False, True]
    client = MlflowClient(result.tracking_uri)
    assert client.get_run(run_id).data.tags["workbench.drifted"] == "true"
    run = client.get_run(found.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["workbench.monitors"] == model.run_id
    assert run.data.tags["workbench.drifted"] == "true"
    history = client.get_metric_history(found.run_id, "drift/drifted")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.0),
        (1, 1.0),
    ]
    assert run.data.metrics["drift/mmd_p"] < 0.05  # the newest window's
    artifacts = {a.path for a in client.list_artifacts(found.run_id, "monitor")}
    assert {"monitor/p_values.png", "monitor/embeddings.png", "monitor/windows.csv"} <= artifacts
    page = found.report.read_text()
    assert "drift detected" in page and model.run_id in page and "data:image/png;base64" in page
    assert found.report.name in {a.path for a in client.list_artifacts(found.run_id)}


@pytest.mark.slow
def test_monitor_command_refuses_bad_inputs_before_logging(tiny_study, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    spec, result = tiny_study
    uri = f"models:/{result.registered_model}@champion"
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((20, 5), np.float32))
    client = MlflowClient(result.tracking_uri)

    def runs() -> int:
        return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))

    before = runs()
    for inputs, message in (
        (str(wrong), f"inputs: rows of {wrong} are shaped (5,); the model takes (1, 28, 28)"),
        (str(tmp_path / "none.npy"), "inputs: no such file or recording directory"),
    ):
        command = [sys.executable, "-m", "workbench.cli", "monitor", uri, inputs]
        done = subprocess.run(
            [*command, "--root", str(spec.tracking.root)], capture_output=True, text=True
        )
        assert done.returncode != 0 and message in done.stderr, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "workbench.cli", "monitor", uri, "--alpha", "2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--alpha: must lie strictly between 0 and 1" in done.stderr
    assert runs() == before  # nothing logged


@pytest.mark.slow
def test_monitor_load_serves_the_model_and_logs_a_load_run(tiny_study):
    from mlflow.tracking import MlflowClient

    spec, result = tiny_study
    uri = f"models:/{result.registered_model}@champion"
    command = [sys.executable, "-m", "workbench.cli", "monitor", uri, "--load"]
    options = ["--root", str(spec.tracking.root), "--clients", "4", "--seconds", "2"]
    done = subprocess.run([*command, *options], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split("load test logged in run ")[1].split()[0]
    run = MlflowClient(result.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["workbench.role"] == "load"
    metrics = run.data.metrics
    assert metrics["load/errors"] == 0 and metrics["load/requests"] > 10
    assert 0 < metrics["load/latency_p50_ms"] <= metrics["load/latency_p95_ms"]
    assert "load/memory_growth" in metrics


@pytest.mark.slow
def test_ctrl_c_lets_the_server_answer_and_record_the_request_in_hand(tiny_study, tmp_path: Path):
    """Ctrl-C at a terminal reaches `workbench serve` and its server alike (one process group).
    The server finishes the request it is answering and flushes its recording before the
    command returns; the command used to kill it 0.25 s after the interrupt, losing both."""
    import os
    import signal
    import threading
    import time

    from tests.servers import serving as run_server

    spec, result = tiny_study
    uri = f"models:/{result.registered_model}@champion"
    port, record = free_port(), tmp_path / "recording"
    command = [sys.executable, "-m", "workbench.cli", "serve", uri, "--port", str(port)]
    command += ["--root", str(spec.tracking.root), "--record", str(record), "--max-body-mb", "64"]
    url = f"http://127.0.0.1:{port}"
    # A batch big enough that the server is still reading it when the interrupt comes.
    batch = np.random.default_rng(0).random((4000, 1, 28, 28)).round(3)
    body = json.dumps({"inputs": batch.tolist()}).encode()
    answers: list = []
    with run_server(command, f"{url}/ping", stop=signal.SIGINT) as server:
        assert _post(url, json.dumps({"inputs": batch[:5].tolist()}).encode())[0] == 200
        sender = threading.Thread(target=lambda: answers.append(_post(url, body)))
        sender.start()
        time.sleep(0.3)
        assert sender.is_alive(), "the request must still be in hand when Ctrl-C comes"
        os.killpg(server.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        sender.join(timeout=120)
        assert server.wait(timeout=60) == 0
    assert len(answers) == 1, "the request in hand was not answered"
    status, answer = answers[0]
    assert status == 200 and len(answer["predictions"]) == len(batch)
    recorded, predictions, _ = read_recorded(record)
    assert len(recorded) == 5 + len(batch) and predictions.shape == (5 + len(batch), 10)


def test_a_server_that_will_not_stop_is_killed_and_said(capsys):
    """Past its grace period after Ctrl-C, `workbench serve` kills the server, says what may be
    lost and exits 1 (it returned 0 whatever happened)."""
    from workbench.cli import _let_server_finish

    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert stubborn.stdout.readline() == b"up\n"  # its handler is in place
    assert _let_server_finish(stubborn, timeout_s=1) == 1
    assert stubborn.returncode == -9
    assert "the server was killed (still running 1 s after Ctrl-C)" in capsys.readouterr().err
