"""Per-chapter downloads and launch links for the HTML book.

Each chapter page gets a banner offering the executed notebook (with outputs), a clean
notebook (no outputs) whose first cell installs the chapters' pinned runtime
(``requirements-runtime.txt``, with the CUDA build of JAX where there is a GPU; for any hosted
notebook service: upload it and run), a Binder launch link (Binder installs
``requirements.txt`` itself and opens the MyST source as a notebook through jupytext) and a
Colab link to the same clean notebook.

Both links are built from ``repository.url`` in ``_config.yml``, which must be a GitHub
repository (Binder's ``gh`` provider and Colab open only those). Binder opens the sources at the
book's commit. Colab opens a notebook file from a GitHub branch: the build collects the clean
notebooks into ``_build/notebooks`` (``collect_clean_notebooks``), and the publish workflow
(``.github/workflows/publish.yml``) makes that folder the tip of the branch ``NOTEBOOKS_BRANCH``
before it deploys the pages, so a Colab link resolves once the book is published by the workflow.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import nbformat

# The branch of the repository that holds the clean notebooks of the published book (Colab opens them
# from there); the publish workflow pushes it. Its files: ``NN_topic.clean.ipynb`` and a README.
NOTEBOOKS_BRANCH = "notebooks"


def install_runtime(raw: str, repo: str, commit: str, run=None, nvidia_smi: str = "nvidia-smi",
                    python: str | None = None) -> list[list[str]]:
    """Install the chapters' runtime on a hosted notebook service; the clean notebooks' first cell runs this
    function's source, so it imports nothing from the book (it runs before ``overparam`` is installed).

    ``raw``: where ``requirements-runtime.txt`` and ``constraints.txt`` are (the raw files of the repository at
    ``commit``). The science stack and ``overparam`` are installed, never the build toolchain. When
    ``nvidia_smi`` lists a GPU, the CUDA build of the pinned JAX (``jax[cuda12]`` or ``jax[cuda13]``,
    after the driver's CUDA version) is installed in the same pip call, so a working GPU JAX is never
    replaced by a CPU one; if that install fails and the runtime's own JAX already runs on the GPU, the
    runtime is installed without the JAX pins and the runtime's JAX is kept. ``run(args)`` runs one
    ``pip install`` and ``python`` is the interpreter whose JAX is probed (tests pass fakes for both and for
    ``nvidia_smi``). Returns the pip argument lists it ran.
    """
    import re
    import shutil
    import subprocess
    import sys
    import tempfile
    import urllib.request

    if run is None:
        def run(args):
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *args])

    def read(name):
        with urllib.request.urlopen(f"{raw}/{name}") as f:
            return f.read().decode()

    def gpu_cuda_major():
        """The driver's CUDA major version when nvidia-smi lists a GPU, else None."""
        if shutil.which(nvidia_smi) is None:
            return None
        listed = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True)
        if listed.returncode != 0 or "GPU" not in listed.stdout:
            return None
        found = re.search(r"CUDA Version:\s*(\d+)", subprocess.run([nvidia_smi], capture_output=True, text=True).stdout)
        return int(found.group(1)) if found else 12

    def jax_on_gpu():
        probe = "import jax; print(jax.default_backend())"
        out = subprocess.run([python or sys.executable, "-c", probe], capture_output=True, text=True)
        return out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == ["gpu"]

    folder = tempfile.mkdtemp(prefix="overparam-")
    requirements, constraints = f"{folder}/requirements-runtime.txt", f"{folder}/constraints.txt"
    text = read("requirements-runtime.txt")
    with open(requirements, "w") as f:
        f.write(text)
    with open(constraints, "w") as f:
        f.write(read("constraints.txt"))
    jax_pin = next(line.split("==")[1].strip() for line in text.splitlines() if line.startswith("jax=="))
    cuda = gpu_cuda_major()
    had_gpu_jax = cuda is not None and jax_on_gpu()
    ran = []
    args = ["-r", requirements, "-c", constraints]
    if cuda is None:
        print("No GPU found (nvidia-smi): installing the CPU build of JAX.")
    else:
        extra = "cuda13" if cuda >= 13 else "cuda12"
        print(f"GPU found (CUDA {cuda}): installing jax[{extra}]=={jax_pin}.")
        args.append(f"jax[{extra}]=={jax_pin}")
    try:
        ran.append(args)
        run(args)
    except Exception as exc:
        if not had_gpu_jax:
            raise
        print(f"The CUDA build of jax=={jax_pin} did not install ({exc}); keeping this runtime's GPU JAX.")
        kept = f"{folder}/requirements-no-jax.txt"
        with open(kept, "w") as f:
            f.write("".join(line + "\n" for line in text.splitlines() if not line.startswith(("jax==", "jaxlib=="))))
        # the constraints pin jax and jaxlib too: the science stack is installed against the runtime's JAX
        loose = f"{folder}/constraints-no-jax.txt"
        with open(loose, "w") as f:
            f.write("".join(line + "\n" for line in read("constraints.txt").splitlines()
                            if not line.startswith(("jax==", "jaxlib=="))))
        args = ["-r", kept, "-c", loose]
        ran.append(args)
        run(args)
    package = ["--no-deps", f"overparam @ git+{repo}@{commit}"]
    ran.append(package)
    run(package)
    print("Installed. If pip replaced a package this runtime had already imported, restart the runtime once.")
    return ran


