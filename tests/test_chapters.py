"""Every chapter executes at `smoke` scale and records its claims (not enforced at smoke)."""

import json

import pytest

from overparam.book.runner import declared_parameters, discover_chapters, run_chapter, run_dir

CHAPTERS = discover_chapters()


@pytest.mark.slow
@pytest.mark.parametrize("cid", list(CHAPTERS))
def test_chapter_runs_at_smoke_scale(cid):
    # tests/test_book.py's smoke build runs the same chapters into the same folder, maybe in another
    # test process at the same time: the runner's per-chapter lock makes one of them find it cached
    run = run_chapter(cid, "smoke")
    assert run.status in ("ok", "cached"), f"chapter {run.name} failed at cell {run.failed_cell}: {run.error}"
    results = json.loads((run_dir("smoke") / "results" / f"{cid}.json").read_text())
    assert results["scale"] == "smoke"
    assert len(results["claims"]) >= 3, "every chapter states its central results as at least three claims"
    assert all(c["status"] in ("recorded", "pass", "fail") for c in results["claims"])


@pytest.mark.parametrize("cid", list(CHAPTERS))
def test_chapter_declares_scale_and_seed(cid):
    params = declared_parameters(CHAPTERS[cid])
    assert params["scale"] == "ci", "the default scale of the book build is ci"
    assert "seed" in params


def test_chapters_are_in_the_toc_and_carry_no_outputs():
    toc = open(CHAPTERS[next(iter(CHAPTERS))].parents[1] / "_toc.yml").read()
    for path in CHAPTERS.values():
        assert f"chapters/{path.stem}" in toc, f"{path.stem} is not listed in _toc.yml"
        assert path.suffix == ".md"  # jupytext MyST: no outputs can be stored
