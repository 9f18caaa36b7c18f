"""Build the HTML book (and its PDF) from executed chapters.

Steps: run every chapter (``runner.run_chapters``; unchanged ones come from the
cache), write the scorecard and provenance pages from the results files, stage
a source tree holding the executed notebooks instead of the ``.md`` sources (with
their download and launch links; the clean notebooks also go to ``_build/notebooks``),
render the PDF from it when TeX is available (``overparam.book.pdf``), and render it
with Jupyter Book 1.x (which must not execute anything again).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from overparam.book.claims import (CANNOT_DISCRIMINATE, FAIL, MISSING_CONTROL, PASS, RECORDED, STATUS_MARK,
                                   UNDERPOWERED, prediction_text, quality_flags)
from overparam.book.downloads import add_downloads, collect_clean_notebooks
from overparam.book.pdf import PDF_NAME, build_pdf, missing_tex_tools, pdf_link_markdown
from overparam.book.provenance import git_commit, repo_root
from overparam.book.runner import ChapterRun, discover_chapters, run_chapters, run_dir
from overparam.book.sweep import counts, replication, summary_line


def _load(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.exists() else {}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a bare | would start a new column)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def chapter_title(source: Path) -> str:
    """The chapter's first top-level heading (its title), or the file stem when it has none."""
    for line in source.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return source.stem


