"""``make lab``: JupyterLab opens a chapter's MyST source as a notebook (jupytext) and runs it, offline.

The server is started as ``overparam.book.lab`` starts it for ``make lab`` (the repository's lab settings,
``lib/`` on the kernel's path), on 127.0.0.1, a free port and a token, serving a temporary copy of one
chapter, with Jupyter's user config, data, runtime, settings and workspace folders in a temporary folder.
Headless Chromium opens the chapter from the file browser, sets ``scale = "smoke"`` in the parameters
cell and runs it and the cells after it with Shift+Enter, as a reader does.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import jupytext
import pytest

from overparam.book.lab import lab_command, lab_environment

from _support import REPO, assert_local

STEM = "05_kernel_spectra"  # its first cells (imports, scales, two SymPy derivations) run in about two seconds
CODE_CELLS = 3  # run the parameters cell and the code cells after it up to this many in all
TIMEOUT_MS = 45_000


def test_lab_environment_puts_the_repository_first():
    env = lab_environment(REPO, {"PYTHONPATH": "/elsewhere", "HOME": "/home/reader"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO / "lib"), "/elsewhere"]
    assert env["JUPYTER_CONFIG_PATH"] == str(REPO / "book" / "jupyter") and env["HOME"] == "/home/reader"
    overrides = json.loads((REPO / "book" / "jupyter" / "labconfig" / "default_setting_overrides.json").read_text())
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["markdown"] == "Jupytext Notebook"


def test_lab_command_listens_on_localhost_and_keeps_checkpoints_together():
    cmd = lab_command(Path("/repo"), Path("/repo/_build/lab/checkpoints"), port=8890, token="t0k", open_browser=False)
    assert cmd[1:3] == ["-m", "jupyterlab"]
    for arg in ("--ServerApp.root_dir=/repo", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=8890",
                "--ServerApp.port_retries=0", "--IdentityProvider.token=t0k", "--ServerApp.open_browser=False",
                "--FileCheckpoints.checkpoint_dir=/repo/_build/lab/checkpoints"):
        assert arg in cmd
    assert not [a for a in lab_command(Path("/repo"), Path("/c")) if a.startswith(("--ServerApp.port", "--Identity"))]
    with pytest.raises(ValueError, match="checkpoints must be an absolute path"):
        lab_command(Path("/repo"), Path("_build/lab/checkpoints"))


def test_make_lab_runs_the_cli(monkeypatch):
    import overparam.book.lab as lab_module
    from overparam.book.cli import main

    calls = []
    monkeypatch.setattr(lab_module, "run_lab", lambda repo, **kw: calls.append((repo, kw)))
    assert main(["lab", "--port", "8890", "--no-browser"]) == 0
    assert calls == [(REPO, dict(port=8890, open_browser=False))]
    assert "-m overparam lab" in (REPO / "Makefile").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path, n=3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


@pytest.fixture
def lab(tmp_path):
    """(url, token, root, log): a JupyterLab server on a copy of one chapter; shut down through its API."""
    root = tmp_path / "repo"
    (root / "chapters").mkdir(parents=True)
    shutil.copyfile(REPO / "chapters" / f"{STEM}.md", root / "chapters" / f"{STEM}.md")
    home = tmp_path / "jupyter"
    private = dict(JUPYTER_CONFIG_DIR="config", JUPYTER_DATA_DIR="data", JUPYTER_RUNTIME_DIR="runtime",
                   JUPYTERLAB_SETTINGS_DIR="settings", JUPYTERLAB_WORKSPACES_DIR="workspaces", IPYTHONDIR="ipython")
    env = lab_environment(REPO, {**os.environ, **{k: str(home / v) for k, v in private.items()}})
    port, token = _free_port(), secrets.token_hex(16)
    (tmp_path / "checkpoints").mkdir()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(lab_command(root, tmp_path / "checkpoints", port=port, token=token, open_browser=False),
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{_tail(log)}"
                assert time.monotonic() < deadline, f"the server did not answer in 30 s:\n{_tail(log)}"
                time.sleep(0.2)
        yield url, token, root, log
    finally:
        if proc.poll() is None:
            try:
                urllib.request.urlopen(urllib.request.Request(
                    f"{url}/api/shutdown", method="POST", headers={"Authorization": f"token {token}"}), timeout=10)
                rc = proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
                pytest.fail(f"the server did not shut down through /api/shutdown:\n{_tail(log)}")
            assert rc == 0, f"the server exited with {rc}:\n{_tail(log)}"
    assert not list(root.rglob(".ipynb_checkpoints")), "checkpoints were written beside the chapter"
    assert not list(root.rglob("*.ipynb")), "a jupytext paired notebook was written"


def _cells_to_run(source):
    """(index of the parameters cell, index of the last cell to run, its source) in the notebook jupytext reads."""
    cells = jupytext.read(source).cells
    first = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    code = [i for i, c in enumerate(cells) if c.cell_type == "code" and i >= first]
    return first, code[CODE_CELLS - 1], cells[first].source


@pytest.mark.slow
@pytest.mark.browser
def test_lab_runs_a_chapter_at_smoke_offline(browser, lab):
    url, token, root, log = lab
    before = sorted(p.name for p in (REPO / "chapters").iterdir())
    first, last, params = _cells_to_run(root / "chapters" / f"{STEM}.md")
    smoke = re.sub(r'^scale = "\w+"', 'scale = "smoke"', params, flags=re.M)
    assert smoke != params, f"the parameters cell does not set scale:\n{params}"

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("websocket", lambda ws: requests.append(ws.url))
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{url}/lab?token={token}")
    # the reader's way in: the file browser, then a double click opens the .md as a notebook
    page.locator(".jp-DirListing-item", has_text="chapters").dblclick()
    page.locator(".jp-DirListing-item", has_text=f"{STEM}.md").dblclick()
    cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
    cells.nth(first).wait_for()
    # cells run before the kernel is connected are skipped: wait for the status bar's "<kernel> | Idle"
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for()
    assert cells.nth(first).locator(".cm-content").inner_text().strip() == params.strip()

    cells.nth(first).locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(smoke)
    for _ in range(last - first + 1):
        page.keyboard.press("Shift+Enter")
    prompts = [cells.nth(i).locator(".jp-InputPrompt") for i in range(first, last + 1)]
    try:
        page.wait_for_function("el => /^\\[\\d+\\]:$/.test(el.innerText.trim())", arg=prompts[-1].element_handle(),
                               timeout=TIMEOUT_MS)
    except Exception:
        pytest.fail(f"the cells did not finish running; server log:\n{_tail(log)}")
    ran = [p.inner_text().strip() for p in prompts if p.count() and p.is_visible()]
    ran = [int(m[1]) for m in map(re.compile(r"^\[(\d+)\]:$").match, ran) if m]
    assert ran == list(range(1, CODE_CELLS + 1)), f"execution counts {ran}: each cell ran once, in order"
    errors = page.locator(".jp-NotebookPanel .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert not [e for e in errors.all_inner_texts() if "Error" in e], "a cell raised"
    derivation = cells.nth(last)
    assert derivation.locator(".jp-OutputArea-output").count() >= 1, "the derivation cell shows no output"
    assert derivation.locator("mjx-container").count() >= 1, "its LaTeX output was not typeset"

    # the chapter's own code saw the new scale: ask its claim recorder in a new cell
    page.keyboard.press("Escape")
    page.keyboard.press("a")  # insert above the cell after the last one run
    page.keyboard.press("Enter")
    page.keyboard.insert_text('import sys; print(claims.scale, sys.modules["overparam"].__file__)')
    page.keyboard.press("Shift+Enter")
    probe = cells.nth(last + 1).locator(".jp-OutputArea-output")
    probe.wait_for()
    scale, package = probe.inner_text().split()
    assert scale == "smoke", f"the chapter ran at {scale!r}"
    assert package == str(REPO / "lib" / "overparam" / "__init__.py"), f"overparam imported from {package}"

    assert_local(requests)
    page.close()
    assert sorted(p.name for p in (REPO / "chapters").iterdir()) == before, "files appeared in chapters/"
    assert (root / "chapters" / f"{STEM}.md").read_text() == (REPO / "chapters" / f"{STEM}.md").read_text(), \
        "the chapter was saved"
