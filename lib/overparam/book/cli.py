"""Command line: ``python -m overparam {list,run,build,sweep,student,grade,lab}``.

Examples::

    python -m overparam list
    python -m overparam run 01 --scale smoke
    python -m overparam run 01 --scale ci -p seed=3
    python -m overparam build --scale ci          # every chapter, then the HTML book
    python -m overparam sweep --scale ci --seeds 0,1,2 --chapters 01,03   # replication across seeds
    python -m overparam sweep --scale full --seeds 0,1,2 --engine ray      # on a Ray cluster
    python -m overparam student --out student     # the student edition (.ipynb, solutions removed)
    python -m overparam grade submissions/*.ipynb # autograde filled-in student notebooks
    python -m overparam lab                       # JupyterLab: chapters/NN_topic.md open as notebooks
"""

from __future__ import annotations

import argparse
import sys

from overparam.book.scales import SCALES


def _overrides(pairs: list[str]) -> dict:
    from overparam.book.runner import parse_override

    return dict(parse_override(p) for p in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overparam", description="Run the chapters of the Overparameterized book.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list chapters and their parameters")
    run = sub.add_parser("run", help="execute one or more chapters")
    run.add_argument("chapters", nargs="+", help="chapter ids (01) or file stems")
    build = sub.add_parser("build", help="execute all chapters and render the HTML book")
    build.add_argument("--only", nargs="*", default=None, help="restrict to these chapters")
    build.add_argument("--pdf", choices=("auto", "yes", "no"), default="auto",
                       help="also render the PDF: auto = when TeX is installed (default), yes = required, no")
    for p in (run, build):
        p.add_argument("--scale", default="ci", help=f"one of {', '.join(SCALES)} (default ci)")
        p.add_argument("--force", action="store_true", help="execute even when the cache key is unchanged")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a parameter declared in the chapter's parameters cell")
    sweep = sub.add_parser("sweep", help="run chapters over a grid of seeds (replication); see overparam.book.sweep")
    sweep.add_argument("--scale", default="ci", help=f"one or more of {', '.join(SCALES)}, comma-separated (default ci)")
    sweep.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2")
    sweep.add_argument("--chapters", default=None, help="comma-separated chapter ids or stems (default: all)")
    sweep.add_argument("--engine", default="local", help="local (default) or ray")
    sweep.add_argument("--jobs", type=int, default=1, help="local engine: runs at a time (default 1)")
    sweep.add_argument("--force", action="store_true", help="execute even when the cache key is unchanged")
    sweep.add_argument("--ray-address", default=None,
                       help="ray engine: cluster address (default: $RAY_ADDRESS, a cluster running here, or a new local one)")
    sweep.add_argument("--retries", type=int, default=2, help="ray engine: retries of a task whose worker died")
    sweep.add_argument("--cpus-per-task", type=float, default=1, help="ray engine: CPUs per task (default 1)")
    student = sub.add_parser("student", help="write the student edition: one .ipynb per chapter, solutions removed")
    student.add_argument("--out", default="student", help="output folder (default: student)")
    student.add_argument("--scale", default=None, help="default scale written into each notebook (default: keep ci)")
    grade = sub.add_parser("grade", help="grade filled-in student notebooks against the instructor's checks")
    grade.add_argument("submissions", nargs="+", help="notebooks, or folders of notebooks")
    grade.add_argument("--chapter", default=None, help="chapter id; default: from each file name (NN_...)")
    grade.add_argument("--scale", default="smoke", help="scale to execute submissions at (default smoke)")
    grade.add_argument("--json", default=None, help="also write the reports to this JSON file")
    lab = sub.add_parser("lab", help="JupyterLab on the repository: chapters/NN_topic.md open as notebooks (jupytext)")
    lab.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: 8888 or the next free one)")
    lab.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    args = parser.parse_args(argv)

    from overparam.book.runner import declared_parameters, discover_chapters, run_chapters

    try:
        if args.command == "list":
            for cid, path in discover_chapters().items():
                print(f"{cid}  {path.stem}  parameters: {declared_parameters(path)}")
            return 0
        if args.command == "student":
            return _student(args)
        if args.command == "lab":
            from overparam.book.lab import run_lab
            from overparam.book.provenance import repo_root

            run_lab(repo_root(), port=args.port, open_browser=not args.no_browser)  # replaces this process
            return 0
        if args.command == "grade":
            return _grade(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "run":
            runs = run_chapters(args.chapters, args.scale, _overrides(args.param), force=args.force)
            return 1 if any(r.status == "failed" or r.claims_failed for r in runs) else 0
        from overparam.book.build import build_book

        return build_book(args.scale, args.only, force=args.force, pdf=args.pdf)
    except ValueError as exc:  # bad input: say what was wrong, do nothing else
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _sweep(args) -> int:
    """Run the grid, then print the replication table of each scale; 1 when a run failed to execute."""
    from overparam.book.runner import discover_chapters
    from overparam.book.sweep import parse_list, replication, replication_report, sweep

    results = sweep(args.scale, args.seeds, args.chapters, engine=args.engine, jobs=args.jobs, force=args.force,
                    retries=args.retries, ray_address=args.ray_address, cpus_per_task=args.cpus_per_task)
    for scale in parse_list(args.scale):
        ran = {r.task.cid for r in results if r.task.scale == scale}
        chapters = {cid: path for cid, path in discover_chapters().items() if cid in ran}
        print(f"\nreplication at scale {scale}:\n" + replication_report(replication(scale, chapters)), flush=True)
    failed = [r for r in results if r.run.status == "failed"]
    return 1 if failed else 0


def _student(args) -> int:
    from pathlib import Path

    from overparam.book.exercises import build_student_edition
    from overparam.book.runner import discover_chapters
    from overparam.book.scales import check_scale

    if args.scale is not None:
        check_scale(args.scale)
    written = build_student_edition(discover_chapters(), Path(args.out), args.scale)
    for path in written:
        print(f"wrote {path}")
    return 0


def _grade(args) -> int:
    import json
    from pathlib import Path

    from overparam.book.exercises import grade_notebook, parse_exercises
    from overparam.book.runner import resolve_chapter
    from overparam.book.scales import check_scale

    check_scale(args.scale)
    files = []
    for item in map(Path, args.submissions):
        files += sorted(item.glob("*.ipynb")) if item.is_dir() else [item]
    if not files:
        raise ValueError(f"no notebooks found in {args.submissions}")
    reports = []
    for path in files:
        chapter = args.chapter or path.name[:2]
        source = resolve_chapter(chapter)
        report = grade_notebook(path, parse_exercises(source.read_text()), scale=args.scale, cwd=source.parent)
        print(report.text(), flush=True)
        reports.append(report)
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"submission": r.submission, "score": r.score,
              "exercises": [vars(x) for x in r.results]} for r in reports], indent=2))
    return 0

