"""Command line: ``python -m overparam {list,run,build}``.

Examples::

    python -m overparam list
    python -m overparam run 01 --scale smoke
    python -m overparam run 01 --scale ci -p seed=3
    python -m overparam build --scale ci          # every chapter, then the HTML book
"""

from __future__ import annotations

import argparse
import sys

from .scales import SCALES


def _overrides(pairs: list[str]) -> dict:
    from .runner import parse_override

    return dict(parse_override(p) for p in pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="overparam", description="Run the chapters of the Overparameterized book.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list chapters and their parameters")
    run = sub.add_parser("run", help="execute one or more chapters")
    run.add_argument("chapters", nargs="+", help="chapter ids (01) or file stems")
    build = sub.add_parser("build", help="execute all chapters and render the HTML book")
    build.add_argument("--only", nargs="*", default=None, help="restrict to these chapters")
    for p in (run, build):
        p.add_argument("--scale", default="ci", help=f"one of {', '.join(SCALES)} (default ci)")
        p.add_argument("--force", action="store_true", help="execute even when the cache key is unchanged")
    run.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                     help="override a parameter declared in the chapter's parameters cell")
    args = parser.parse_args(argv)

    from .runner import declared_parameters, discover_chapters, run_chapters

    try:
        if args.command == "list":
            for cid, path in discover_chapters().items():
                print(f"{cid}  {path.stem}  parameters: {declared_parameters(path)}")
            return 0
        if args.command == "run":
            runs = run_chapters(args.chapters, args.scale, _overrides(args.param), force=args.force)
            return 1 if any(r.status == "failed" or r.claims_failed for r in runs) else 0
        from .book import build_book

        return build_book(args.scale, args.only, force=args.force)
    except ValueError as exc:  # bad input: say what was wrong, do nothing else
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