def install_cell(repo_url: str, commit: str) -> str:
    """The source of the clean notebook's first cell: ``install_runtime`` and the call for this commit."""
    import inspect

    raw = repo_url.replace("https://github.com/", "https://raw.githubusercontent.com/").rstrip("/") + f"/{commit}"
    return ("# Run this first on a hosted service (Colab, Kaggle, Binder, JupyterHub): installs the chapters'\n"
            "# pinned science stack (the CUDA build of JAX when the runtime has a GPU) and the book's library\n"
            "# `overparam` at the commit that produced the published book. Locally, use `make install` instead.\n"
            + inspect.getsource(install_runtime)
            + f"\n\ninstall_runtime({raw!r}, {repo_url!r}, {commit!r})\n")


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
    nb.cells.insert(0, nbformat.v4.new_code_cell(install_cell(repo_url, commit)))
    return nb


def github_slug(repo_url: str) -> str:
    """``owner/name`` of a GitHub repository URL ``https://github.com/owner/name`` (a trailing ``/`` or
    ``.git`` is allowed); ``ValueError`` for any other URL."""
    found = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?:\.git)?/?", repo_url)
    if found is None:
        raise ValueError(f"repo_url must be a GitHub repository URL, https://github.com/<owner>/<name> "
                         f"(Binder and Colab open GitHub repositories), got {repo_url!r}")
    return f"{found[1]}/{found[2]}"


def binder_url(repo_url: str, commit: str, source: str) -> str:
    """Binder link opening ``source`` (a path in the repository) in JupyterLab at ``commit``."""
    return f"https://mybinder.org/v2/gh/{github_slug(repo_url)}/{commit}?labpath={quote(source, safe='')}"


def clean_name(stem: str) -> str:
    """File name of a chapter's clean notebook, in the page's downloads and on ``NOTEBOOKS_BRANCH``."""
    return f"{stem}.clean.ipynb"


def colab_url(repo_url: str, stem: str, branch: str = NOTEBOOKS_BRANCH) -> str:
    """Colab link opening the clean notebook of chapter ``stem`` (``NN_topic``) from ``branch`` of the
    GitHub repository ``repo_url``: ``https://colab.research.google.com/github/<owner>/<name>/blob/<branch>/<file>``.
    The file exists there once the publish workflow has pushed the build's ``_build/notebooks`` to ``branch``."""
    return (f"https://colab.research.google.com/github/{github_slug(repo_url)}/blob/{quote(branch, safe='')}/"
            f"{quote(clean_name(stem))}")


def banner(stem: str, repo_url: str, commit: str) -> str:
    """The Markdown cell placed at the top of a chapter page."""
    return (
        ":::{note}\n"
        f"**Run this chapter yourself.** Download the {{download}}`executed notebook <{stem}.ipynb>` "
        f"or the {{download}}`clean notebook <downloads/{clean_name(stem)}>` (no outputs; its first cell "
        f"installs the pinned requirements on any hosted service), "
        f"[launch it on Binder]({binder_url(repo_url, commit, f'chapters/{stem}.md')}), or "
        f"[open the clean notebook in Colab]({colab_url(repo_url, stem)}) (with a GPU runtime for `full`). "
        "Set `scale` in the parameters cell (`smoke`, `ci`, `full`) to fit your machine.\n"
        ":::\n"
    )


def add_downloads(staged_notebook: Path, repo_url: str, commit: str) -> None:
    """Write the clean notebook beside a staged executed notebook and put the banner on its page."""
    nb = nbformat.read(staged_notebook, as_version=4)
    folder = staged_notebook.parent / "downloads"
    folder.mkdir(exist_ok=True)
    nbformat.write(launch_notebook(nb, repo_url, commit), folder / clean_name(staged_notebook.stem))
    first_heading = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), 0)
    nb.cells.insert(first_heading + 1, nbformat.v4.new_markdown_cell(banner(staged_notebook.stem, repo_url, commit)))
    nbformat.write(nb, staged_notebook)


def collect_clean_notebooks(staged_chapters: Path, out: Path, repo_url: str, commit: str) -> list[Path]:
    """Copy the clean notebooks that ``add_downloads`` wrote under ``staged_chapters/downloads`` into ``out``
    (emptied first), with a README naming the commit: the files of ``NOTEBOOKS_BRANCH``. Returns the notebooks."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copied = [Path(shutil.copyfile(nb, out / nb.name))
              for nb in sorted((staged_chapters / "downloads").glob(clean_name("*")))]
    (out / "README.md").write_text(
        "# Clean notebooks of the book's chapters\n\n"
        f"Built from {repo_url}/tree/{commit}. Each notebook has no outputs; its first cell installs the\n"
        "chapters' pinned runtime (the CUDA build of JAX on a GPU runtime) and the book's library at that\n"
        "commit. Open them from the chapter pages (\"open the clean notebook in Colab\"). This branch is\n"
        "replaced each time the book is published.\n")
    return copied
