"""A one-chapter book built to HTML: Markdown outputs (the claims table, tables a chapter displays)
render as tables, long code lines wrap, and the build log shows progress inside the chapter
without the kernel's warning about unencrypted TCP."""

import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from _support import REPO, make_root

LONG = "wrap_me_" * 40
BODY = f'''from IPython.display import Markdown, display
display(Markdown("| width | rank |\\n|---|---|\\n| 8 | $r^2$ |"))
claims.claim("abs-gap", "max |a - b| over runs", 0.25, interval=(None, 1.0), margin_note="toy")
print("{LONG}")
'''


@contextmanager
def _captured_fds(path: Path):
    """Send this process's stdout and stderr (and so the kernel's, which inherits them) to ``path``."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with open(path, "wb") as f:
        for fd in (1, 2):
            os.dup2(f.fileno(), fd)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


@pytest.fixture(scope="module")
def tiny_book(tmp_path_factory):
    from overparam.book import runner
    from overparam.book.build import build_book

    if not (REPO / "book" / "_vendor" / "mathjax" / "tex-chtml.js").exists():
        pytest.fail("MathJax is not vendored: run `make vendor` (make test does it)")
    tmp = tmp_path_factory.mktemp("tiny")
    root = make_root(tmp, {"01_toy": BODY})
    source = root / "chapters" / "01_toy.md"
    source.write_text(source.read_text().replace("claims.save()", "claims.report()\nclaims.save()"))
    shutil.copyfile(REPO / "_config.yml", root / "_config.yml")
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("generated", "*.pdf"))
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n- file: chapters/01_toy\n"
                                   "- file: book/generated/scorecard\n- file: book/generated/provenance\n"
                                   "- file: book/bibliography\n")
    lines, output = [], tmp / "output.txt"
    every, runner.PROGRESS_EVERY_S = runner.PROGRESS_EVERY_S, 0.0
    try:
        with _captured_fds(output):
            rc = build_book("smoke", root=root, pdf="no", log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    finally:
        runner.PROGRESS_EVERY_S = every
    assert rc == 0, "tiny build failed:\n" + "\n".join(lines) + output.read_text(errors="replace")[-3000:]
    html = root / "_build" / "html"
    return dict(page=(html / "chapters" / "01_toy.html").read_text(), log="\n".join(lines),
                output=output.read_text(errors="replace"), html=html)


def _tables(page: str) -> list[str]:
    return re.findall(r"<table.*?</table>", page, flags=re.S)


@pytest.mark.slow
def test_markdown_outputs_render_as_html_tables(tiny_book):
    page = tiny_book["page"]
    assert "<p>| width" not in page and "<p>| claim" not in page, "a Markdown output was rendered as raw text"
    tables = _tables(page)
    shown = next(t for t in tables if ">width<" in t)
    assert shown.count("<tr") == 2 and "math notranslate" in shown, "the displayed table lost a row or its math"
    claims = next(t for t in tables if ">claim<" in t)
    assert claims.count("<tr") == 1 + 2, "the claims table needs a header and one row per claim"
    assert "max |a - b| over runs" in claims, "a | inside a statement must not split its cell"


@pytest.mark.slow
def test_long_code_lines_wrap(tiny_book):
    assert LONG in tiny_book["page"]
    css = tiny_book["html"] / "_static" / "overparam.css"
    assert css.exists() and "overparam.css" in tiny_book["page"]
    assert "pre-wrap" in css.read_text()


@pytest.mark.slow
def test_build_log_shows_cell_progress_without_tcp_warning(tiny_book):
    assert "without encryption" not in tiny_book["output"], tiny_book["output"][-2000:]
    assert re.search(r"\[1/1\] 01_toy: cell 1/\d+ done, \d+ s", tiny_book["log"]), tiny_book["log"]


def test_cell_progress_is_throttled():
    from overparam.book.runner import cell_progress_log

    lines = []
    log = lambda *a, **k: lines.append(" ".join(a))  # noqa: E731
    progress = cell_progress_log("[2/9] 07_curvature", log, every_s=3600)
    for done in range(1, 11):
        progress(done, 10)
    assert lines == []
    progress = cell_progress_log("[2/9] 07_curvature", log, every_s=0)
    progress(3, 10), progress(10, 10)
    assert len(lines) == 1 and lines[0].startswith("[2/9] 07_curvature: cell 3/10 done, ")
