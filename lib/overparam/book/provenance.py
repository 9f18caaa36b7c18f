"""Provenance of a run: package versions, device, git commit, time.

Recorded next to every chapter's claims so a number in the book can be traced to
the code and machine that produced it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import os
import platform
import subprocess
from pathlib import Path

# Set by the Ray engine (overparam.book.cluster) for the chapter it executes; see run_context.
RUN_CONTEXT_ENV = {"engine": "OVERPARAM_ENGINE", "ray_job_id": "OVERPARAM_RAY_JOB_ID",
                   "ray_node_id": "OVERPARAM_RAY_NODE_ID", "ray_task_id": "OVERPARAM_RAY_TASK_ID"}
# The commit of the code a worker executes, when its copy of the repository has no .git.
GIT_COMMIT_ENV = "OVERPARAM_GIT_COMMIT"
TRACKED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "sympy", "matplotlib", "scikit-learn")


def repo_root(start: Path | None = None) -> Path:
    """The repository root: the first folder upwards holding ``pyproject.toml`` and ``_toc.yml``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "_toc.yml").exists():
            return folder
    # This module lives at <root>/lib/overparam/book/provenance.py; use that when run from elsewhere.
    return Path(__file__).resolve().parents[3]


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour the numbers depend on."""
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_description() -> dict[str, str]:
    """The JAX backend and device the numbers were computed on."""
    import jax

    dev = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "device_count": str(jax.device_count()),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "x64": str(bool(jax.config.jax_enable_x64)),
    }


def git_commit(root: Path | None = None) -> str:
    """``HEAD`` of the repository (with ``+dirty`` when the tree has changes), or ``unknown``."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    root = root or repo_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "lib", "chapters"],
            cwd=root, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_context() -> dict[str, str]:
    """Where and under which job a run executed: host name, engine (local or ray), Slurm and Ray ids.

    Ids that do not apply are empty strings. Slurm's come from its environment
    (``SLURM_JOB_ID``, ``SLURM_ARRAY_TASK_ID``), Ray's from the engine that ran the chapter.
    """
    out = {"host": platform.node(), "engine": os.environ.get(RUN_CONTEXT_ENV["engine"], "local")}
    out.update({k: os.environ.get(v, "") for k, v in RUN_CONTEXT_ENV.items() if k != "engine"})
    out["slurm_job_id"] = os.environ.get("SLURM_JOB_ID", "")
    out["slurm_array_task_id"] = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    return out


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
