"""The chapters' runtime (requirements-runtime.txt) on its own: a fresh virtualenv with only the science
stack, `overparam` and a Jupyter kernel (what a hosted notebook service provides) executes a chapter at
`smoke`, as the clean notebook's install cell sets it up. Installs from the package registry (about a minute)."""

import json
import os
import shutil
import subprocess
import venv

import pytest

from _support import REPO

CHAPTER = "06"


@pytest.fixture(scope="module")
def runtime_kernel(tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("runtime")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # ipykernel stands for the hosted service's own kernel; the constraints pin it like everything else
    subprocess.run(pip + ["-r", str(REPO / "requirements-runtime.txt"), "-c", str(REPO / "constraints.txt"),
                          "ipykernel"], check=True)
    # overparam from a copy of the sources: a build in the repository would leave build/ behind
    src = tmp / "src"
    shutil.copytree(REPO / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copyfile(REPO / "pyproject.toml", src / "pyproject.toml")
    subprocess.run(pip + ["--no-deps", str(src)], check=True, cwd=tmp)
    kernels = tmp / "jupyter" / "kernels" / "overparam-runtime"
    kernels.mkdir(parents=True)
    # PYTHONPATH emptied: the kernel imports overparam from the runtime environment, not from lib/
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "overparam runtime", "language": "python", "env": {"PYTHONPATH": ""},
        "metadata": {"supported_encryption": ["curve"]}}))
    monkeypatch_module.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
    return python, tmp


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.mark.slow
def test_runtime_has_no_build_toolchain(runtime_kernel):
    python, tmp = runtime_kernel
    probe = ("import importlib.util as u; import overparam, jax, flax, optax, sympy, sklearn, mnist1d; "
             "print([m for m in ('papermill', 'jupyter_book', 'sphinx', 'pytest', 'playwright') if u.find_spec(m)]); "
             "print(overparam.__file__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True, cwd=tmp,
                         env=env).stdout
    assert out.splitlines()[0] == "[]", out
    assert str(tmp / "venv") in out.splitlines()[1], "overparam must come from the runtime environment"


@pytest.mark.slow
def test_runtime_environment_runs_a_chapter_at_smoke(runtime_kernel, tmp_path):
    from overparam.book.runner import run_chapter

    run = run_chapter(CHAPTER, "smoke", root=REPO, out=tmp_path, force=True, kernel_name="overparam-runtime")
    assert run.status == "ok", f"{run.error} (cell {run.failed_cell})"
    results = json.loads((tmp_path / "results" / f"{CHAPTER}.json").read_text())
    assert results["claims"], "the chapter recorded no claims"
