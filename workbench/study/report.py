"""One self-contained HTML report per study: the search, the confirmed table with intervals, the
expected best score against the number of trials, the champion's curves, confusion matrix,
calibration and explanations, the environment, the spec and the commands that reproduce it.

Everything is read back from the stores (the figures the study logged, the champion's run, the
parent run's environment), so ``workbench report STUDY`` writes the same file at any time; only
the expected-best curve is drawn here. Images are embedded (base64 PNG): the file opens anywhere,
offline. It is written to ``<root>/reports/<study>.html`` and logged as ``report.html`` in the
study's parent run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import optuna

from workbench import html, tracking
from workbench.html import escape as _e
from workbench.html import image as _image
from workbench.html import png as _png
from workbench.html import table as _table
from workbench.html import write_atomic as _write
from workbench.spec import ExperimentSpec
from workbench.stats import expected_best
from workbench.study.config import _redact


def report_of(name: str, root: str | Path = "mlruns", experiment: str = "workbench") -> Path:
    """Write the report of study ``name`` in the store at ``root`` again; its path."""
    from workbench.spec import check_name, load_spec
    from workbench.study.config import storage_url
    from workbench.trained_model import _store

    check_name(name, "study")
    store = _store(root, experiment)
    parent = tracking.find_study_run(store, name)
    if parent is None:
        raise LookupError(f"study {name!r}: no study run in {store.tracking_uri}")
    raw = tracking.run_spec(store, parent)
    raw.setdefault("tracking", {})["root"] = str(store.root)
    spec = load_spec(raw)
    study = optuna.load_study(study_name=name, storage=storage_url(spec))
    return write_report(spec, study, store, parent)


def show_report(path: str | Path):
    """A report inline in a notebook: an iframe holding the file's page, so that its styles stay
    inside it."""
    from IPython.display import HTML

    page = Path(path).read_text(encoding="utf-8")
    return HTML(
        f'<iframe srcdoc="{_e(page)}" '
        'style="width: 100%; height: 720px; border: 1px solid #ddd"></iframe>'
    )


def write_report(spec: ExperimentSpec, study: optuna.Study, store, parent: str) -> Path:
    """Write the study's report under ``<root>/reports/`` and log it to the parent run; its path."""
    from workbench.study.summary import best_trial

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    champion = best_trial(study) if complete else None
    champion_run = champion.user_attrs.get("mlflow_run_id") if champion is not None else None
    sections = [
        _header(spec, study, store, parent, champion, champion_run),
        _confirmed(spec, store, parent),
        _search(spec, study, store, parent),
        _champion(spec, store, champion, champion_run),
        _environment(store, parent),
        _spec(spec),
        _reproduce(spec, store, champion_run),
    ]
    page = html.page(f"study {spec.name}", sections)
    folder = Path(store.root) / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.html"
    _write(folder / f"{spec.name}.yaml", _spec_yaml(spec))
    _write(path, page)
    tracking.log_file(store, parent, path)
    return path


def _spec_yaml(spec: ExperimentSpec) -> str:
    """The spec as YAML, database passwords hidden (a report is made to be shared)."""
    import yaml

    raw = spec.to_dict()
    for key in ("mlflow_uri", "optuna_storage"):
        if raw["tracking"].get(key):
            raw["tracking"][key] = _redact(raw["tracking"][key])
    return f"# workbench study {spec.name}.yaml\n" + yaml.safe_dump(raw, sort_keys=False)


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _header(spec, study, store, parent, champion, champion_run) -> str:
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    counts = {s: states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    line = (
        f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed; "
        f"metric {spec.study.metric} ({spec.study.direction})"
    )
    rows = [["study run", parent], ["MLflow", _redact(store.tracking_uri)]]
    if champion is not None:
        rows += [
            ["champion", f"trial {champion.number} (run {champion_run})"],
            ["its parameters", json.dumps(champion.params, default=str)],
            [f"its {spec.study.metric} (one run)", _number(champion.values[0])],
        ]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"<h1>study {_e(spec.name)}</h1><p class='note'>report written {when}</p>"
        f"<p>{_e(line)}</p>{_table(rows, ['', ''])}"
    )


def _confirmed(spec, store, parent) -> str:
    summary = tracking.read_json(store, parent, "confirm/summary.json")
    if not summary:
        return (
            "<h2>Confirmation over seeds</h2><p class='note'>Not run (study.confirm.top_k is 0): "
            "the champion is the best single trial, a score biased upwards by the search.</p>"
        )
    metric = spec.study.metric
    names = [metric] + sorted(
        k.removesuffix("_mean") for k in summary[0] if k.endswith("_mean") and k != f"{metric}_mean"
    )
    rows = [
        [f"trial {row['trial']}", row["n"], _number(row["search_value"])]
        + [f"{row[f'{n}_mean']:.4f} ± {row[f'{n}_ci']:.4f}" for n in names]
        for row in summary
    ]
    optimism = tracking.run_metrics(store, parent).get("confirm/optimism")
    figures = tracking.read_artifacts(store, parent, "confirm", ".png")
    return (
        "<h2>Confirmation over seeds</h2><p>Mean ± 95 % CI (Student t) over fresh seeds; the "
        "champion, chosen on the confirmed mean validation score, first. Test metrics are "
        "reported, never used to choose.</p>"
        + _table(rows, ["configuration", "seeds", f"search {metric}", *names])
        + (f"<p>Optimism of the search: {optimism:+.4f}</p>" if optimism is not None else "")
        + "".join(_image(data, "per seed, mean ± CI, search score") for data in figures.values())
    )


