"""Benchmark 12: a whole study's wall time, one commit of the workbench against another.

Each variant runs ``workbench study SPEC --trials N`` (default: the breast-cancer MLP, 50 trials)
as a user would, in a fresh store, with the code of a git commit checked out in a temporary
worktree (``PYTHONPATH`` points at it; the same virtual environment for all). Variants run back
to back, interleaved pair by pair in alternating order (ABBA...), so slow drift in the machine's
load falls on both. Wall time and the CPU time of the run (its processes' user + system) are
printed with the load average around each run, the outcome (complete / pruned trials and the
champion's test accuracy: the same study should end alike), what the champion's MLflow run
holds (artifacts and metrics: any a variant lacks against the first is listed), and the ratio of
median wall times of each variant to the first.

    python bench/study_wall_time.py [--variant before=50959c3 --variant after=HEAD
                                     --variant "after-2-workers=HEAD --workers 2"]
                                    [--pairs 1] [--trials 50] [--spec experiments/x.yaml]

A variant is ``NAME=COMMIT`` followed by extra ``workbench study`` arguments. The default
compares the commit before issue 25's work (50959c3) with HEAD.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = ["before=50959c3", "after=HEAD"]


@dataclass
class Variant:
    name: str
    commit: str
    extra: list[str]
    checkout: Path | None = None


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    load: tuple[float, float]
    outcome: str
    champion: set[str]
    """The champion run's artifact paths and metric names (``metric:NAME``)."""


def parse_variant(text: str) -> Variant:
    first, *extra = shlex.split(text)
    name, _, commit = first.partition("=")
    if not name or not commit:
        raise SystemExit(f"--variant {text!r}: expected NAME=COMMIT [workbench study arguments]")
    return Variant(name, commit, extra)


def run_once(variant: Variant, spec: str, trials: int, folder: Path) -> Timing:
    """One study in a fresh store under ``folder``, with the variant's code."""
    store = folder / "store"
    command = [
        sys.executable, "-m", "workbench.cli", "study", str(variant.checkout / spec),
        "--trials", str(trials), "--set", f"tracking.root={store}", *variant.extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(variant.checkout)}
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"{variant.name}: exit {done.returncode}\n{done.stderr[-3000:]}")
    outcome = outcome_of(done.stdout)
    return Timing(wall, cpu, (load_before, os.getloadavg()[0]), outcome, champion_run(store))


def champion_run(store: Path) -> set[str]:
    """What the MLflow run behind the ``@champion`` alias holds: artifact paths, metric names."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    (model,) = client.search_registered_models()
    run_id = client.get_model_version_by_alias(model.name, "champion").run_id
    found, folders = set(), [None]
    while folders:
        for entry in client.list_artifacts(run_id, folders.pop()):
            (folders.append if entry.is_dir else found.add)(entry.path)
    return found | {f"metric:{name}" for name in client.get_run(run_id).data.metrics}


def outcome_of(stdout: str) -> str:
    """'31 complete / 19 pruned, test/acc 0.9561' from the study's closing lines."""
    counts = re.search(r"(\d+) complete, (\d+) pruned", stdout)
    accuracy = re.search(r"best test metrics: .*?test/acc = ([0-9.]+)", stdout)
    parts = [f"{counts[1]} complete / {counts[2]} pruned" if counts else "?"]
    if accuracy:
        parts.append(f"test/acc {accuracy[1]}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", action="append", dest="variants")
    parser.add_argument("--pairs", type=int, default=1, help="runs of each variant")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--spec", default="experiments/breast_cancer_mlp.yaml")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants or DEFAULT_VARIANTS]

    timings: dict[str, list[Timing]] = {v.name: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="study-wall-time-") as tmp:
        root = Path(tmp)
        try:
            for variant in variants:
                variant.checkout = root / f"code-{variant.name}"
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet",
                     str(variant.checkout), variant.commit],
                    check=True,
                )  # fmt: skip
            for pair in range(args.pairs):
                order = variants if pair % 2 == 0 else variants[::-1]
                for variant in order:
                    folder = root / f"run-{variant.name}-{pair}"
                    folder.mkdir()
                    timing = run_once(variant, args.spec, args.trials, folder)
                    timings[variant.name].append(timing)
                    print(
                        f"{variant.name:>16} run {pair}: {timing.wall_s:7.1f} s wall, "
                        f"{timing.cpu_s:7.1f} s CPU, load {timing.load[0]:.1f} -> "
                        f"{timing.load[1]:.1f}; {timing.outcome}; champion run: "
                        f"{sum(not c.startswith('metric:') for c in timing.champion)} "
                        f"artifacts, {sum(c.startswith('metric:') for c in timing.champion)} "
                        "metrics",
                        flush=True,
                    )
                    missing = timings[variants[0].name][0].champion - timing.champion
                    if missing:
                        print(f"{'':>16} lacks against {variants[0].name}: {sorted(missing)}")
        finally:
            for variant in variants:
                if variant.checkout is not None and variant.checkout.exists():
                    subprocess.run(
                        ["git", "-C", str(REPO), "worktree", "remove", "--force",
                         str(variant.checkout)],
                        check=False,
                    )  # fmt: skip

    first = statistics.median(t.wall_s for t in timings[variants[0].name])
    print(f"\n{args.trials}-trial study, {args.spec}, median over {args.pairs} run(s):")
    print(f"{'variant':>16} {'commit':>10} {'wall s':>8} {'CPU s':>8} {'ratio':>6}  arguments")
    for variant in variants:
        wall = statistics.median(t.wall_s for t in timings[variant.name])
        cpu = statistics.median(t.cpu_s for t in timings[variant.name])
        print(
            f"{variant.name:>16} {variant.commit:>10} {wall:8.1f} {cpu:8.1f} "
            f"{wall / first:6.2f}  {' '.join(variant.extra)}"
        )


if __name__ == "__main__":
    main()
