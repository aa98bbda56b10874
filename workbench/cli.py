"""The ``workbench`` command: ``study`` runs or resumes a spec's study; ``ui`` serves both UIs.

Arguments are parsed before anything heavy is imported, so ``workbench --help`` answers at once and
a bad spec fails in about a second.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    study = commands.add_parser("study", help="run (or resume) the Optuna study a spec defines")
    study.add_argument("spec", help="experiment spec, e.g. experiments/mnist_cnn.yaml")
    study.add_argument(
        "--trials", type=int, help="total finished trials to reach (default: the spec's)"
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
    ui.add_argument("--mlflow-port", type=int, default=5000)
    ui.add_argument("--dashboard-port", type=int, default=8080)

    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            return _study(args)
        return _ui(args)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        print(f"workbench: error: {exc}", file=sys.stderr)
        return 2


def _study(args: argparse.Namespace) -> int:
    from workbench.spec import load_spec

    spec = load_spec(args.spec, args.overrides)  # validated before any import of Lightning work
    from workbench.study import run_study

    try:
        result = run_study(spec, trials=args.trials)
    except KeyboardInterrupt:
        return 130
    root = Path(spec.tracking.root)
    print()
    print(
        f"study {result.study_name!r}: {result.n_complete} complete, {result.n_pruned} pruned, "
        f"{result.n_failed} failed"
    )
    if result.best_trial is not None:
        print(
            f"best trial {result.best_trial}: {spec.study.metric} = {result.best_value:.4f}, "
            f"params {result.best_params}"
        )
        print(
            "best test metrics: "
            + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(result.test_metrics.items()))
        )
        print(
            f"registered model: models:/{result.registered_model}@champion "
            f"(version {result.registered_version})"
        )
    print(f"MLflow UI:        mlflow ui --backend-store-uri {result.tracking_uri} --host 127.0.0.1")
    print(f"optuna-dashboard: optuna-dashboard {result.storage_url} --host 127.0.0.1")
    print(f"both at once:     workbench ui --root {root}")
    return 0


def _ui(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    if not (root / "mlflow.db").is_file() and not (root / "optuna.db").is_file():
        raise FileNotFoundError(f"--root: no mlflow.db or optuna.db in {root}; run a study first")
    servers = ui_commands(root, args.host, args.mlflow_port, args.dashboard_port)
    processes = [subprocess.Popen(command) for command in servers.values()]
    print(f"MLflow UI:        http://{args.host}:{args.mlflow_port}")
    print(f"optuna-dashboard: http://{args.host}:{args.dashboard_port}")
    print("Ctrl-C stops both.")
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
