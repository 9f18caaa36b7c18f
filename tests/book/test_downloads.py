"""Downloadable notebooks: the clean copy has no outputs and installs the pinned requirements first;
the Binder and Colab links point at the repository named in ``_config.yml``."""

import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from overparam.book.downloads import (NOTEBOOKS_BRANCH, add_downloads, binder_url, clean_notebook, colab_url,
                                      install_runtime, launch_notebook)


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


def test_launch_notebook_installs_pinned_runtime_first():
    nb = launch_notebook(_executed(), "https://github.com/org/book", "abc123")
    first = nb.cells[0].source
    assert "requirements-runtime.txt" in first and "https://raw.githubusercontent.com/org/book/abc123" in first
    assert "git+{repo}@{commit}" in first and "'abc123'" in first


def test_add_downloads_writes_clean_copy_and_banner(tmp_path):
    path = tmp_path / "01_x.ipynb"
    nbformat.write(_executed(), path)
    add_downloads(path, "https://github.com/org/book", "abc123")
    page = nbformat.read(path, as_version=4)
    assert "{download}`executed notebook <01_x.ipynb>`" in page.cells[1].source
    assert binder_url("https://github.com/org/book", "abc123", "chapters/01_x.md") in page.cells[1].source
    assert colab_url("https://github.com/org/book", "01_x") in page.cells[1].source
    assert (tmp_path / "downloads" / "01_x.clean.ipynb").exists()
    assert page.cells[3].outputs, "the executed page keeps its outputs"


# ---------------------------------------------------------------- launch links
@pytest.mark.parametrize("repo_url", ["https://github.com/org/book", "https://github.com/org/book/",
                                      "https://github.com/org/book.git"])
def test_launch_urls_name_the_github_repository(repo_url):
    assert colab_url(repo_url, "01_x") == \
        f"https://colab.research.google.com/github/org/book/blob/{NOTEBOOKS_BRANCH}/01_x.clean.ipynb"
    assert colab_url(repo_url, "01_x", branch="gh/nb") == \
        "https://colab.research.google.com/github/org/book/blob/gh%2Fnb/01_x.clean.ipynb"
    assert binder_url(repo_url, "abc123", "chapters/01_x.md") == \
        "https://mybinder.org/v2/gh/org/book/abc123?labpath=chapters%2F01_x.md"


@pytest.mark.parametrize("repo_url", ["https://gitlab.com/org/book", "https://github.com/org",
                                      "https://github.com/org/book/tree/main", "git@github.com:org/book.git"])
def test_launch_urls_refuse_what_colab_and_binder_cannot_open(repo_url):
    with pytest.raises(ValueError, match="repo_url"):
        colab_url(repo_url, "01_x")
    with pytest.raises(ValueError, match="repo_url"):
        binder_url(repo_url, "abc123", "chapters/01_x.md")


def test_staged_chapter_links_to_the_configured_repository(tmp_path):
    """A fork changes ``repository.url``: the staged page's links and the published notebooks follow it."""
    from overparam.book.build import PUBLISHED_NOTEBOOKS, stage_sources
    from overparam.book.downloads import collect_clean_notebooks

    from _support import make_root

    root = make_root(tmp_path, {"01_toy": ""})
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["repository"]["url"] = fork = "https://github.com/someone/fork-of-book"
    (root / "_config.yml").write_text(yaml.safe_dump(config))
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("generated", "_vendor", "*.pdf"))
    runs = tmp_path / "runs"
    (runs / "notebooks").mkdir(parents=True)
    nbformat.write(jupytext.read(root / "chapters" / "01_toy.md"), runs / "notebooks" / "01_toy.ipynb")

    stage = stage_sources(runs, root, tmp_path / "stage")
    page = nbformat.read(stage / "chapters" / "01_toy.ipynb", as_version=4)
    banner = next(c.source for c in page.cells if "Run this chapter yourself" in c.source)
    assert f"]({colab_url(fork, '01_toy')})" in banner
    assert "https://colab.research.google.com/github/someone/fork-of-book/blob/" in banner
    assert "mybinder.org/v2/gh/someone/fork-of-book/" in banner and "overparameterized/" not in banner

    published = collect_clean_notebooks(stage / "chapters", tmp_path / PUBLISHED_NOTEBOOKS, fork, "abc123")
    assert [p.name for p in published] == ["01_toy.clean.ipynb"]
    assert colab_url(fork, "01_toy").endswith("/" + published[0].name)
    first = nbformat.read(published[0], as_version=4).cells[0].source
    assert "raw.githubusercontent.com/someone/fork-of-book/" in first, "the notebook installs from the fork"
    assert f"{fork}/tree/abc123" in (published[0].parent / "README.md").read_text()


