"""The chapter runner: parameter validation, caching keyed on lib/, failure isolation."""

import json

import pytest

from overparam.book import runner
from overparam.book.cli import main as cli_main

from _support import make_root


def test_discover_and_declared_parameters(tmp_path):
    root = make_root(tmp_path, {"01_alpha": "", "02_beta": ""})
    found = runner.discover_chapters(root)
    assert list(found) == ["01", "02"]
    assert runner.declared_parameters(found["01"]) == {"scale": "ci", "seed": 0, "rate": 0.5}
    assert runner.resolve_chapter("1", root).stem == "01_alpha"
    with pytest.raises(ValueError, match="unknown chapter '07'.*01 \\(01_alpha\\)"):
        runner.resolve_chapter("07", root)


def test_unknown_parameter_and_scale_rejected_before_work(tmp_path):
    root = make_root(tmp_path, {"01_alpha": ""})
    with pytest.raises(ValueError, match="unknown parameter\\(s\\) 'widht'.*allowed: rate, scale, seed"):
        runner.run_chapter("01", "smoke", {"widht": 3}, root=root)
    with pytest.raises(ValueError, match="scale='huge' is not a known scale; allowed: smoke, ci, full"):
        runner.run_chapter("01", "huge", root=root)
    with pytest.raises(ValueError, match="takes a float"):
        runner.run_chapter("01", "smoke", {"rate": "fast"}, root=root)
    assert not (root / "_build" / "runs").exists(), "validation must happen before any output is written"


def test_cli_reports_bad_input_with_exit_code_2(capsys):
    assert cli_main(["run", "01", "--scale", "huge"]) == 2
    assert "allowed: smoke, ci, full" in capsys.readouterr().err


@pytest.mark.slow
def test_failure_is_isolated_cached_and_keyed_on_lib(tmp_path):
    # the kernel compiles into the book's shared cache (runner.jax_cache_environment)
    cache_check = ("import os; assert os.environ['JAX_COMPILATION_CACHE_DIR'].endswith('/_build/jax_cache'); "
                   f"assert {runner.SMOKE_XLA_FLAGS!r} in os.environ['XLA_FLAGS'].split()")
    root = make_root(tmp_path, {"01_good": "", "02_bad": "raise RuntimeError('boom in chapter two')",
                                "03_good": cache_check})
    lines = []
    runs = runner.run_chapters(None, "smoke", root=root, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert [r.status for r in runs] == ["ok", "failed", "ok"]
    bad = runs[1]
    assert "boom in chapter two" in bad.error and bad.failed_cell is not None
    assert any("02_bad FAILED at cell" in line for line in lines)
    out = runner.run_dir("smoke", root)
    assert (out / "notebooks" / "01_good.ipynb").exists() and (out / "notebooks" / "03_good.ipynb").exists()
    assert (out / "notebooks" / "02_bad.failed.ipynb").exists()
    res = json.loads((out / "results" / "01.json").read_text())
    assert res["scale"] == "smoke" and res["claims"][0]["status"] == "recorded"
    assert {"jax", "numpy", "python"} <= set(res["versions"]) and res["git_commit"]

    # unchanged: served from the cache
    again = runner.run_chapter("01", "smoke", root=root)
    assert again.status == "cached"
    # a change in lib/ (not in the chapter) invalidates the key
    with open(root / "lib" / "overparam" / "stats.py", "a") as fh:
        fh.write("\n# touched\n")
    assert runner.run_chapter("01", "smoke", root=root).status == "ok"
    # a different parameter value is a different key
    assert runner.run_chapter("01", "smoke", {"rate": 0.25}, root=root).status == "ok"


@pytest.mark.slow
def test_failed_rerun_keeps_last_good_notebook(tmp_path):
    root = make_root(tmp_path, {"01_flaky": ""})
    assert runner.run_chapter("01", "ci", root=root).status == "ok"
    good = runner.run_dir("ci", root) / "notebooks" / "01_flaky.ipynb"
    before = good.read_bytes()
    src = root / "chapters" / "01_flaky.md"
    src.write_text(src.read_text().replace("claims.save()", "1/0\nclaims.save()"))
    run = runner.run_chapter("01", "ci", root=root)
    assert run.status == "failed" and "ZeroDivisionError" in run.error
    assert good.read_bytes() == before
    status = json.loads((runner.run_dir("ci", root) / "status" / "01.json").read_text())
    assert status["status"] == "failed"


def _run_tiny(root):
    from overparam.book import runner as r

    return r.run_chapter("01", "smoke", root=root).status


@pytest.mark.slow
def test_two_processes_running_one_chapter_take_turns(tmp_path):
    """The second of two simultaneous runs of a chapter waits for the first and finds it cached."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    root = make_root(tmp_path, {"01_slow": "import time; time.sleep(3)"})
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        statuses = sorted(pool.map(_run_tiny, [root, root]))
    assert statuses == ["cached", "ok"], statuses


def test_kernel_environment_compiles_smoke_without_backend_optimizations(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    smoke, ci = runner.kernel_environment("smoke", tmp_path), runner.kernel_environment("ci", tmp_path)
    assert smoke["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 " + runner.SMOKE_XLA_FLAGS
    assert "XLA_FLAGS" not in ci, "ci and full compile as usual"
    assert smoke["JAX_COMPILATION_CACHE_DIR"] == ci["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "_build" / "jax_cache")
    with pytest.raises(ValueError, match="not a known scale"):
        runner.kernel_environment("huge", tmp_path)