def scorecard_markdown(runs_folder: Path, chapters: dict[str, Path], root: Path | None = None) -> str:
    """The scorecard page: every claim of every chapter, measured vs predicted, pass/fail, and whether the
    check can fail (replication across seeds, control, power; terms defined in ``overparam.book.claims``)."""
    results, status = _load(runs_folder / "results"), _load(runs_folder / "status")
    reps = replication(runs_folder.name, chapters, root=root, runs_folder=runs_folder)
    lines = [
        "# Scorecard", "",
        "Every claim of every chapter, as measured by the last build. A claim passes when the measured",
        "value lies within the tolerance or interval that the chapter fixed *before* running the",
        "experiment; below the scale from which a claim is expected to hold it is only recorded.",
        "Failures are shown, not hidden.", "",
        "A pass is worth something only if the check could have failed. *Seeds*: at how many of the seeds",
        "run (the registered seed and the replication seeds of `python -m overparam sweep`) the value",
        "holds; a claim that passes at the registered seed and fails at another is **fragile**. *Spread*:",
        "the standard deviation of the value across those seeds. *Control*: the same statistic where",
        "theory says the effect is absent; a claim whose control also passes **cannot discriminate** and",
        "counts as failing; one-sided and comparative claims need a control or a reasoned margin.",
        "*Power*: a claim is **underpowered** when its tolerance is below two standard errors or its",
        "verdict flips within one standard error of the boundary (per-seed values, or the spread across",
        "seeds). These marks are reported, not blocking.", "",
    ]
    n_pass = n_fail = n_rec = n_known = n_nodisc = 0
    body = []
    for cid, source in chapters.items():
        res, st = results.get(cid), status.get(cid, {})
        title = f"## Chapter {cid}: [{chapter_title(source)}](../../chapters/{source.stem}.ipynb)"
        body += [title, ""]
        if st.get("status") == "failed":
            cell = st.get("failed_cell")
            body += [f"**The chapter failed to execute**{f' at cell {cell}' if cell is not None else ''}: "
                     f"`{st.get('error', '')}`", ""]
            if res:
                body += ["The claims below are from the last successful run.", ""]
        if not res:
            body += ["No results recorded yet.", ""]
            continue
        rep = reps[cid]
        others = [k for k in rep.seeds if k != res["seed"]]
        replicated = f" Replicated at seed{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}." \
            if others else " Not replicated at other seeds yet."
        body += [f"Scale `{res['scale']}`, seed `{res['seed']}`, wall time {res['wall_time_s']:.1f} s.{replicated}", ""]
        if rep.problems:
            body += [f"Seed {k} not used: {_cell(why)}." for k, why in sorted(rep.problems.items())] + [""]
        body += ["| claim | statement | measured | predicted | holds from | status | seeds | spread | control | power |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for c, a in rep.assessments():
            nodisc = CANNOT_DISCRIMINATE in a.flags and c["status"] == PASS
            n_pass += c["status"] == PASS and not nodisc
            n_nodisc += nodisc
            n_fail += c["status"] == FAIL
            n_known += c["status"] == FAIL and bool(c.get("known_failure"))
            n_rec += c["status"] == RECORDED
            mark = "❌ **cannot discriminate**" if nodisc else STATUS_MARK[c["status"]]
            if c.get("known_failure") and c["status"] == FAIL:
                mark += f" (known failure: {c['known_failure']})"
            if a.fragile:
                mark += " · ⚠ **fragile**"
            # ids as plain text: LaTeX breaks them at hyphens in the PDF's narrow first column
            body.append(f"| {_cell(c['id'])} | {_cell(c['statement'])} | {c['measured']:.4g} | {prediction_text(c['predicted'], c['tolerance'], c.get('interval'))} | "
                        f"{c['holds_from']} | {_cell(mark)} | {_cell(seeds_cell(a))} | {spread_cell(a)} | "
                        f"{_cell(control_cell(c))} | {_cell(power_cell(c, a))} |")
        body.append("")
    _, total = counts(reps)
    lines += [f"**{n_pass} pass, {n_fail} fail ({n_known} of them known and explained in their chapter), "
              f"{n_nodisc} cannot discriminate (counted as failing), {n_rec} recorded only** across "
              f"{len(chapters)} chapters.", "",
              f"**Replication, controls and power:** {summary_line(total)} (counts overlap; enforced claims only).", ""]
    return "\n".join(lines + body)


def seeds_cell(a) -> str:
    """'3/3', or '2/3 (fails at seed 1)', plus seeds whose run is missing."""
    held = sum(a.outcomes.values())
    text = f"{held}/{len(a.outcomes)}"
    failing = [k for k, ok in a.outcomes.items() if not ok]
    if failing and held:
        text += f" (fails at seed {', '.join(map(str, failing))})"
    if a.absent:
        text += f"; not recorded at seed {', '.join(map(str, a.absent))}"
    return text


def spread_cell(a) -> str:
    if a.spread is None:
        return "–"
    return f"sd {a.spread:.3g} ({min(a.values.values()):.4g} to {max(a.values.values()):.4g})"


def control_cell(c: dict) -> str:
    """The control and whether it discriminates, the margin's reasoning, or that one is missing."""
    if c.get("control") is not None:
        verdict = "also passes ✗" if CANNOT_DISCRIMINATE in quality_flags(c)[0] else "outside ✓"
        return f"{c['control']:.4g} {verdict}: {c.get('control_note', '')}"
    if c.get("margin_note"):
        return f"margin: {c['margin_note']}"
    if MISSING_CONTROL in quality_flags(c)[0]:
        return "⚠ none (" + ("comparative" if c.get("comparative") else "one-sided") + ")"
    return "–"


def power_cell(c: dict, a) -> str:
    se = f"mean of {len(c['per_seed'])}, SE {c['se']:.3g}" if c.get("per_seed") and c.get("se") is not None else ""
    if UNDERPOWERED in a.flags:
        return f"⚠ underpowered: {a.power_note}" + (f" ({se})" if se else "")
    return se or "–"


def provenance_markdown(runs_folder: Path, chapters: dict[str, Path]) -> str:
    """The provenance page: versions, device, seed, scale, wall time and commit of each chapter run."""
    results, status = _load(runs_folder / "results"), _load(runs_folder / "status")
    lines = ["# Provenance", "",
             "Where every number in this book comes from: the code version, the machine and the time",
             "each chapter took to execute in the build that produced this page.", "",
             "| chapter | scale | seed | wall time (s) | status | device | host (job) | git commit | finished (UTC) |",
             "|---|---|---|---|---|---|---|---|---|"]
    versions = None
    for cid, source in chapters.items():
        res, st = results.get(cid), status.get(cid, {})
        if not res:
            lines.append(f"| {source.stem} | – | – | – | {st.get('status', 'not run')} | – | – | – | – |")
            continue
        versions = versions or res["versions"]
        dev = res["device"]
        lines.append(f"| {source.stem} | `{res['scale']}` | `{res['seed']}` | {res['wall_time_s']:.1f} | "
                     f"{st.get('status', 'ok')} | {dev['backend']} ({dev['device']}) | {_cell(host_job(res))} | "
                     f"`{res['git_commit']}` | "
                     f"{res['finished_at']} |")
    total = sum(r["wall_time_s"] for r in results.values())
    lines += ["", f"Total chapter wall time: {total:.0f} s (measured inside each notebook; kernel start-up excluded).",
              ""]
    if versions:
        lines += ["## Package versions", "", "| package | version |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in versions.items()]
    return "\n".join(lines) + "\n"


def host_job(results: dict) -> str:
    """'host' or 'host (Ray job 01000000, Slurm job 123)' from a results file's run context."""
    ctx = results.get("run_context") or {}
    jobs = [f"{label} job {ctx[key]}" for label, key in (("Ray", "ray_job_id"), ("Slurm", "slurm_job_id"))
            if ctx.get(key)]
    return ctx.get("host", "–") + (f" ({', '.join(jobs)})" if jobs else "")


def write_generated_pages(runs_folder: Path, root: Path, stage: Path) -> Path:
    """Write ``<stage>/book/generated/{scorecard,provenance}.md``; returns the folder."""
    chapters = discover_chapters(root)
    out = stage / "book" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    (out / "scorecard.md").write_text(scorecard_markdown(runs_folder, chapters, root))
    (out / "provenance.md").write_text(provenance_markdown(runs_folder, chapters))
    return out


def repository_url(root: Path) -> str:
    """``repository.url`` from ``_config.yml`` (where the book's sources are published)."""
    import yaml

    config = yaml.safe_load((root / "_config.yml").read_text())
    return config.get("repository", {}).get("url", "https://github.com/overparameterized/overparameterized")


# Where ``build_book`` collects the clean notebooks (under ``path_output``); the publish workflow pushes
# this folder to the branch that the Colab links open.
PUBLISHED_NOTEBOOKS = Path("_build") / "notebooks"


def book_commit(root: Path) -> str:
    """The commit the launch links and install cells point at: ``HEAD`` (without ``+dirty``), or ``main``
    outside a git checkout."""
    commit = git_commit(root).replace("+dirty", "")
    return "main" if commit == "unknown" else commit


def stage_sources(runs_folder: Path, root: Path, stage: Path) -> Path:
    """A book source tree with executed notebooks in place of the chapter sources."""
    if stage.exists():
        shutil.rmtree(stage)
    (stage / "chapters").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copyfile(root / name, stage / name)
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns("generated"))
    repo_url, commit = repository_url(root), book_commit(root)
    for cid, source in discover_chapters(root).items():
        good = runs_folder / "notebooks" / f"{source.stem}.ipynb"
        failed = runs_folder / "notebooks" / f"{source.stem}.failed.ipynb"
        chosen = good if good.exists() else failed
        if chosen.exists():
            staged = stage / "chapters" / f"{source.stem}.ipynb"
            shutil.copyfile(chosen, staged)
            add_downloads(staged, repo_url, commit)
        else:  # never ran: render the source so the page exists
            shutil.copyfile(source, stage / "chapters" / source.name)
    return stage


def render_html(stage: Path, path_output: Path, builder: str = "html") -> int:
    """Run Jupyter Book on the staged tree; HTML lands in ``<path_output>/_build/html``."""
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb), "build", str(stage), "--path-output", str(path_output), "--builder", builder,
           "-W", "-n", "--keep-going"]
    return subprocess.run(cmd).returncode


