"""The whole book as one PDF, through Sphinx's LaTeX builder (XeLaTeX + latexmk, via Jupyter Book).

The PDF is rendered from the same staged tree as the HTML book (executed notebooks, generated
scorecard and provenance), so its figures and numbers are the ones the build measured. XeLaTeX
is used because notebook outputs contain Unicode (λ, ≥, ±); the fonts are GNU FreeFont. Plain
Sphinx LaTeX is used (``use_jupyterbook_latex: false`` in ``_config.yml``): the Jupyter Book
LaTeX class needs ``bbm.sty``, which only Debian's 1 GB ``texlive-fonts-extra`` ships.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

PDF_NAME = "overparameterized.pdf"
TEX_TOOLS = ("xelatex", "latexmk", "makeindex")
TEX_PACKAGES = ("texlive-xetex", "texlive-latex-recommended", "texlive-latex-extra", "texlive-fonts-recommended",
                "texlive-plain-generic", "lmodern", "fonts-freefont-otf", "latexmk")
INSTALL_HINT = "apt-get install --no-install-recommends " + " ".join(TEX_PACKAGES)


def missing_tex_tools() -> list[str]:
    """The TeX programs the PDF needs that are not on PATH (empty when it can be built)."""
    return [tool for tool in TEX_TOOLS if shutil.which(tool) is None]


def build_pdf(stage: Path, path_output: Path) -> Path:
    """Render the staged book to ``<path_output>/_build/latex/overparameterized.pdf``; returns its path.

    Raises ``RuntimeError`` naming what is missing (TeX programs) or where the LaTeX log is when
    the build fails; nothing else that was built is touched.
    """
    missing = missing_tex_tools()
    if missing:
        raise RuntimeError(f"the PDF needs TeX: {', '.join(missing)} not found on PATH. On Debian/Ubuntu: "
                           f"{INSTALL_HINT}")
    latex_dir = Path(path_output) / "_build" / "latex"
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb), "build", str(stage), "--path-output", str(path_output), "--builder", "pdflatex",
           "-W", "-n", "--keep-going"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    pdf = latex_dir / PDF_NAME
    if result.returncode != 0 or not pdf.exists():
        latex_dir.mkdir(parents=True, exist_ok=True)
        log = latex_dir / "build.log"
        log.write_text(result.stdout + "\n" + result.stderr)
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"the PDF build failed (exit {result.returncode}); full log in {log}:\n{tail}")
    return pdf


def pdf_link_markdown(pdf: Path | None, scale: str, reason: str = "") -> str:
    """The paragraph the introduction includes: a link to the PDF, or why this build has none.

    ``pdf`` is the file next to ``book/intro.md``, which includes this paragraph (linked by name,
    so MyST copies it into the HTML site's downloads); ``None`` while the PDF itself is being rendered, or when it was not built.
    """
    if pdf is not None:
        size_mb = pdf.stat().st_size / 2**20
        return (f"**The whole book as one PDF:** [{pdf.name}]({pdf.name}) ({size_mb:.1f} MB, executed at scale "
                f"`{scale}`, the same run as these pages).\n")
    if reason:
        return f"*This build has no PDF of the book ({reason}).*\n"
    return f"*This PDF was rendered from the same executed notebooks as the HTML book (scale `{scale}`).*\n"
