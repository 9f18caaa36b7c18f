"""The whole book at `smoke` scale: built to HTML, then opened in headless Chromium from 127.0.0.1.

Checks: every page renders, math is typeset by the vendored MathJax, figures load, each
chapter's claims are an HTML table with one row per claim, long code lines wrap, the
scorecard lists claims, and no request leaves 127.0.0.1.
"""

import functools
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from overparam.book.build import build_book, chapter_title, repository_url
from overparam.book.downloads import colab_url
from overparam.book.runner import discover_chapters, run_dir

from _support import assert_local

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    if not (REPO / "book" / "_vendor" / "mathjax" / "tex-chtml.js").exists():
        pytest.fail("MathJax is not vendored: run `make vendor` (make test does it)")
    out = tmp_path_factory.mktemp("book")
    lines = []
    rc = build_book("smoke", root=REPO, path_output=out, pdf="auto",
                    log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    html = out / "_build" / "html"
    assert rc == 0, "smoke build failed:\n" + "\n".join(lines)
    return html


@pytest.mark.slow
def test_every_page_is_built(built_book):
    assert (built_book / "index.html").exists()
    for stem in ("scorecard", "provenance"):
        assert (built_book / "book" / "generated" / f"{stem}.html").exists()
    for path in discover_chapters(REPO).values():
        page = built_book / "chapters" / f"{path.stem}.html"
        assert page.exists(), f"{path.stem} has no page"
        text = page.read_text()
        assert "injected-parameters" not in text, "papermill's injected cell must be hidden"
        assert f"{path.stem}.clean.ipynb" in text and "mybinder.org" in text, "download and launch links missing"
        assert colab_url(repository_url(REPO), path.stem) in text, "Colab link missing"
        assert (built_book.parent / "notebooks" / f"{path.stem}.clean.ipynb").exists(), "not collected for publishing"
    assert (built_book / "book" / "_vendor" / "mathjax" / "tex-chtml.js").exists() or \
        (built_book / "_static" / "mathjax" / "tex-chtml.js").exists()


@pytest.fixture(scope="session")
def server(built_book):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_book))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _open(browser, url):
    page = browser.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url, wait_until="networkidle")
    return page, requests


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.parametrize("stem", [p.stem for p in discover_chapters(REPO).values()])
def test_chapter_page_typesets_math_and_loads_figures(browser, server, stem):
    page, requests = _open(browser, f"{server}/chapters/{stem}.html")
    page.wait_for_selector("mjx-container", state="attached", timeout=20000)
    assert page.locator("mjx-container").count() > 3, "math was not typeset"
    assert page.locator("mjx-merror").count() == 0, "MathJax reported a TeX error"
    images = page.locator("img").evaluate_all("els => els.map(e => [e.src, e.complete && e.naturalWidth > 0])")
    figures = [src for src, ok in images if "logo" not in src]
    assert figures, "the chapter shows no figure"
    broken = [src for src, ok in images if not ok]
    assert not broken, f"images failed to load: {broken}"
    # the claims table that ends the chapter is an HTML table with one row per recorded claim
    claims = json.loads((run_dir("smoke", REPO) / "results" / f"{stem[:2]}.json").read_text())["claims"]
    rows = page.evaluate("""() => [...document.querySelectorAll('main table')]
        .filter(t => [...t.querySelectorAll('thead th')].map(th => th.innerText.trim()).join('|')
                     === 'claim|statement|measured|predicted|status')
        .map(t => t.querySelectorAll('tbody tr').length)""")
    assert rows == [len(claims)], f"claims table rows {rows}, expected one table with {len(claims)} rows"
    outputs = page.evaluate("() => [...document.querySelectorAll('div.cell_output')].map(o => o.innerText).join(' ')")
    assert "|---|" not in outputs and "| claim |" not in outputs, "a Markdown table output was rendered as text"
    # long code and output lines wrap instead of running off the page
    overflowing = page.evaluate("""() => [...document.querySelectorAll('div.cell_input pre, div.cell_output pre')]
        .filter(p => p.scrollWidth > p.clientWidth + 2).map(p => p.innerText.slice(0, 60))""")
    assert not overflowing, f"code lines run off the page: {overflowing[:3]}"
    assert_local(requests)
    page.close()


@pytest.mark.slow
@pytest.mark.browser
def test_scorecard_lists_claims_offline(browser, server):
    page, requests = _open(browser, f"{server}/book/generated/scorecard.html")
    text = page.inner_text("main")
    assert "Scorecard" in text and "recorded" in text
    for path in discover_chapters(REPO).values():
        assert chapter_title(path) in text
    assert_local(requests)
    page.close()


