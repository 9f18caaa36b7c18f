"""Downloadable notebooks: the clean copy has no outputs and installs the pinned requirements first."""

import nbformat

from overparam.book.downloads import add_downloads, binder_url, clean_notebook, launch_notebook


def _executed():
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell("scale = 'ci'")
    injected.metadata["tags"] = ["injected-parameters", "remove-cell"]
    code = nbformat.v4.new_code_cell("print(1)")
    code.outputs = [nbformat.v4.new_output("stream", text="1\n")]
    code.execution_count = 3
    code.metadata["papermill"] = {"duration": 1.0}
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), injected, code]
    return nb


def test_clean_notebook_strips_outputs_and_injected_cell():
    clean = clean_notebook(_executed())
    assert len(clean.cells) == 2
    code = clean.cells[1]
    assert code.outputs == [] and code.execution_count is None and "papermill" not in code.metadata


def test_launch_notebook_installs_pinned_requirements_first():
    nb = launch_notebook(_executed(), "https://github.com/org/book", "abc123")
    first = nb.cells[0].source
    assert "requirements.txt" in first and "-c https://raw.githubusercontent.com/org/book/abc123/constraints.txt" in first
    assert "git+https://github.com/org/book@abc123" in first


def test_add_downloads_writes_clean_copy_and_banner(tmp_path):
    path = tmp_path / "01_x.ipynb"
    nbformat.write(_executed(), path)
    add_downloads(path, "https://github.com/org/book", "abc123")
    page = nbformat.read(path, as_version=4)
    assert "{download}`executed notebook <01_x.ipynb>`" in page.cells[1].source
    assert binder_url("https://github.com/org/book", "abc123", "chapters/01_x.md") in page.cells[1].source
    assert (tmp_path / "downloads" / "01_x.clean.ipynb").exists()
    assert page.cells[3].outputs, "the executed page keeps its outputs"