PDF_CHOICES = ("auto", "yes", "no")


def render_pdf_page(stage: Path, path_output: Path, scale: str, pdf: str, log=print) -> bool:
    """Render the PDF (``pdf``: auto = when TeX is installed, yes = required, no = skip) and write
    ``<stage>/book/generated/pdf_link.md`` (the introduction includes it). Returns False when a
    required or attempted PDF failed; the HTML build goes on either way.
    """
    generated = stage / "book" / "generated"
    generated.mkdir(parents=True, exist_ok=True)
    link = generated / "pdf_link.md"
    missing = missing_tex_tools() if pdf == "auto" else []
    if pdf == "no" or missing:
        reason = "not requested" if pdf == "no" else "TeX is not installed here; `make pdf` says what to install"
        if missing:
            log(f"PDF skipped: TeX not found ({', '.join(missing)}); see `make pdf`", flush=True)
        link.write_text(pdf_link_markdown(None, scale, reason))
        return True
    link.write_text(pdf_link_markdown(None, scale))
    log("rendering the PDF with LaTeX ...", flush=True)
    try:
        built = build_pdf(stage, path_output)
    except RuntimeError as exc:
        log(f"  PDF FAILED: {exc}", flush=True)
        link.write_text(pdf_link_markdown(None, scale, "its LaTeX build failed"))
        return False
    # next to book/intro.md, which includes pdf_link.md: MyST resolves the link from the includer
    copy = Path(shutil.copyfile(built, stage / "book" / PDF_NAME))
    link.write_text(pdf_link_markdown(copy, scale))
    log(f"PDF: {built}", flush=True)
    return True


