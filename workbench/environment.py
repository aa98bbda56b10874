"""The environment a run ran in: interpreter, machine, torch's settings, the stack's versions
checked against ``requirements.lock``, and the git commit (with the diff when the tree was dirty).

What cannot change while a process lives (versions, the lock, the CPU, the commit of the code it
imported) is read once per process, so a study of many trials pays for it once; what can change
(torch's thread count, its deterministic mode) is read on every ``capture``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent
# The packages whose versions decide what a run computes; any that is not installed is left out.
STACK = (
    "torch",
    "lightning",
    "torchmetrics",
    "numpy",
    "pandas",
    "scikit-learn",
    "scipy",
    "mlflow",
    "optuna",
    "optuna-integration",
    "shap",
    "lime",
    "onnx",
    "onnxruntime",
    "transformers",
)
DIFF_LIMIT_BYTES = 1_000_000
UNTRACKED_FILE_LIMIT_BYTES = 100_000
GIT_TIMEOUT_S = 10


def capture(
    deterministic: bool | None = None,
    repo: str | Path | None = None,
    lock: str | Path | None = None,
) -> dict[str, Any]:
    """A JSON-able record of this process's environment.

    ``deterministic`` is what the run asked of its Trainer; ``repo`` (default: the checkout this
    package was imported from) and ``lock`` (default: ``requirements.lock`` at its root) are for
    tests. Nothing here fails a run: what cannot be read is recorded as ``None``.
    """
    import torch

    root = Path(repo).resolve() if repo is not None else package_repo()
    if lock is None:
        lock = (root or PACKAGE.parent) / "requirements.lock"
    return {
        **_machine(),
        "torch_threads": torch.get_num_threads(),
        "deterministic": deterministic,
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "packages": dict(stack_versions()),
        "lock": dict(lock_report(Path(lock).resolve())),
        "git": dict(git_state(root)) if root is not None else dict(NO_GIT),
    }


@functools.cache
def _machine() -> dict[str, Any]:
    import torch

    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "cuda": torch.version.cuda,
    }


def cpu_model() -> str | None:
    """The CPU's model name (Linux's /proc/cpuinfo, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def installed_versions() -> dict[str, str]:
    """Every installed distribution's version, by normalised name."""
    versions = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(_normalise(name), dist.version)
    return versions


def stack_versions() -> dict[str, str]:
    """The installed versions of the packages in ``STACK``."""
    installed = installed_versions()
    return {name: installed[name] for name in STACK if name in installed}


@functools.cache
def lock_report(lock: Path) -> dict[str, Any]:
    """The lock file's sha256 and the packages whose installed version is not the locked one."""
    try:
        text = lock.read_bytes()
    except OSError:
        return {"path": str(lock), "found": False, "sha256": None, "differs": {}}
    installed = installed_versions()
    differs = {}
    for line in text.decode(errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, locked = (part.strip() for part in line.split("==", 1))
        name = _normalise(name.split("[", 1)[0])
        have = installed.get(name)
        # As pip reads ``torch==2.13.0``: a local label (2.13.0+cpu) still matches.
        if have is None or (have != locked and have.split("+", 1)[0] != locked):
            differs[name] = {"locked": locked, "installed": have}
    return {
        "path": str(lock),
        "found": True,
        "sha256": hashlib.sha256(text).hexdigest(),
        "differs": differs,
    }


NO_GIT = {"commit": None, "dirty": None, "diff": None, "untracked": []}


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    # No optional locks: a status must not take index.lock from a commit running beside it.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    return subprocess.run(
        ["git", *args],
        cwd=root,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=GIT_TIMEOUT_S,
        env=env,
    )


@functools.cache
def package_repo() -> Path | None:
    """The git checkout this package was imported from; None for an installed copy (a checkout
    around site-packages is not the package's own)."""
    try:
        found = _git(PACKAGE, "rev-parse", "--show-toplevel")
        if found.returncode != 0:
            return None
        root = Path(found.stdout.strip()).resolve()
        tracked = _git(root, "ls-files", "--", str(PACKAGE / "__init__.py"))
    except (OSError, subprocess.SubprocessError):
        return None
    return root if tracked.returncode == 0 and tracked.stdout.strip() else None


