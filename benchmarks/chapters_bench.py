"""Per-chapter execution time of the last build at a scale, against the budget (3 min per chapter,
20 min for the book at ci scale). Reads ``_build/runs/<scale>/{status,results}``; run the build first.
Run: ``python benchmarks/chapters_bench.py [--scale ci]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import print_table

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = {"smoke": 60, "ci": 180, "full": None}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="ci")
    args = parser.parse_args()
    folder = ROOT / "_build" / "runs" / args.scale
    if not (folder / "status").exists():
        raise SystemExit(f"no build found in {folder}: run `python -m overparam build --scale {args.scale}` first")
    rows, total = [], 0.0
    budget = BUDGET_S.get(args.scale)
    for path in sorted((folder / "status").glob("*.json")):
        st = json.loads(path.read_text())
        res_path = folder / "results" / path.name
        inner = json.loads(res_path.read_text())["wall_time_s"] if res_path.exists() else None
        total += st["wall_time_s"] or 0.0
        rows.append(dict(chapter=st["name"], status=st["status"], wall=st["wall_time_s"], inner=inner,
                         within="yes" if budget is None or (st["wall_time_s"] or 0) <= budget else "NO"))
    print(f"scale {args.scale}: per-chapter budget {budget} s (wall includes kernel start-up; 'cached' shows the last run)")
    print_table(rows, [("chapter", "chapter", ""), ("status", "status", ""), ("wall", "wall s", ".1f"),
                       ("inner", "in-notebook s", ".1f"), ("within", "within budget", "")])
    print(f"total: {total:.0f} s" + (" (book budget 1200 s)" if args.scale == "ci" else ""))


if __name__ == "__main__":
    main()