@pytest.mark.slow
def test_pdf_of_the_whole_book(built_book):
    """The smoke build renders the PDF when TeX is installed (CI installs it): every chapter, with figures."""
    from pypdf import PdfReader

    from overparam.book.pdf import PDF_NAME, missing_tex_tools

    if missing_tex_tools():
        if os.environ.get("CI"):
            pytest.fail(f"TeX is required in CI (.ci/run installs it); missing {missing_tex_tools()}")
        pytest.skip(f"TeX is not installed ({missing_tex_tools()}): no PDF")
    pdf = built_book.parent / "latex" / PDF_NAME
    assert pdf.exists(), "the build did not write the PDF"
    downloads = list(built_book.glob(f"_downloads/*/{PDF_NAME}"))
    assert downloads, "the HTML book does not offer the PDF for download"
    assert PDF_NAME in (built_book / "book" / "intro.html").read_text(), "the introduction does not link the PDF"
    reader = PdfReader(pdf)
    assert len(reader.pages) > 50
    text = " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)
    for path in discover_chapters(REPO).values():
        title = " ".join(chapter_title(path).split())
        assert title.split(":")[0] in text, f"chapter {path.stem} ({title!r}) is missing from the PDF"
    assert "Scorecard" in text and "Provenance" in text
    images = sum(len(page.images) for page in reader.pages)
    assert images >= len(discover_chapters(REPO)), f"only {images} images in the PDF: figures are missing"


def test_scorecard_escapes_table_cells_and_titles_chapters(tmp_path):
    import json
    import re

    from overparam.book.build import scorecard_markdown

    source = tmp_path / "01_toy.md"
    source.write_text("---\njupytext: {}\n---\n\n# A toy chapter\n")
    claim = dict(id="abs-gap", statement="max |a - b| over runs", measured=0.5, predicted=None, tolerance=None,
                 interval=[None, 1.0], holds_from="ci", scale="ci", status="pass", within=True, note="",
                 details={}, known_failure="")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "01.json").write_text(json.dumps(
        dict(chapter="01", scale="ci", seed=0, wall_time_s=1.0, claims=[claim])))
    page = scorecard_markdown(tmp_path, {"01": source})
    assert "## Chapter 01: [A toy chapter]" in page
    row = next(line for line in page.splitlines() if line.startswith("| abs-gap"))
    assert len(re.findall(r"(?<!\\)\|", row)) == 11, row  # ten columns: eleven unescaped bars


def test_scorecard_shows_replication_controls_and_power(tmp_path):
    """Fragile, cannot discriminate, missing control and underpowered each show in their row and the summary."""
    import json

    from overparam.book.build import scorecard_markdown
    from overparam.book.claims import ClaimRecorder
    from overparam.book.runner import cache_key, discover_chapters, validate_parameters

    from _support import make_root

    root = make_root(tmp_path, {"01_toy": ""})
    source = discover_chapters(root)["01"]
    runs = root / "_build" / "runs" / "ci"

    def write(folder, seed, values):
        rec = ClaimRecorder("01", scale="ci", seed=seed)
        rec.claim("slope", "slope near -1/2", values["slope"], interval=(-0.6, -0.4))
        rec.claim("gain", "gain > 0", values["gain"], interval=(0, None), control=0.02, control_note="frozen pattern")
        rec.claim("bare", "ratio below one", values["bare"], interval=(None, 1.0))
        rec.claim("mean", "mean over seeds", per_seed=values["mean"], predicted=1.0, tolerance=0.1)
        rec.save(folder / "results")
        (folder / "keys").mkdir(parents=True, exist_ok=True)
        params = validate_parameters(source, "ci", {"seed": seed})
        (folder / "keys" / "01.key").write_text(cache_key(source, params, root))

    write(runs, 0, dict(slope=-0.406, gain=0.06, bare=0.5, mean=[0.9, 1.1, 0.9, 1.1]))
    write(runs / "replicas" / "seed-1", 1, dict(slope=-0.39, gain=0.05, bare=0.6, mean=[0.95, 1.05]))
    page = scorecard_markdown(runs, {"01": source}, root)
    rows = {line.split(" | ")[0][2:]: line for line in page.splitlines() if line.startswith("| ")}
    assert "⚠ **fragile**" in rows["slope"] and "1/2 (fails at seed 1)" in rows["slope"]
    assert "sd 0.0113 (-0.406 to -0.39)" in rows["slope"] and "across seeds" in rows["slope"]
    assert "❌ **cannot discriminate**" in rows["gain"] and "0.02 also passes ✗: frozen pattern" in rows["gain"]
    assert "⚠ none (one-sided)" in rows["bare"] and "2/2" in rows["bare"]
    assert "⚠ underpowered: per seed: tolerance 0.1 is below 2 SE" in rows["mean"] and "mean of 4" in rows["mean"]
    assert "Replicated at seed 1." in page
    assert "2 of 4 enforced claims pass at every seed; 1 fragile, 2 underpowered, 1 cannot discriminate, " \
           "1 without a control where one is required" in page
    assert "3 pass, 0 fail (0 of them known and explained in their chapter), 1 cannot discriminate" in page

    # a replica from other code is not used, and the page says so
    (runs / "replicas" / "seed-1" / "keys" / "01.key").write_text("stale")
    page = scorecard_markdown(runs, {"01": source}, root)
    assert "Seed 1 not used: from other code" in page and "Not replicated at other seeds yet." in page