def build_book(scale: str = "ci", chapters: list[str] | None = None, *, root: Path | None = None,
               path_output: Path | None = None, force: bool = False, pdf: str = "auto", log=print) -> int:
    """Run chapters, write scorecard/provenance, render the PDF and HTML. Returns the exit code (0 = all good).

    Non-zero when a chapter failed to execute, a claim failed at a scale where it
    must hold, Sphinx reported a warning, or a PDF that was attempted failed; everything
    that did work is kept. The HTML lands in ``<path_output>/_build/html`` (``path_output``
    defaults to the root), the PDF in ``<path_output>/_build/latex`` and in the HTML downloads, the clean
    notebooks that the Colab links open in ``<path_output>/_build/notebooks`` (published to a branch by the
    publish workflow; see ``overparam.book.downloads``).
    ``pdf``: "auto" (when TeX is installed), "yes" (required), "no".
    """
    if pdf not in PDF_CHOICES:
        raise ValueError(f"pdf must be one of {PDF_CHOICES}, got {pdf!r}")
    root = Path(root or repo_root())
    path_output = Path(path_output or root)
    vendor = root / "book" / "_vendor" / "mathjax" / "tex-chtml.js"
    if not vendor.exists():
        log(f"MathJax is not vendored ({vendor} missing): run `make vendor` (npm) first", flush=True)
        return 2
    runs: list[ChapterRun] = run_chapters(chapters, scale, root=root, force=force, log=log)
    folder = run_dir(scale, root)
    stage = stage_sources(folder, root, path_output / "_build" / f"stage-{scale}")
    collect_clean_notebooks(stage / "chapters", path_output / PUBLISHED_NOTEBOOKS, repository_url(root), book_commit(root))
    write_generated_pages(folder, root, stage)
    pdf_ok = render_pdf_page(stage, path_output, scale, pdf, log=log)
    log("rendering HTML with Jupyter Book ...", flush=True)
    html_rc = render_html(stage, path_output)
    failed = [r for r in runs if r.status == "failed"]
    claim_fail = [r for r in runs if r.claims_failed]
    log(f"book: {len(runs)} chapters, {len(failed)} failed to execute, "
        f"{sum(r.claims_failed for r in runs)} claims failed (plus {sum(r.claims_known_failures for r in runs)} "
        f"known, explained failures); HTML at {path_output / '_build' / 'html' / 'index.html'}",
        flush=True)
    _, total = counts(replication(scale, discover_chapters(root), root=root, runs_folder=folder))
    log(f"claims: {summary_line(total)} (see the scorecard; reported, not blocking)", flush=True)
    for r in failed:
        log(f"  FAILED {r.name} at cell {r.failed_cell}: {r.error}", flush=True)
    for r in claim_fail:
        log(f"  CLAIMS FAILED in {r.name}: {r.claims_failed} of {r.claims_total} (see the scorecard)", flush=True)
    if html_rc != 0:
        log(f"  Jupyter Book exited with {html_rc}", flush=True)
    if not pdf_ok:
        log("  the PDF failed (see above); the HTML book was still built", flush=True)
    return 1 if (failed or claim_fail or html_rc or not pdf_ok) else 0