@functools.cache
def git_state(root: Path) -> dict[str, Any]:
    """The commit of ``root``, whether its tree differs from it (untracked files count), and the
    difference as a patch (``git diff HEAD`` plus the untracked files), cut at
    ``DIFF_LIMIT_BYTES``."""
    try:
        head = _git(root, "rev-parse", "HEAD")
        if head.returncode != 0:
            return dict(NO_GIT)
        status = _git(root, "status", "--porcelain", "-z", "--untracked-files=all")
        if status.returncode != 0:
            return {**NO_GIT, "commit": head.stdout.strip()}
        lines = [entry for entry in status.stdout.split("\0") if entry]
        untracked = [entry[3:] for entry in lines if entry.startswith("?? ")]
        diff = _git(root, "diff", "HEAD", "--no-color").stdout if lines else ""
        for path in untracked:  # new files as patches, until the limit is reached
            if len(diff) > DIFF_LIMIT_BYTES:
                break
            diff += _new_file_patch(root, path)
    except (OSError, subprocess.SubprocessError):
        return dict(NO_GIT)
    truncated = len(diff.encode()) > DIFF_LIMIT_BYTES
    if truncated:
        diff = diff.encode()[:DIFF_LIMIT_BYTES].decode(errors="ignore")
    return {
        "commit": head.stdout.strip(),
        "dirty": bool(lines),
        "diff": diff if lines else None,
        "diff_truncated": truncated,
        "untracked": untracked[:200],
    }


def _new_file_patch(root: Path, path: str) -> str:
    """An untracked file as a patch that creates it (large or binary files named only)."""
    file = root / path
    try:
        if file.stat().st_size > UNTRACKED_FILE_LIMIT_BYTES:
            return f"# untracked, {file.stat().st_size} bytes, not included: {path}\n"
        text = file.read_bytes().decode()
    except (OSError, UnicodeDecodeError):
        return f"# untracked, not text, not included: {path}\n"
    lines = text.splitlines()
    patch = f"diff --git a/{path} b/{path}\nnew file mode 100644\n"
    if lines:
        patch += f"--- /dev/null\n+++ b/{path}\n@@ -0,0 +1,{len(lines)} @@\n"
        patch += "".join(f"+{line}\n" for line in lines)
        if not text.endswith("\n"):
            patch += "\\ No newline at end of file\n"
    return patch


# What two runs' environments are compared on, in the order a cause is most likely.
COMPARED = (
    "python", "platform", "machine", "cpu", "cpu_count", "gpus", "cuda", "torch_threads",
    "deterministic", "torch_deterministic_algorithms", "cudnn_benchmark",
)  # fmt: skip


def differences(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """Every recorded difference between two ``environment.json`` records, one line each
    (``what: before → after``): the git commit and dirty flag, each package version, the
    machine and torch's settings."""
    if not before or not after:
        missing = "the original run" if not before else "the new run"
        return [f"environment: {missing} recorded none"]
    lines = []
    old_git, new_git = before.get("git") or {}, after.get("git") or {}
    for key in ("commit", "dirty"):
        if old_git.get(key) != new_git.get(key):
            lines.append(f"git {key}: {old_git.get(key)} → {new_git.get(key)}")
    old_packages, new_packages = before.get("packages") or {}, after.get("packages") or {}
    for name in sorted(set(old_packages) | set(new_packages)):
        if old_packages.get(name) != new_packages.get(name):
            lines.append(
                f"package {name}: {old_packages.get(name, 'absent')} → "
                f"{new_packages.get(name, 'absent')}"
            )
    for key in COMPARED:
        if before.get(key) != after.get(key):
            lines.append(f"{key}: {before.get(key)} → {after.get(key)}")
    return lines
