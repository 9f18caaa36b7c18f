"""Per-chapter downloads and launch links for the HTML book.

Each chapter page gets a banner offering the executed notebook (with outputs), a clean
notebook (no outputs) whose first cell installs the project's pinned requirements (for any
hosted notebook service: upload it and run), and a Binder launch link (Binder installs
``requirements.txt`` itself and opens the MyST source as a notebook through jupytext).
"""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import quote

import nbformat

INSTALL_CELL = """# Run this first on a hosted service (Colab, Binder, JupyterHub): installs the book's pinned packages
# and its library `overparam` at the commit that produced the published book.
%pip install -q -r {raw}/requirements.txt -c {raw}/constraints.txt
%pip install -q --no-deps "overparam @ git+{repo}@{commit}"
"""


def clean_notebook(nb):
    """A copy of an executed notebook without outputs, execution counts or papermill's injected cell."""
    nb = copy.deepcopy(nb)
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nb.metadata.pop("papermill", None)
    return nb


def launch_notebook(nb, repo_url: str, commit: str):
    """The clean notebook with a first cell that installs the pinned requirements."""
    nb = clean_notebook(nb)
    raw = repo_url.replace("https://github.com/", "https://raw.githubusercontent.com/").rstrip("/") + f"/{commit}"
    nb.cells.insert(0, nbformat.v4.new_code_cell(INSTALL_CELL.format(raw=raw, repo=repo_url, commit=commit)))
    return nb


def binder_url(repo_url: str, commit: str, source: str) -> str:
    """Binder link opening ``source`` (a path in the repository) in JupyterLab at ``commit``."""
    slug = repo_url.rstrip("/").replace("https://github.com/", "")
    return f"https://mybinder.org/v2/gh/{slug}/{commit}?labpath={quote(source, safe='')}"


def banner(stem: str, repo_url: str, commit: str) -> str:
    """The Markdown cell placed at the top of a chapter page."""
    return (
        ":::{note}\n"
        f"**Run this chapter yourself.** Download the {{download}}`executed notebook <{stem}.ipynb>` "
        f"or the {{download}}`clean notebook <downloads/{stem}.clean.ipynb>` (no outputs; its first cell "
        f"installs the pinned requirements on any hosted service), or "
        f"[launch it on Binder]({binder_url(repo_url, commit, f'chapters/{stem}.md')}). "
        "Set `scale` in the parameters cell (`smoke`, `ci`, `full`) to fit your machine.\n"
        ":::\n"
    )


def add_downloads(staged_notebook: Path, repo_url: str, commit: str) -> None:
    """Write the clean notebook beside a staged executed notebook and put the banner on its page."""
    nb = nbformat.read(staged_notebook, as_version=4)
    folder = staged_notebook.parent / "downloads"
    folder.mkdir(exist_ok=True)
    nbformat.write(launch_notebook(nb, repo_url, commit), folder / f"{staged_notebook.stem}.clean.ipynb")
    first_heading = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), 0)
    nb.cells.insert(first_heading + 1, nbformat.v4.new_markdown_cell(banner(staged_notebook.stem, repo_url, commit)))
    nbformat.write(nb, staged_notebook)
