"""``workbench monitor MODEL [INPUTS]``: the drift tests over a served model's recorded inputs
(or a file of inputs), logged as a monitoring run linked to the model's run.

The reference is the model's validation split (what it was selected on, not what it was fitted
to: training inputs would make its embeddings look more confident than any new data). Inputs are
tested in consecutive windows of ``window`` rows, each window a step of the run's metrics; the run
holds a p-value plot, the embeddings of reference and newest window, confidence and class
histograms, a CSV of every window and a self-contained HTML report.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workbench import html, tracking
from workbench.monitor.drift import TESTS, DriftDetector, DriftResult, Sample, sample_of

MONITORS = "workbench.monitors"  # tag on the monitoring run: the run id of the model it watched
RECORDINGS = "served"  # <root>/served/<run id>/: where `workbench serve --record` writes


@dataclass
class Monitoring:
    """What one ``monitor`` call found: a result per window, and where it was logged."""

    model: str
    windows: list[tuple[int, int]]
    results: list[DriftResult]
    run_id: str | None = None
    report: Path | None = None
    reference: Sample | None = field(default=None, repr=False)
    newest: Sample | None = field(default=None, repr=False)

    @property
    def drifted(self) -> bool:
        """The newest window's family-wise verdict."""
        return self.results[-1].drifted

    def table(self) -> str:
        lines = [
            f"{'window':>13s}  " + "  ".join(f"{t + ' p':>12s}" for t in TESTS) + "   psi  drift"
        ]
        for (start, end), result in zip(self.windows, self.results, strict=True):
            ps = "  ".join(f"{result.p_values.get(t, float('nan')):12.4g}" for t in TESTS)
            flag = "yes" if result.drifted else "no"
            lines.append(f"{start:6d}-{end:<6d}  {ps}  {result.statistics['psi']:.3f}  {flag:>5s}")
        return "\n".join(lines)


def recordings_of(root: str | Path, run_id: str) -> Path:
    """Where ``workbench serve MODEL --record`` writes the requests of the model of ``run_id``."""
    return Path(root) / RECORDINGS / run_id


def monitor(
    model: str,
    inputs: str | Path | np.ndarray | None = None,
    root: str | Path = "mlruns",
    window: int = 200,
    alpha: float = 0.05,
    permutations: int = 200,
    log: bool = True,
) -> Monitoring:
    """Test ``inputs`` (a recording directory, a ``.npy``/``.json`` file, or an array; by default
    the model's own recording) against the model's reference, window by window, and log a
    monitoring run. Bad input is refused before any test, naming the path and the shape."""
    from workbench.trained_model import trained

    if window < 10:
        raise ValueError(f"window: at least 10 inputs per window, got {window}")
    loaded = trained(model, root=root)
    if loaded.run_id is None:
        raise ValueError(f"model: {model} has no MLflow run to link a monitoring run to")
    source = recordings_of(root, loaded.run_id) if inputs is None else inputs
    if inputs is None and not Path(source).is_dir():
        raise FileNotFoundError(
            f"inputs: nothing recorded for run {loaded.run_id} at {source}; serve the model with "
            "`workbench serve MODEL --record` first, or give INPUTS (a .npy or .json file)"
        )
    rows = _inputs(source, tuple(loaded.data.input_shape))
    if len(rows) < 10:
        raise ValueError(f"inputs: {len(rows)} rows in {_name(source)}; at least 10 are needed")
    network = loaded.network.cpu()
    from workbench.monitor.power import reference_of

    reference = reference_of(loaded)
    detector = DriftDetector(reference, alpha=alpha, permutations=permutations)
    windows = _windows(len(rows), window)
    results, newest = [], None
    for start, end in windows:
        newest = sample_of(network, torch.from_numpy(rows[start:end]))
        results.append(detector.check(newest))
    found = Monitoring(model, windows, results, reference=reference, newest=newest)
    if log:
        _log(found, loaded, source, alpha, permutations, window)
    return found


def _name(source) -> str:
    return "the given array" if isinstance(source, np.ndarray) else str(source)


def _inputs(source, shape: tuple[int, ...]) -> np.ndarray:
    """Rows shaped like the model input, float32."""
    from workbench.deploy.recording import read_recorded

    if isinstance(source, np.ndarray):
        rows = source
    else:
        path = Path(source)
        if path.is_dir():
            rows = read_recorded(path)[0]
        elif not path.is_file():
            raise FileNotFoundError(f"inputs: no such file or recording directory: {path}")
        elif path.suffix == ".npy":
            rows = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            content = json.loads(path.read_text())
            if isinstance(content, dict):
                content = content.get("inputs", content.get("instances"))
            rows = np.asarray(content, dtype=np.float32)
        else:
            raise ValueError(f"inputs: {path} is neither a recording directory, .npy nor .json")
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == len(shape):  # a single input
        rows = rows[None]
    if tuple(rows.shape[1:]) != shape:
        raise ValueError(
            f"inputs: rows of {_name(source)} are shaped {tuple(rows.shape[1:])}; the model "
            f"takes {shape}"
        )
    return rows