def test_publish_workflow_pushes_the_notebooks_before_the_pages():
    """The Colab links resolve once published: the workflow pushes the folder the build collects to the branch
    the links name, and deploys the pages only after that."""
    from overparam.book.build import PUBLISHED_NOTEBOOKS

    jobs = yaml.safe_load((REPO / ".github" / "workflows" / "publish.yml").read_text())["jobs"]
    uploads = [s["with"]["path"] for s in jobs["build"]["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads == [PUBLISHED_NOTEBOOKS.as_posix()]
    push = jobs["notebooks"]["steps"][-1]["run"]
    assert f"git push --force origin HEAD:refs/heads/{NOTEBOOKS_BRANCH}" in push
    assert jobs["notebooks"]["permissions"] == {"contents": "write"}
    assert "notebooks" in jobs["deploy"]["needs"]


# ---------------------------------------------------------------- the install cell of the clean notebook
REPO = Path(__file__).resolve().parents[2]
TOOLCHAIN = ("jupyter-book", "sphinx", "pytest", "playwright", "papermill", "myst-nb")


def _fake_tool(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def _gpu(tmp_path, cuda=12):
    return _fake_tool(tmp_path / "nvidia-smi", f"""if [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"
else echo "| NVIDIA-SMI 570.1   Driver Version: 570.1   CUDA Version: {cuda}.8 |"; fi
""")


def _install(tmp_path, nvidia_smi, fail_cuda=False, python=None, namespace=None):
    """Run install_runtime against the repository's own files with a fake pip; returns (pip calls, files read)."""
    calls, files = [], {}

    def pip(args):
        calls.append(args)
        for flag, name in zip(args, args[1:]):
            if flag in ("-r", "-c"):
                files[Path(name).name] = Path(name).read_text()
        if fail_cuda and any(a.startswith("jax[cuda") for a in args):
            raise RuntimeError("no CUDA wheel for this platform")

    fn = (namespace or {}).get("install_runtime") or install_runtime
    ran = fn(REPO.as_uri(), "https://github.com/org/book", "abc123", run=pip, nvidia_smi=nvidia_smi, python=python)
    assert ran == calls
    return calls, files


def test_install_cell_without_gpu_installs_the_runtime_not_the_toolchain(tmp_path):
    calls, files = _install(tmp_path, str(tmp_path / "absent-nvidia-smi"))
    assert not any(a.startswith("jax[") for call in calls for a in call), "no CUDA JAX without a GPU"
    runtime = files["requirements-runtime.txt"]
    assert "jax==0.10.2" in runtime and "flax==" in runtime
    assert not any(line.startswith(TOOLCHAIN) for line in runtime.splitlines()), "the build toolchain is not installed"
    assert calls[-1] == ["--no-deps", "overparam @ git+https://github.com/org/book@abc123"]


def test_requirements_include_the_runtime_file():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    assert "-r requirements-runtime.txt" in lines
    runtime = [line for line in (REPO / "requirements-runtime.txt").read_text().splitlines() if "==" in line]
    assert not set(runtime) & set(lines), "a runtime pin is repeated in requirements.txt"
    constraints = set((REPO / "constraints.txt").read_text().splitlines())
    assert set(runtime) <= constraints, "every runtime pin is also a constraint"


@pytest.mark.parametrize("cuda, extra", [(12, "cuda12"), (13, "cuda13")])
def test_install_cell_with_gpu_installs_cuda_jax_in_the_same_pip_call(tmp_path, cuda, extra):
    calls, _ = _install(tmp_path, _gpu(tmp_path, cuda))
    first = calls[0]
    assert first[:2] == ["-r", first[1]] and first[-1] == f"jax[{extra}]==0.10.2", first


def test_install_cell_keeps_a_working_gpu_jax_when_cuda_jax_does_not_install(tmp_path):
    python = _fake_tool(tmp_path / "python", "echo gpu\n")  # the runtime's own JAX runs on the GPU
    calls, files = _install(tmp_path, _gpu(tmp_path), fail_cuda=True, python=python)
    assert len(calls) == 3 and calls[1][0] == "-r"
    kept = (files["requirements-no-jax.txt"] + files["constraints-no-jax.txt"]).splitlines()
    assert not [line for line in kept if line.startswith(("jax==", "jaxlib=="))] and "flax==0.12.8" in kept
    assert "kfac-jax==0.0.8" in kept  # a package whose name ends in "jax" keeps its pin
    # with no working GPU JAX to keep, the failure is reported, not hidden
    cpu_python = _fake_tool(tmp_path / "python-cpu", "echo cpu\n")
    with pytest.raises(RuntimeError, match="no CUDA wheel"):
        _install(tmp_path, _gpu(tmp_path), fail_cuda=True, python=cpu_python)


def test_install_cell_is_self_contained():
    """The clean notebook's first cell defines install_runtime and calls it, without importing the book."""
    import ast

    cell = launch_notebook(_executed(), "https://github.com/org/book", "abc123").cells[0].source
    tree = ast.parse(cell)
    call = tree.body[-1].value
    assert call.func.id == "install_runtime"
    assert [a.value for a in call.args] == ["https://raw.githubusercontent.com/org/book/abc123",
                                            "https://github.com/org/book", "abc123"]
    assert "overparam" not in {n.names[0].name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                               if getattr(n, "names", None)} and "from overparam" not in cell
    namespace = {}
    exec(compile(ast.Module(body=tree.body[:-1], type_ignores=[]), "<cell>", "exec"), namespace)
    calls, _ = _install(Path("."), "/absent/nvidia-smi", namespace=namespace)
    assert calls[-1][-1] == "overparam @ git+https://github.com/org/book@abc123"