def _search(spec, study, store, parent) -> str:
    from workbench import plots

    figures = tracking.read_artifacts(store, parent, "plots", ".png")
    parts = ["<h2>The search</h2>"]
    parts += [_image(data, Path(path).stem.replace("_", " ")) for path, data in figures.items()]
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:
        maximize = spec.study.direction == "maximize"
        values = [t.values[0] for t in complete]
        budgets = list(range(1, 2 * len(values) + 1))
        found = [
            (max if maximize else min)(values[: i + 1]) for i in range(len(values))
        ]  # in the order the trials finished
        figure = plots.expected_best(
            budgets, expected_best(values, budgets, maximize), found, spec.study.metric
        )
        parts.append(_image(_png(figure), "expected best score against the number of trials"))
        parts.append(
            "<p class='note'>Expected best of n trials drawn from this search's completed trials "
            "(Dodge et al. 2019); pruned trials are left out, so it describes the completed "
            "ones.</p>"
        )
    return "".join(parts)


def _champion(spec, store, champion, champion_run) -> str:
    if champion_run is None:
        return "<h2>The champion</h2><p>No trial completed.</p>"
    figures = tracking.read_artifacts(store, champion_run, "plots", ".png")
    explained = tracking.read_artifacts(store, champion_run, "explain", ".png")
    metrics = champion.user_attrs.get("test_metrics", {})
    rows = [[k, _number(v)] for k, v in sorted(metrics.items()) if "/class_" not in k]
    per_class = sorted({k.split("/")[1] for k in metrics if "/class_" in k})
    class_rows = [
        [c] + [_number(metrics.get(f"test/{c}/{m}", "")) for m in ("precision", "recall", "f1")]
        for c in per_class
    ]
    trust = tracking.read_json(store, champion_run, "explain/trust.json") or {}
    parts = [
        f"<h2>The champion (trial {champion.number})</h2>",
        _table(rows, ["test metric", "value"]),
    ]
    if class_rows:
        parts.append(_table(class_rows, ["class", "precision", "recall", "f1"]))
    parts += [_image(data, Path(path).stem.replace("_", " ")) for path, data in figures.items()]
    if explained:
        parts.append("<h3>Explanations</h3>")
        parts += [_image(data, Path(path).stem) for path, data in explained.items()]
    if trust.get("trust"):
        parts.append(f"<pre>{_e(json.dumps(trust['trust'], indent=1, default=str))}</pre>")
    parts.append(_robustness(store, champion_run))
    return "".join(parts)


def _robustness(store, run_id: str) -> str:
    """The champion's adversarial evaluation, when it has one; a failed masking check is said
    in a line of its own."""
    table = tracking.read_artifacts(store, run_id, "robustness", ".txt")
    if not table:
        return ""
    parts = ["<h3>Under attack</h3>"]
    warning = tracking.run_tags(store, run_id).get("workbench.robustness.warning")
    if warning:
        parts.append(f"<p class='note'><b>Gradient-masking warning:</b> {_e(warning)}</p>")
    parts += [f"<pre>{_e(data.decode())}</pre>" for data in table.values()]
    figures = tracking.read_artifacts(store, run_id, "robustness", ".png")
    parts += [_image(data, "accuracy against ε") for data in figures.values()]
    return "".join(parts)


def _environment(store, parent) -> str:
    env = tracking.read_json(store, parent, "environment.json") or {}
    keys = ("python", "platform", "cpu", "cpu_count", "gpus", "torch_threads", "deterministic")
    rows = [[k, env.get(k)] for k in keys]
    git = env.get("git") or {}
    rows += [["git commit", git.get("commit")], ["git dirty", git.get("dirty")]]
    rows += [[f"package {k}", v] for k, v in sorted((env.get("packages") or {}).items())]
    return "<h2>Environment</h2>" + _table(rows, ["", ""])


def _spec(spec) -> str:
    return f"<h2>The spec</h2><pre>{_e(_spec_yaml(spec))}</pre>"


def _reproduce(spec, store, champion_run) -> str:
    root = Path(store.root)
    saved = root / "reports" / f"{spec.name}.yaml"
    lines = [
        "# the whole study again, from the spec as it ran (beside this report), in a new store:",
        f"workbench study {saved} --set tracking.root=rerun/mlruns",
        "# this report again:",
        f"workbench report {spec.name} --root {root}",
    ]
    if champion_run is not None:
        lines += [
            "# the champion trained again from its run's record, differences listed:",
            f"workbench reproduce {champion_run} --root {root}",
        ]
    return f"<h2>Reproduce</h2><pre>{_e(chr(10).join(lines))}</pre>"