def _windows(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive windows of ``size`` rows; a tail under half a window joins the last one."""
    edges = list(range(0, n, size)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < size // 2:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _log(found: Monitoring, loaded, source, alpha: float, permutations: int, window: int) -> None:
    store = loaded.store
    name = f"monitor {loaded.spec.name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    tags = {
        "workbench.role": "monitor",
        MONITORS: loaded.run_id,
        "workbench.model_uri": found.model,
        "mlflow.note.content": (
            f"Drift monitoring of run {loaded.run_id} ({found.model}) over {_name(source)}."
        ),
    }
    run_id = tracking.start_run(store, name, tags)
    status = "FAILED"
    try:
        tracking.log_params(
            store,
            run_id,
            {
                "model": found.model,
                "inputs": _name(source),
                "window": window,
                "alpha": alpha,
                "permutations": permutations,
                "reference": f"validation split ({len(found.reference)} rows)",
            },
        )
        for step, result in enumerate(found.results):
            tracking.log_metrics(store, run_id, result.metrics(), step=step)
        share = float(np.mean([r.drifted for r in found.results]))
        tracking.log_metrics(
            store,
            run_id,
            {
                "monitor/windows": float(len(found.results)),
                "monitor/share_drifted": share,
                "monitor/inputs": float(found.windows[-1][1]),
                "monitor/latest_drifted": float(found.drifted),
            },
        )
        figures = _figures(found)
        for file, figure in figures.items():
            tracking.log_figure(store, run_id, figure, f"monitor/{file}")
        tracking.log_text(store, run_id, _csv(found), "monitor/windows.csv")
        report = Path(store.root) / "reports" / f"monitor-{run_id}.html"
        report.parent.mkdir(parents=True, exist_ok=True)
        html.write_atomic(report, _page(found, loaded, source, figures, alpha))
        tracking.log_file(store, run_id, report)
        tracking.set_tags(store, run_id, {"workbench.drifted": str(found.drifted).lower()})
        found.run_id, found.report = run_id, report
        status = "FINISHED"
    finally:
        tracking.end_run(store, run_id, status)


def _csv(found: Monitoring) -> str:
    keys = sorted({k for r in found.results for k in r.metrics()})
    lines = ["start,end," + ",".join(keys)]
    for (start, end), result in zip(found.windows, found.results, strict=True):
        metrics = result.metrics()
        lines.append(
            f"{start},{end}," + ",".join(f"{metrics.get(k, float('nan')):.6g}" for k in keys)
        )
    return "\n".join(lines) + "\n"


def _figures(found: Monitoring) -> dict:
    from matplotlib.figure import Figure

    figures = {}
    figure = Figure(figsize=(6, 3.8))
    ax = figure.subplots()
    steps = np.arange(len(found.results))
    for test in TESTS:
        values = [r.p_values.get(test, np.nan) for r in found.results]
        if not np.all(np.isnan(values)):
            ax.plot(steps, np.maximum(values, 1e-6), "-o", ms=3, label=test)
    ax.axhline(found.results[0].alpha, ls=":", color="grey", label="α")
    ax.set_yscale("log")
    ax.set_xlabel("window")
    ax.set_ylabel("p-value")
    ax.set_title("drift tests per window")
    ax.legend(fontsize=8)
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.14, top=0.9)
    figures["p_values.png"] = figure

    reference, newest = found.reference, found.newest
    figure = Figure(figsize=(5, 4.2))
    ax = figure.subplots()
    centre = reference.embeddings.mean(axis=0)
    _, _, axes = np.linalg.svd(reference.embeddings - centre, full_matrices=False)
    for sample, label in ((reference, "reference (validation)"), (newest, "newest window")):
        points = (sample.embeddings - centre) @ axes[:2].T
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.5, label=label)
    ax.set_title("embeddings, first two principal axes of the reference")
    ax.legend(fontsize=8)
    figure.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.9)
    figures["embeddings.png"] = figure

    if reference.confidence is not None:
        figure = Figure(figsize=(9, 3.6))
        left, right = figure.subplots(1, 2)
        bins = np.linspace(0, 1, 21)
        for sample, label in ((reference, "reference"), (newest, "newest window")):
            left.hist(sample.confidence, bins=bins, alpha=0.5, density=True, label=label)
        left.set_xlabel("top-class probability")
        left.set_title("confidence")
        left.legend(fontsize=8)
        k = int(max(reference.classes.max(), newest.classes.max())) + 1
        for offset, (sample, label) in enumerate(((reference, "reference"), (newest, "newest"))):
            shares = np.bincount(sample.classes, minlength=k) / len(sample)
            right.bar(np.arange(k) + 0.4 * offset - 0.2, shares, width=0.4, label=label)
        right.set_xlabel("predicted class")
        right.set_title("predicted classes")
        right.legend(fontsize=8)
        figure.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.88, wspace=0.25)
        figures["confidence_and_classes.png"] = figure
    return figures


def _page(found: Monitoring, loaded, source, figures: dict, alpha: float) -> str:
    newest = found.results[-1]
    verdict = "drift detected" if found.drifted else "no drift detected"
    rows = [
        [
            f"{start}-{end}",
            *[f"{r.p_values[t]:.4g}" if t in r.p_values else "–" for t in TESTS],
            f"{r.statistics['psi']:.3f}",
            "yes" if r.drifted else "no",
        ]
        for (start, end), r in zip(found.windows, found.results, strict=True)
    ]
    sections = [
        f"<h1>Monitoring {html.escape(loaded.spec.name)}: {verdict} in the newest window</h1>",
        f"<p class='note'>Model {html.escape(found.model)} (run {html.escape(loaded.run_id)}), "
        f"inputs {html.escape(_name(source))}, {found.windows[-1][1]} rows in "
        f"{len(found.windows)} windows, against {len(found.reference)} validation rows. "
        f"Each test at α = {alpha:g}; the verdict is Bonferroni over the tests "
        f"(any p below α / {len(newest.p_values)}).</p>",
        "<h2>Tests</h2><ul>"
        "<li>ks: per-feature Kolmogorov–Smirnov, Bonferroni over the features that vary</li>"
        "<li>mmd: RBF-kernel MMD on the model's embeddings, permutation p-value</li>"
        "<li>chi2: predicted-class counts against the reference's</li>"
        "<li>confidence: one-sided Mann–Whitney U, top-class probability fell</li>"
        "<li>psi: mean population stability index over features (descriptive; 0.25 is the "
        "usual bar)</li></ul>",
        html.table(rows, ["window", *[f"{t} p" for t in TESTS], "psi", "drift"]),
        "<h2>Figures</h2>",
        *[html.image(html.png(figure), name) for name, figure in figures.items()],
    ]
    return html.page(f"monitoring {loaded.spec.name}", sections)


def load_check(
    model: str, root: str | Path = "mlruns", clients: int = 32, seconds: float = 30.0
) -> tuple:
    """Serve ``model`` on a free loopback port, put it under load (``clients`` concurrent
    clients for ``seconds``, each request one test input) and log the figures as a monitoring
    run linked to the model's run: ``(LoadReport, run id)``."""
    import socket

    from workbench.deploy.load import find_server_pid, load_test
    from workbench.deploy.serve import serving
    from workbench.trained_model import trained

    loaded = trained(model, root=root)
    uri = model if model.startswith("models:/") else loaded.mlflow_model()
    one = loaded.data.split("test")[0][:1].numpy()
    body = json.dumps({"inputs": one.tolist()}).encode()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with serving(uri, loaded.store.tracking_uri, port) as url:
        report = load_test(url, body, clients, seconds, server_pid=find_server_pid(port))
    store = loaded.store
    tags = {"workbench.role": "load", MONITORS: loaded.run_id, "workbench.model_uri": model}
    run_id = tracking.start_run(store, f"load {loaded.spec.name}", tags)
    status = "FAILED"
    try:
        tracking.log_params(store, run_id, {"model": model, "clients": clients, "seconds": seconds})
        tracking.log_metrics(store, run_id, report.as_metrics())
        tracking.log_text(store, run_id, report.table() + "\n", "load/report.txt")
        if report.rss_samples:
            from matplotlib.figure import Figure

            figure = Figure(figsize=(5.5, 3.5))
            ax = figure.subplots()
            times, rss = zip(*report.rss_samples, strict=True)
            ax.plot(times, rss)
            ax.set_xlabel("seconds")
            ax.set_ylabel("server RSS (MB)")
            ax.set_title(f"{clients} clients: {report.throughput_rps:.0f} requests/s")
            figure.subplots_adjust(left=0.15, right=0.97, bottom=0.14, top=0.9)
            tracking.log_figure(store, run_id, figure, "load/memory.png")
        status = "FINISHED"
    finally:
        tracking.end_run(store, run_id, status)
    return report, run_id
