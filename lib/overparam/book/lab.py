"""JupyterLab on the chapter sources: ``make lab`` (``python -m overparam lab``).

``chapters/NN_topic.md`` open as notebooks: jupytext's contents manager reads and writes the MyST
Markdown, and ``book/jupyter/labconfig/default_setting_overrides.json`` makes "Jupytext Notebook" the
default viewer of Markdown files (the folder goes first on ``JUPYTER_CONFIG_PATH``; the reader's own
Jupyter settings still win over it). Text cells show MyST directives (theorems, citations) as source: jupyterlab-myst does not support this JupyterLab.
The kernel imports ``overparam`` from ``<repo>/lib`` (first on ``PYTHONPATH``), installed or not.

What the server writes: checkpoints go to one folder (``_build/lab/checkpoints``) instead of an
``.ipynb_checkpoints`` folder beside each chapter, and the chapters declare no jupytext pairing, so
saving a chapter rewrites its ``.md`` and nothing else. The same settings turn off JupyterLab's news
feed and update check (each a request to a website); the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

LAB_CONFIG = Path("book") / "jupyter"  # a Jupyter config folder: labconfig/default_setting_overrides.json
CHECKPOINTS = Path("_build") / "lab" / "checkpoints"


def _prepend(path: Path, current: str | None) -> str:
    return os.pathsep.join([str(path), *([current] if current else [])])


def lab_environment(repo: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``<repo>/lib`` first on ``PYTHONPATH`` and
    ``<repo>/book/jupyter`` first on ``JUPYTER_CONFIG_PATH``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = _prepend(repo / "lib", env.get("PYTHONPATH"))
    env["JUPYTER_CONFIG_PATH"] = _prepend(repo / LAB_CONFIG, env.get("JUPYTER_CONFIG_PATH"))
    return env


def lab_command(root: Path, checkpoints: Path, *, port: int | None = None, token: str | None = None,
                open_browser: bool = True) -> list[str]:
    """The ``jupyter lab`` command line serving the folder ``root`` on 127.0.0.1.

    ``checkpoints``: an absolute folder for every checkpoint. ``port``: None lets JupyterLab pick 8888 or
    the next free port; a given port is used or the server fails. ``token``: None lets JupyterLab make one
    and print the URL with it. Run as root, the server is allowed to (it refuses otherwise). Run the
    command with ``lab_environment``.
    """
    if not checkpoints.is_absolute():
        raise ValueError(f"checkpoints must be an absolute path (else it is taken per folder), got {checkpoints}")
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1",
           f"--FileCheckpoints.checkpoint_dir={checkpoints}", f"--ServerApp.open_browser={open_browser}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers, CI under sudo: Jupyter refuses root otherwise
        cmd.append("--ServerApp.allow_root=True")
    if port is not None:
        cmd += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if token is not None:
        cmd.append(f"--IdentityProvider.token={token}")
    return cmd


def run_lab(repo: Path, *, port: int | None = None, open_browser: bool = True) -> None:
    """Replace this process with JupyterLab serving the repository ``repo`` (``make lab``)."""
    checkpoints = (repo / CHECKPOINTS).resolve()
    checkpoints.mkdir(parents=True, exist_ok=True)
    cmd = lab_command(repo.resolve(), checkpoints, port=port, open_browser=open_browser)
    os.execve(cmd[0], cmd, lab_environment(repo.resolve()))
