"""Execute the notebooks at full size, in place, with their outputs kept for readers.

    python scripts/run_notebooks.py [notebooks/01_quickstart.ipynb ...]   # default: all

Each notebook runs with papermill in ``notebooks/`` with its own parameters (full size, against
the repository's ``mlruns/``), then its volatile metadata goes (papermill's timings, execution
timestamps, widget views whose state is not saved) and it replaces the committed file. A
notebook that fails is left as it was, and the error is printed; the others still run. The wall
time of each run is printed: the notebooks' opening cells quote it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET = "application/vnd.jupyter.widget-view+json"


def strip(notebook: dict) -> dict:
    """``notebook`` without what changes from run to run but is no result."""
    notebook["metadata"].pop("papermill", None)
    notebook["metadata"].pop("widgets", None)
    for cell in notebook["cells"]:
        cell["metadata"].pop("papermill", None)
        cell["metadata"].pop("execution", None)
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data is not None and WIDGET in data:
                data.pop(WIDGET)
                if set(data) <= {"text/plain"}:
                    continue  # a progress widget's placeholder text: nothing to read
            outputs.append(output)
        if cell["cell_type"] == "code":
            cell["outputs"] = outputs
    return notebook


def run(path: Path) -> float:
    """Execute ``path`` in place (stripped); its wall time in seconds."""
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / path.name
        start = time.monotonic()
        papermill.execute_notebook(
            str(path), str(out), cwd=str(path.parent), kernel_name="python3", progress_bar=False
        )
        seconds = time.monotonic() - start
        notebook = strip(json.loads(out.read_text()))
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return seconds


def main(paths: list[str]) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    chosen = [Path(p).resolve() for p in paths] or sorted(NOTEBOOKS.glob("*.ipynb"))
    failed = []
    for path in chosen:
        print(f"{path.name}: running ...", flush=True)
        try:
            seconds = run(path)
        except Exception as exc:  # noqa: BLE001 — report it, keep the committed notebook
            print(f"{path.name}: FAILED, left as it was: {type(exc).__name__}: {exc}", flush=True)
            failed.append(path.name)
            continue
        print(f"{path.name}: {seconds / 60:.1f} min", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
