"""Benchmark 5: the cost of `import workbench` against `import lightning` alone.

Each import runs in a fresh interpreter, repeated; prints medians and the difference, and checks
that the heavy optional parts (shap, lime, mlflow, optuna's plots) stayed unimported.

    python bench/import_time.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PROBE = (
    "import sys; import {module}; "
    "heavy = [m for m in ('shap', 'lime', 'mlflow', 'optuna.visualization', 'torch', 'lightning') "
    "if m in sys.modules]; print(','.join(heavy))"
)


def time_import(module: str, repeats: int) -> tuple[float, str]:
    seconds, loaded = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module)],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds.append(time.perf_counter() - started)
        loaded = done.stdout.strip()
    return statistics.median(seconds), loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    baseline, _ = time_import("sys", args.repeats)
    rows = [(m, *time_import(m, args.repeats)) for m in ("lightning", "workbench")]
    print(f"{'import':12s} {'median s':>9s} {'minus bare python':>18s}  heavy modules loaded")
    for module, seconds, loaded in rows:
        print(f"{module:12s} {seconds:9.3f} {seconds - baseline:18.3f}  {loaded or '-'}")
    lightning_s, workbench_s = rows[0][1], rows[1][1]
    print(
        f"workbench - lightning = {workbench_s - lightning_s:+.3f} s "
        f"(ratio workbench/lightning {workbench_s / lightning_s:.2f})"
    )


if __name__ == "__main__":
    main()
