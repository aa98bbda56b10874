"""Run every benchmark in turn and print its table (`make bench`).

Results are recorded by hand in docs/benchmarks.md with the machine, the command and the date.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "import_time.py",
    "trial_vs_loop.py",
    "tracking_overhead.py",
    "explain_speed.py",
    "study_efficiency.py",
    "workers.py",
    "fixed_costs.py",
    "study_wall_time.py",  # ~10-30 min: the 50-trial MLP study, before and after issue 25
    "drift_power.py",  # needs the demo's champion: `make demo` first
    "serve_load.py",
    "robustness.py",  # ~25 min: two CNNs over 3 seeds, attacked
    "privacy_utility.py",  # ~30 min: DP-SGD at three ε, 3 seeds, MLP and CNN
]

if __name__ == "__main__":
    failed = 0
    for script in SCRIPTS:
        print(f"\n=== {script} ===", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / script)]).returncode != 0
    sys.exit(1 if failed else 0)
