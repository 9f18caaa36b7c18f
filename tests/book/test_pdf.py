"""The PDF builder's pieces that need no TeX: tool detection, errors that name the fix, the link paragraph."""

from pathlib import Path

import pytest

from overparam.book import pdf
from overparam.book.build import build_book, render_pdf_page


def test_missing_tools_are_named_with_the_packages_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no TeX at all
    assert pdf.missing_tex_tools() == list(pdf.TEX_TOOLS)
    with pytest.raises(RuntimeError, match="xelatex.*not found.*texlive-xetex"):
        pdf.build_pdf(tmp_path, tmp_path)


def test_auto_skips_without_tex_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    lines = []
    assert render_pdf_page(tmp_path, tmp_path, "smoke", "auto", log=lambda *a, **k: lines.append(a[0]))
    text = (tmp_path / "book" / "generated" / "pdf_link.md").read_text()
    assert "no PDF" in text and "TeX is not installed" in text
    assert any("PDF skipped" in line for line in lines)


def test_required_pdf_without_tex_fails_but_writes_the_page(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    lines = []
    assert not render_pdf_page(tmp_path, tmp_path, "smoke", "yes", log=lambda *a, **k: lines.append(a[0]))
    assert "LaTeX build failed" in (tmp_path / "book" / "generated" / "pdf_link.md").read_text()
    assert any("PDF FAILED" in line and "texlive-xetex" in line for line in lines)


def test_no_pdf_requested(tmp_path):
    assert render_pdf_page(tmp_path, tmp_path, "ci", "no", log=lambda *a, **k: None)
    assert "not requested" in (tmp_path / "book" / "generated" / "pdf_link.md").read_text()


def test_link_paragraph_names_file_size_and_scale(tmp_path):
    f = tmp_path / pdf.PDF_NAME
    f.write_bytes(b"%PDF" + b"0" * (3 * 2**20))
    text = pdf.pdf_link_markdown(f, "ci")
    assert f"[{pdf.PDF_NAME}]({pdf.PDF_NAME})" in text and "3.0 MB" in text and "`ci`" in text


def test_bad_pdf_choice_is_rejected_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="pdf must be one of"):
        build_book("smoke", root=Path(tmp_path), pdf="maybe")


def test_ci_installs_the_tex_packages_the_pdf_needs():
    run = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    listed = run.split('TEX_PACKAGES="', 1)[1].split('"', 1)[0].split()
    assert sorted(listed) == sorted(pdf.TEX_PACKAGES)
