"""The ``workbench`` command: ``study`` runs or resumes a spec's study; ``ui`` serves both UIs.

Arguments are parsed before anything heavy is imported, so ``workbench --help`` answers at once and
a bad spec fails in about a second.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _at_least(minimum: int):
    """An argparse ``type``: a whole number >= ``minimum``; the error names the flag."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return whole_number


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _positive(text: str) -> float:
    """An argparse ``type``: a number > 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value:g}")
    return value


def _probability(text: str) -> float:
    """An argparse ``type``: a level strictly between 0 and 1."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {value:g}")
    return value


def _port(text: str) -> int:
    """An argparse ``type``: a TCP port, 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a port number from 1 to 65535, got {text!r}"
        ) from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    study = commands.add_parser("study", help="run (or resume) the Optuna study a spec defines")
    study.add_argument("spec", help="experiment spec, e.g. experiments/mnist_cnn.yaml")
    study.add_argument(
        "--trials", type=_at_least(1), help="total finished trials to reach (default: the spec's)"
    )
    study.add_argument(
        "--workers", type=_at_least(1), help="worker processes on this machine (default: 1)"
    )
    study.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec field, e.g. --set trainer.max_epochs=1 (repeatable)",
    )

    ui = commands.add_parser("ui", help="serve the MLflow UI and optuna-dashboard over one mlruns/")
    ui.add_argument("--root", default="mlruns", help="the workbench store (default: mlruns)")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1 only)")
    ui.add_argument("--mlflow-port", type=_port, default=5000)
    ui.add_argument("--dashboard-port", type=_port, default=8080)

    review = commands.add_parser(
        "review",
        help="optuna-dashboard notes and figures, MLflow runs linked back, reviewer notes synced",
    )
    review.add_argument("--root", default="mlruns", help="the workbench store (default: mlruns)")
    review.add_argument(
        "--mlflow-url", default="http://127.0.0.1:5000", help="where the MLflow UI listens"
    )
    review.add_argument(
        "--dashboard-url", default="http://127.0.0.1:8080", help="where optuna-dashboard listens"
    )

    explain = commands.add_parser(
        "explain", help="SHAP + LIME for a trial run's model, with trust metrics, logged to it"
    )
    explain.add_argument("run_id", help="the MLflow run id of a trial (see the MLflow UI)")
    explain.add_argument("--root", default="mlruns", help="the workbench store (default: mlruns)")
    explain.add_argument(
        "--n", type=_at_least(1), default=20, help="test inputs to explain (default: 20)"
    )
    explain.add_argument("--methods", default="shap,lime", help="shap, lime or both (default)")
    explain.add_argument(
        "--shap", default="gradient", choices=["gradient", "deep", "kernel"], help="SHAP explainer"
    )
    explain.add_argument("--background", type=_at_least(1), default=64, help="SHAP background size")
    explain.add_argument("--lime-samples", type=_at_least(1), default=1000)

    compress = commands.add_parser("compress", help="prune, quantize and distil a study's best CNN")
    compress.add_argument("spec")
    compress.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )
    compress.add_argument("--distill-epochs", type=_at_least(1), default=10)
    compress.add_argument("--finetune-epochs", type=_at_least(0), default=2)

    export = commands.add_parser(
        "export", help="export a study's best model to TorchScript and ONNX"
    )
    export.add_argument("spec")
    export.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    export.add_argument("--out", default="exports", help="output directory (default: exports/)")

    serve = commands.add_parser("serve", help="serve a logged model over REST on 127.0.0.1")
    serve.add_argument("model_uri", help="e.g. models:/mnist_cnn@champion or runs:/<run id>/model")
    serve.add_argument("--root", default="mlruns", help="the workbench store (default: mlruns)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1 only)")
    serve.add_argument("--port", type=_port, default=5001)
    serve.add_argument(
        "--record", nargs="?", const="", metavar="DIR",
        help="write each answered request (inputs, predictions) to disk for `workbench "
        "monitor`; default DIR: <root>/served/<run id>",
    )  # fmt: skip
    serve.add_argument(
        "--max-body-mb", type=_positive, default=16.0,
        help="requests with a larger body get 413 (default: 16)",
    )  # fmt: skip

    attack = commands.add_parser(
        "attack",
        help="robust accuracy of a trained classifier under FGSM/PGD over a list of ε, with the "
        "gradient-masking checks; logged to its run",
    )
    attack.add_argument("source", help="a run id, models:/NAME@ALIAS, study:NAME or a spec")
    attack.add_argument("--root", default="mlruns", help="the workbench store (default: mlruns)")
    attack.add_argument(
        "--attacks", default=None, help="comma-separated: fgsm, pgd, square (default: the spec's)"
    )
    attack.add_argument(
        "--epsilons", default=None, help="comma-separated L∞ radii in [0, 1] (default: the spec's)"
    )
    attack.add_argument("--steps", type=_at_least(1), default=None, help="PGD steps")
    attack.add_argument("--restarts", type=_at_least(1), default=None, help="PGD restarts")
    attack.add_argument("--n", type=_at_least(1), default=None, help="test examples attacked")

    monitor = commands.add_parser(
        "monitor",
        help="drift tests of a model's served (recorded) inputs against its training reference, "
        "and optionally a load test; logged as a monitoring run",
    )
    monitor.add_argument("model_uri", help="e.g. models:/mnist_cnn@champion or a run id")
    monitor.add_argument(
        "inputs", nargs="?",
        help="a recording directory, .npy or .json file (default: the model's own recording, "
        "<root>/served/<run id>)",
    )  # fmt: skip
    monitor.add_argument("--root", default="mlruns", help="the workbench store (default: mlruns)")
    monitor.add_argument(
        "--window", type=_at_least(10), default=200, help="inputs per test window (default: 200)"
    )
    monitor.add_argument("--alpha", type=_probability, default=0.05)
    monitor.add_argument("--permutations", type=_at_least(19), default=200)
    monitor.add_argument(
        "--load", action="store_true",
        help="also serve the model on loopback and put it under load (logged in its own run)",
    )  # fmt: skip
    monitor.add_argument("--clients", type=_at_least(1), default=32)
    monitor.add_argument("--seconds", type=_positive, default=30.0)

    predict = commands.add_parser("predict", help="send inputs (.npy or .json) to a served model")
    predict.add_argument("inputs", help="a .npy array or a JSON list, shaped like the model input")
    predict.add_argument("--url", default="http://127.0.0.1:5001")

    efficiency = commands.add_parser(
        "label-efficiency",
        help="a transfer spec from scratch, frozen and fine-tuned, over label counts and seeds",
    )
    efficiency.add_argument("spec", help="a model.name: transfer spec with a backbone.source")
    efficiency.add_argument(
        "--labels",
        default="10,30,100,all",
        help="labelled examples per class, comma-separated; 'all' = every label "
        "(default: 10,30,100,all)",
    )
    efficiency.add_argument("--seeds", type=_at_least(1), default=5, help="seeds (default: 5)")
    efficiency.add_argument(
        "--arms", default="scratch,frozen,finetuned", help="which of scratch, frozen, finetuned"
    )
    efficiency.add_argument(
        "--min-steps", type=_at_least(1), default=1000,
        help="optimiser steps every run gets at least (default: 1000)",
    )  # fmt: skip
    efficiency.add_argument("--out", help="also save the figure here (a .png path)")
    efficiency.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE"
    )

    def store_command(name: str, help: str, *positional: tuple[str, str]):
        """A command that reads the workbench store: its positionals, --root, --experiment."""
        command = commands.add_parser(name, help=help)
        for argument, text in positional:
            command.add_argument(argument, help=text)
        command.add_argument(
            "--root", default="mlruns", help="the workbench store (default: mlruns)"
        )
        command.add_argument("--experiment", default="workbench")

    store_command(
        "lineage", "the chain of runs and models a fine-tuned model came from",
        ("source", "a run id or a models:/ URI"),
    )  # fmt: skip
    store_command(
        "reproduce",
        "train a finished trial again from what its run recorded; compare and list every "
        "recorded difference",
        ("run_id", "the MLflow run id of a trial (or a confirmation)"),
    )  # fmt: skip
    store_command(
        "report", "write a study's self-contained HTML report again, from the stores",
        ("study", "the study's name"),
    )  # fmt: skip
    store_command(
        "results", "the results table (Markdown): each study's confirmed result and target"
    )

    args = parser.parse_args(argv)
    handlers = {
        "results": _results,
        "report": _report,
        "reproduce": _reproduce,
        "label-efficiency": _label_efficiency,
        "lineage": _lineage,
        "study": _study,
        "ui": _ui,
        "review": _review,
        "explain": _explain,
        "compress": _compress,
        "export": _export,
        "serve": _serve,
        "monitor": _monitor,
        "attack": _attack,
        "predict": _predict,
    }
    try:
        return handlers[args.command](args)
    except (ValueError, LookupError, FileNotFoundError, ConnectionError) as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2


def _print_confirmed(result, metric: str) -> None:
    """Each confirmed configuration as mean ± 95 % interval over its seeds, champion first."""
    if not result.confirmed:
        return
    print("confirmed over seeds (mean ± 95 % CI; the champion, chosen on validation, first):")
    for row in result.confirmed:
        names = [metric] + sorted(
            k.removesuffix("_mean") for k in row if k.endswith("_mean") and k != f"{metric}_mean"
        )
        scores = "  ".join(f"{n} {row[f'{n}_mean']:.4f} ± {row[f'{n}_ci']:.4f}" for n in names)
        print(f"  trial {row['trial']:3d} ({row['n']} seeds)  {scores}  (search: "
              f"{row['search_value']:.4f})")  # fmt: skip
    print(
        f"optimism of the search: {result.optimism:+.4f} (how much better its best single "
        f"{metric} was than that configuration's confirmed mean)"
    )


def _study(args: argparse.Namespace) -> int:
    from workbench.spec import load_spec

    spec = load_spec(args.spec, args.overrides)  # validated before any import of Lightning work
    from workbench.study import run_study

    try:
        result = run_study(spec, trials=args.trials, workers=args.workers)
    except KeyboardInterrupt:
        return 130
    root = Path(spec.tracking.root)
    print(
        f"\nstudy {result.study_name!r}: {result.n_complete} complete, {result.n_pruned} pruned, "
        f"{result.n_failed} failed"
    )
    if result.best_trial is not None:
        print(
            f"best trial {result.best_trial}: {spec.study.metric} = {result.best_value:.4f}, "
            f"params {result.best_params}"
        )
        overall = {k: v for k, v in result.test_metrics.items() if "/class_" not in k}
        per_class = len(result.test_metrics) - len(overall)
        print(
            "best test metrics: "
            + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(overall.items()))
            + (f" (and {per_class} per-class metrics in its run)" if per_class else "")
        )
        _print_confirmed(result, spec.study.metric)
        print(
            f"registered model: models:/{result.registered_model}@champion "
            f"(version {result.registered_version})"
            if result.registered_model
            else "registered model: none here (the champion was trained on another machine)"
        )
    if result.report:
        print(f"report:           {result.report}")
    print(f"MLflow UI:        mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1")
    print(f"optuna-dashboard: optuna-dashboard {result.storage_url} --host 127.0.0.1")
    print(f"both at once:     workbench ui --root {root}")
    return 0 if _any_trial_finished(result) else 1


def _any_trial_finished(result) -> bool:
    """True if the study holds a complete or pruned trial; if not, say why its trials failed."""
    if result.n_complete + result.n_pruned > 0:
        return True
    print(
        f"workbench: error: no trial of study {result.study_name!r} finished "
        f"({result.n_failed} failed); no model was trained or registered. "
        "Why the trials failed:",
        file=sys.stderr,
    )
    reasons = sorted(result.failures.items(), key=lambda item: -item[1])
    for reason, count in reasons[:10]:
        print(f"  {count} × {reason}", file=sys.stderr)
    if len(reasons) > 10:
        print(f"  ... and {len(reasons) - 10} other reasons", file=sys.stderr)
    return False


def _explain(args) -> int:
    from workbench.trained_model import trained

    report = trained(args.run_id, root=args.root).explain(
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
        n=args.n,
        shap_method=args.shap,
        background=args.background,
        lime_samples=args.lime_samples,
    )
    print(f"explained {args.n} test inputs ({report.kind}); logged to run {args.run_id}/explain")
    for name, value in report.trust.items():
        print(f"  {name:28s} {value:8.4f}")
    return 0


def _label_counts(text: str) -> tuple[int | None, ...]:
    counts: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "all":
            counts.append(None)
        elif part.isdigit() and int(part) >= 1:
            counts.append(int(part))
        else:
            raise ValueError(f"--labels: {part!r} is neither a whole number >= 1 nor 'all'")
    if not counts:
        raise ValueError("--labels: give at least one count, e.g. 10,30,all")
    return tuple(counts)


def _label_efficiency(args: argparse.Namespace) -> int:
    from workbench.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    labels = _label_counts(args.labels)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    from workbench.label_efficiency import label_efficiency

    result = label_efficiency(
        spec, labels=labels, seeds=args.seeds, arms=arms, min_steps=args.min_steps
    )
    print(result.table())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result.figure.savefig(args.out, dpi=120)
        print(f"figure: {args.out}")
    print(f"MLflow run {result.run_id}: label_efficiency.png and label_efficiency.csv")
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from workbench import tracking
    from workbench.tracking.lineage import describe, lineage

    root = Path(args.root)
    if not (root / "mlflow.db").is_file():
        raise FileNotFoundError(f"{root.resolve()}: no mlflow.db; run a study first")
    store = tracking.open_store(root, args.experiment)
    run_id = tracking.resolve_run_id(store, args.source)
    print(describe(lineage(store, run_id), store))
    return 0


def _results(args: argparse.Namespace) -> int:
    from workbench.results import markdown, results

    print(markdown(results(args.root, args.experiment)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from workbench.study.report import report_of

    print(f"report: {report_of(args.study, args.root, args.experiment)}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from workbench.study.reproduce import reproduce

    result = reproduce(args.run_id, args.root, args.experiment)
    print(f"original run {result.original_run}, reproduced in run {result.new_run}")
    print(result.table())
    print("identical metrics" if result.identical else "the metrics differ")
    if result.differences:
        print("recorded differences:")
        for line in result.differences:
            print(f"  {line}")
    else:
        print("recorded differences: none (same data, commit, packages, machine and settings)")
    return 0


def _ui(args: argparse.Namespace) -> int:
    from workbench.deploy.ui import serve_uis

    root = Path(args.root)
    if (root / "optuna.db").is_file() and (root / "mlflow.db").is_file():
        # Notes and links carry the addresses the two UIs are about to listen on.
        host = "127.0.0.1" if args.host in {"0.0.0.0", "::"} else args.host
        mlflow_url = f"http://{host}:{args.mlflow_port}"
        _review(
            argparse.Namespace(
                root=args.root,
                mlflow_url=mlflow_url,
                dashboard_url=f"http://{host}:{args.dashboard_port}",
            )
        )
        from workbench import tracking
        from workbench.study.review import Links

        experiment = tracking.open_store(root, "workbench").experiment_id
        print(f"training runs:    {Links(mlflow_url).experiment(experiment)}")
    return serve_uis(root, args.host, args.mlflow_port, args.dashboard_port)


def _review(args: argparse.Namespace) -> int:
    """Dashboard notes and figures for every study of a root, MLflow runs linked back, and
    notes a person edited in the dashboard copied to their runs as the workbench.review tag."""
    from workbench.study.review import Links, annotate_root

    root = Path(args.root)
    if not (root / "optuna.db").is_file():
        raise FileNotFoundError(f"--root: no optuna.db in {root.resolve()}; run a study first")
    done = annotate_root(root, Links(args.mlflow_url, args.dashboard_url))
    for name, reviewed in done.items():
        print(
            f"{name}: {reviewed.notes_written} notes written, {reviewed.figures_uploaded} "
            f"figures uploaded, {reviewed.reviews_synced} reviewer notes copied to MLflow"
        )
    return 0


def _compress(args: argparse.Namespace) -> int:
    from workbench.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    from workbench.compress.pipeline import compress_best

    report = compress_best(
        spec, finetune_epochs=args.finetune_epochs, distill_epochs=args.distill_epochs
    )
    print(
        f"{'variant':24s} {'test acc':>9s} {'Δ points':>9s} {'params':>9s} {'size KiB':>9s} "
        f"{'×smaller':>9s} {'ms @1':>7s} {'ms @64':>7s}"
    )
    for row in report.rows():
        print(
            f"{row['name']:24s} {row['accuracy']:9.4f} {row['accuracy_change_points']:+9.1f} "
            f"{row['nonzero_parameters']:9d} {row['size_bytes'] / 1024:9.0f} "
            f"{row['size_ratio']:9.2f} {row['latency_ms_batch1']:7.2f} "
            f"{row['latency_ms_batch64']:7.2f}"
        )
    print("logged as child runs of the best trial's MLflow run (plot: compression/report.png)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from workbench.spec import load_spec

    spec = load_spec(args.spec, args.overrides)
    from workbench.deploy.export import (
        export_onnx,
        export_torchscript,
        onnx_max_abs_difference,
    )
    from workbench.trained_model import trained

    model = trained(spec)
    network = model.network.eval()
    inputs = model.module.example_input(model.data, 64)
    out = Path(args.out)
    script = export_torchscript(network, inputs[:2], out / f"{spec.name}.pt")
    onnx_path = export_onnx(network, inputs[:2], out / f"{spec.name}.onnx")
    difference = onnx_max_abs_difference(onnx_path, network, inputs)
    print(
        f"TorchScript: {script}\nONNX:        {onnx_path} "
        f"(max |onnxruntime - torch| on 64 test inputs: {difference:.2e})"
    )
    print(f"MLflow model (signature, input example): {model.model_uri}")
    return 0 if difference <= 1e-4 else 1


def _serve(args: argparse.Namespace) -> int:
    from workbench.deploy.serve import serve_command, serve_environment
    from workbench.trained_model import trained

    root = Path(args.root).resolve()
    model = trained(args.model_uri, root=root)  # a name the store does not hold fails here
    # A registry URI is served as given, so the server follows its alias; others by model id.
    uri = args.model_uri if args.model_uri.startswith("models:/") else model.mlflow_model()
    record = None
    if args.record is not None:
        from workbench.monitor.monitor import recordings_of

        record = Path(args.record) if args.record else recordings_of(root, model.run_id)
    policy = model.spec.tracking.data_policy  # the model's study's policy holds for its inputs
    command = serve_command(uri, args.host, args.port, record, args.max_body_mb, policy)
    print(f"serving {uri} at http://{args.host}:{args.port}/invocations (Ctrl-C stops)")
    if record is not None:
        print(
            f"recording answered requests under {record} (data policy {policy}; "
            "`workbench monitor` reads them)"
        )
    server = subprocess.Popen(command, env=serve_environment(model.store.tracking_uri))
    try:
        return server.wait()
    except KeyboardInterrupt:
        return _let_server_finish(server)


def _let_server_finish(server: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """After Ctrl-C: give the server up to ``timeout_s`` to answer the requests in hand and
    flush its recording. A terminal's Ctrl-C reached it too; SIGTERM covers an interrupt that
    was ours alone (a second SIGINT would make uvicorn quit at once). A second Ctrl-C leaves it
    3 s to quit (its recorder still flushes); a server that outlasts either is killed, said, and
    the exit status is 1."""
    import signal

    try:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=timeout_s)
        return 0
    except subprocess.TimeoutExpired:
        why = f"still running {timeout_s:.0f} s after Ctrl-C"
    except KeyboardInterrupt:
        try:
            server.wait(timeout=3)
            return 0
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            why = "a second Ctrl-C"
    server.kill()
    server.wait()
    print(
        f"workbench: the server was killed ({why}); requests it was answering and its last "
        "recorded lines may be lost",
        file=sys.stderr,
    )
    return 1


def _attack(args: argparse.Namespace) -> int:
    import dataclasses

    from workbench.spec import SpecError
    from workbench.trained_model import trained

    model = trained(args.source, root=Path(args.root).resolve())
    changes = {}
    try:
        if args.attacks is not None:
            changes["attacks"] = [a.strip() for a in args.attacks.split(",") if a.strip()]
        if args.epsilons is not None:
            changes["epsilons"] = [float(e) for e in args.epsilons.split(",") if e.strip()]
    except ValueError as exc:
        raise SpecError(f"--epsilons: {exc}") from None
    for flag, field_name in (
        ("steps", "pgd_steps"),
        ("restarts", "pgd_restarts"),
        ("n", "n_examples"),
    ):
        if getattr(args, flag) is not None:
            changes[field_name] = getattr(args, flag)
    robustness = dataclasses.replace(model.spec.robustness, **changes)
    robustness.check()  # a bad ε or attack is named before any work
    from workbench.study.objective import attack_report, log_robustness

    report = attack_report(model.network, model.data, robustness)
    print(report.table())
    if model.run_id is not None:
        log_robustness(model.store, model.run_id, report)
        print(f"logged to run {model.run_id} (robust/* metrics, robustness/ artifacts)")
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from workbench.monitor.monitor import monitor, recordings_of
    from workbench.trained_model import trained

    root = Path(args.root).resolve()
    status = 0
    if args.load:
        from workbench.monitor.monitor import load_check

        report, run_id = load_check(args.model_uri, root, args.clients, args.seconds)
        print(report.table())
        print(f"load test logged in run {run_id}")
        status = int(report.errors > 0)
        recorded = recordings_of(root, trained(args.model_uri, root=root).run_id)
        if args.inputs is None and not recorded.is_dir():
            return status  # nothing recorded to test for drift
    found = monitor(args.model_uri, args.inputs, root, args.window, args.alpha, args.permutations)
    print(found.table())
    verdict = "DRIFT in the newest window" if found.drifted else "no drift in the newest window"
    print(f"{verdict}; monitoring run {found.run_id}, report {found.report}")
    return status


def _predict(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from workbench.deploy.serve import PredictionError, predict

    path = Path(args.inputs)
    if not path.is_file():
        raise FileNotFoundError(f"inputs: file not found: {path}")
    inputs = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(path.read_text()))
    try:
        outputs = predict(args.url, inputs.astype(np.float32))
    except PredictionError as error:
        print(f"workbench: the server refused the request: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # refused, unknown host, timed out (urllib's URLError is an OSError)
        reason = getattr(error, "reason", None) or error
        print(
            f"workbench: cannot reach a model server at {args.url}: {reason}; "
            "is `workbench serve` running there?",
            file=sys.stderr,
        )
        return 1
    print(json.dumps({"predictions": outputs.tolist(), "classes": outputs.argmax(-1).tolist()}))
    return 0


def entry() -> None:
    """The ``workbench`` command: ``main``, then leave without Python's interpreter teardown
    (``workers.leave_now``: about 3 s at a study's end). An exception leaves the usual way,
    with its traceback."""
    from workbench.study.workers import leave_now

    leave_now(main())


if __name__ == "__main__":
    entry()
