"""Where each chapter's time goes: wall time, XLA compilations, compile seconds and run seconds, per chapter.

Each chapter is executed afresh at a scale (default ``smoke``) by the book's own runner
(``overparam.book.runner.run_chapter``, papermill, a new kernel per chapter) into a throw-away
run folder, so the book's ``_build/runs`` is not touched. JAX's monitoring events are collected
inside the chapter's kernel by a ``sitecustomize.py`` written to a temporary folder on
``PYTHONPATH`` (``jax_events.py`` says which events and how they are counted).

Columns:
  wall s       the runner's wall time: kernel start, imports, every cell, the results written
  notebook s   from the chapter's ClaimRecorder to ``claims.save()`` (its own ``wall_time_s``)
  cells s      every cell's execution time, summed (papermill's per-cell durations): the kernel's work
  compiles     XLA compilations (backend compile events minus persistent-cache hits)
  trace/lower/backend s   seconds in Python tracing, lowering to MLIR, and XLA compilation
  compile s    trace + lower + backend
  run s        cells s - compile s: everything else (execution, imports, sympy, plotting, Python)
  top          the function compiled most often, with its count

By default the persistent compilation cache is switched off in the kernel (``--cache off``):
every chapter is measured cold, as a reader's first run is. ``--cache on`` uses the book's cache
(``_build/jax_cache``), as a rebuild would. Timings on a shared machine are inflated by the
other load (the load average is printed).

Run: ``python benchmarks/chapters_bench.py [--scale smoke] [--chapters 02 05] [--cache off] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import jax_events
from common import print_table

COLUMNS = [("chapter", "chapter", ""), ("status", "status", ""), ("wall_s", "wall s", ".1f"),
           ("notebook_s", "notebook s", ".1f"), ("cells_s", "cells s", ".1f"), ("compilations", "compiles", "d"),
           ("trace_s", "trace s", ".1f"), ("lower_s", "lower s", ".1f"), ("backend_s", "backend s", ".1f"), ("compile_s", "compile s", ".1f"),
           ("run_s", "run s", ".1f"), ("top", "top", "")]


@contextmanager
def _env(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cell_seconds(notebook: Path) -> float:
    """Sum of the cells' execution times that papermill records in an executed notebook (``metadata.papermill.duration``)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    return sum(c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0 for c in cells)


def bench_chapter(chapter: str, scale: str = "smoke", *, cache: bool = False, workdir: Path | None = None,
                  timeout_s: int | None = 1800) -> dict:
    """Run one chapter at ``scale`` with compile-event collection; return one table row (see the module docstring).

    ``workdir``: where the throw-away run folder (``runs/<scale>``), event log and sitecustomize go (a
    temporary folder if None). The row also carries ``claims_total``, ``claims_failed``, ``error``,
    the event ``summary`` and ``device_memory``: the kernel's ``memory_stats()`` per device at exit
    (``peak_bytes_in_use`` on a GPU; None on the CPU backend or if the kernel did not exit cleanly).
    """
    from overparam.book.runner import resolve_chapter, run_chapter

    source = resolve_chapter(chapter)  # ValueError for an unknown chapter before anything runs
    with tempfile.TemporaryDirectory(prefix="chapters-bench-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        site = work / "site"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(jax_events.sitecustomize_source())
        log, memory = work / f"{source.stem}.{scale}.events", work / f"{source.stem}.{scale}.memory.json"
        log.unlink(missing_ok=True)
        memory.unlink(missing_ok=True)
        pythonpath = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
        with _env(PYTHONPATH=pythonpath, **{jax_events.EVENTS_ENV: str(log), jax_events.MEMORY_ENV: str(memory),
                                           jax_events.NO_CACHE_ENV: "0" if cache else "1"}):
            run = run_chapter(source.stem, scale, root=None, out=work / "runs" / scale, force=True,
                              timeout_s=timeout_s)
        summary = jax_events.summarize(log)
        results = work / "runs" / scale / "results" / f"{run.chapter}.json"
        device_memory = json.loads(memory.read_text()) if memory.exists() else None
        notebook_s = json.loads(results.read_text())["wall_time_s"] if run.status == "ok" and results.exists() else None
        cells_s = cell_seconds(Path(run.notebook)) if run.notebook else None
    top = f"{summary['top'][0][0]} x{summary['top'][0][1]}" if summary["top"] else None
    return dict(chapter=source.stem, status=run.status, wall_s=run.wall_time_s, notebook_s=notebook_s, cells_s=cells_s,
                compilations=summary["compilations"], trace_s=summary["trace_s"], lower_s=summary["lower_s"],
                backend_s=summary["backend_s"], compile_s=summary["compile_s"],
                run_s=None if cells_s is None else cells_s - summary["compile_s"], top=top,
                claims_total=run.claims_total, claims_failed=run.claims_failed, error=run.error, summary=summary,
                device_memory=device_memory)


def main(argv=None):
    from overparam.book.runner import discover_chapters
    from overparam.book.scales import SCALES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument("--chapters", nargs="+", help="chapter ids or stems (default: all)")
    parser.add_argument("--cache", choices=("off", "on"), default="off",
                        help="persistent compilation cache in the kernel (off: a cold run)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    chapters = args.chapters or list(discover_chapters())
    print(f"scale {args.scale}, persistent compilation cache {args.cache}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    rows = []
    for ch in chapters:
        row = bench_chapter(ch, args.scale, cache=args.cache == "on")
        rows.append(row)
        print(f"  {row['chapter']}: {row['status']} in {row['wall_s']:.1f} s, {row['compilations']} compilations, "
              f"{row['compile_s']:.1f} s compiling" + (f" ({row['error']})" if row["error"] else ""), flush=True)
    total = {k: sum(r[k] or 0 for r in rows) for k in ("wall_s", "notebook_s", "cells_s", "compilations", "trace_s", "lower_s",
                                                      "backend_s", "compile_s", "run_s")}
    print()
    print_table(rows + [dict(chapter="total", status="", **total)], COLUMNS)
    if args.json:
        args.json.write_text(json.dumps(dict(scale=args.scale, cache=args.cache, rows=rows), indent=2, default=str))
    return rows


if __name__ == "__main__":
    sys.exit(0 if all(r["status"] == "ok" for r in main()) else 1)
