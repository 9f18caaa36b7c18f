"""Replication across seeds: run chapters over a grid of scales x seeds, on one machine or on Ray.

    python -m overparam sweep --scale ci --seeds 0,1,2 [--chapters 01,03] [--engine local|ray] [--jobs 2]

Where runs go: a chapter's *registered* seed (the ``seed`` its parameters cell declares) is the
book's own run, ``_build/runs/<scale>/``; any other seed ``k`` is a replication and goes to
``_build/runs/<scale>/replicas/seed-<k>/``, with the same layout (``runner``). Every
(chapter, scale, seed) is one ``runner.run_chapter`` with the override ``seed=k``: the seed is
part of the cache key, so finished runs are skipped, and a sweep killed midway and started again
executes only the runs that had not finished (a run counts as finished once its key file is
written, which happens last).

Engines: ``local`` (default) runs the grid here, one run at a time or ``jobs`` at a time in a
process pool; ``ray`` sends one task per (chapter, seed) to a Ray cluster
(``overparam.book.cluster``; needs ``pip install -e .[cluster]``). Both fill the same folders, so
the scorecard and the book do not depend on the engine.

Reading a sweep back (``replication``): the registered run and every replication run whose cache
key matches the current code are collected per chapter, and each claim is judged with
``claims.assess`` (fragile, underpowered, cannot discriminate, missing control: the terms are
defined in ``overparam.book.claims``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from overparam.book.claims import (CANNOT_DISCRIMINATE, FAIL, FRAGILE, MISSING_CONTROL, UNDERPOWERED, Assessment,
                                   assess)
from overparam.book.provenance import repo_root
from overparam.book.runner import (CHAPTER_RE, ChapterRun, cache_key, declared_parameters, discover_chapters,
                                   resolve_chapter, run_chapter, run_dir, validate_parameters)
from overparam.book.scales import check_scale

ENGINES = ("local", "ray")
REPLICAS = "replicas"


@dataclass(frozen=True)
class SweepTask:
    """One run of the grid: chapter ``cid`` (source ``stem``) at ``scale`` and ``seed``, into folder ``out``."""

    cid: str
    stem: str
    scale: str
    seed: int
    registered: bool
    out: Path

    @property
    def label(self) -> str:
        return f"{self.stem} ({self.scale}, seed {self.seed}{', registered' if self.registered else ''})"


@dataclass(frozen=True)
class SweepResult:
    task: SweepTask
    run: ChapterRun


# ---------------------------------------------------------------- the grid
def parse_seeds(seeds: str | Iterable[int]) -> tuple[int, ...]:
    """``"0,1,2"`` (or a sequence of ints) as distinct non-negative ints, in the order given."""
    items = [s.strip() for s in seeds.split(",")] if isinstance(seeds, str) else list(seeds)
    values = []
    for item in items:
        if isinstance(item, bool) or not (isinstance(item, int) or (isinstance(item, str) and item.isdigit())):
            raise ValueError(f"seeds must be a comma-separated list of non-negative integers (e.g. 0,1,2); "
                             f"got {seeds!r} (bad entry {item!r})")
        values.append(int(item))
    if not values:
        raise ValueError("seeds is empty: give at least one seed, e.g. --seeds 0,1,2")
    if len(set(values)) != len(values):
        raise ValueError(f"seeds {seeds!r} lists a seed twice")
    return tuple(values)


def parse_list(text: str | Iterable[str] | None) -> list[str] | None:
    """``"01,03"`` (or a list) as a list of names; None or empty for all."""
    if text is None:
        return None
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    if any(not t for t in items):
        raise ValueError(f"empty entry in {text!r}: give names separated by commas, e.g. 01,03")
    return items or None


def registered_seed(source: Path) -> int:
    """The seed a chapter declares in its parameters cell (ValueError when it declares none or a non-int)."""
    seed = declared_parameters(source).get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"chapter {source.stem} cannot be replicated over seeds: its parameters cell must declare "
                         f"an integer `seed`, got {seed!r}")
    return seed


def seed_folder(scale: str, seed: int, registered: int, root: Path | None = None) -> Path:
    """The run folder of ``seed``: the book's own for the registered seed, else ``replicas/seed-<k>``."""
    base = run_dir(scale, root)
    return base if seed == registered else base / REPLICAS / f"seed-{seed}"


def plan(scales: str | Iterable[str], seeds: str | Iterable[int], chapters: str | Iterable[str] | None = None, *,
         root: Path | None = None) -> list[SweepTask]:
    """Every (scale, seed, chapter) run of the grid, validated; nothing is written.

    Ordered scale by scale, then seed by seed (so the registered runs, usually seed 0, come first),
    then by chapter. ValueError names an unknown scale or chapter, a bad seed list, or a chapter
    that declares no integer seed.
    """
    root = Path(root or repo_root())
    scale_list = parse_list(scales) or []
    if not scale_list:
        raise ValueError("give at least one scale")
    for s in scale_list:
        check_scale(s)
    seed_list = parse_seeds(seeds)
    names = parse_list(chapters)
    sources = [resolve_chapter(c, root) for c in names] if names else list(discover_chapters(root).values())
    if len({s.stem for s in sources}) != len(sources):
        raise ValueError(f"chapters {chapters!r} names a chapter twice")
    tasks = []
    for scale in scale_list:
        for seed in seed_list:
            for source in sources:
                reg = registered_seed(source)
                validate_parameters(source, scale, {"seed": seed})
                cid = CHAPTER_RE.match(source.name).group(1)
                tasks.append(SweepTask(cid, source.stem, scale, seed, seed == reg,
                                       seed_folder(scale, seed, reg, root)))
    return tasks


def check_engine(engine: str, jobs: int = 1, retries: int = 2, cpus_per_task: float = 1) -> None:
    """ValueError for an unknown engine, a bad ``jobs``/``retries``/``cpus_per_task``, or Ray missing for ``ray``."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not a known engine; allowed: {', '.join(ENGINES)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if isinstance(cpus_per_task, bool) or not isinstance(cpus_per_task, (int, float)) or not cpus_per_task > 0:
        raise ValueError(f"cpus_per_task must be a positive number, got {cpus_per_task!r}")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError("engine 'ray' needs Ray, which is not installed: pip install -e '.[cluster]' "
                         "(or make install-cluster)")


# ---------------------------------------------------------------- running it
def _run_local(task: SweepTask, root: Path, force: bool) -> ChapterRun:
    return run_chapter(task.stem, task.scale, {"seed": task.seed}, root=root, out=task.out, force=force)


def _progress(i: int, n: int, result: SweepResult, elapsed: float) -> str:
    run = result.run
    if run.status == "failed":
        where = f" at cell {run.failed_cell}" if run.failed_cell is not None else ""
        return f"[{i}/{n}] {result.task.label} FAILED{where} after {run.wall_time_s:.1f} s: {run.error}"
    held = run.claims_total - run.claims_failed - run.claims_known_failures
    return (f"[{i}/{n}] {result.task.label} {run.status} in {run.wall_time_s:.1f} s "
            f"({held}/{run.claims_total} claims hold); total elapsed {elapsed:.0f} s")


def sweep(scales: str | Iterable[str], seeds: str | Iterable[int], chapters: str | Iterable[str] | None = None, *,
          engine: str = "local", jobs: int = 1, root: Path | None = None, force: bool = False, retries: int = 2,
          ray_address: str | None = None, ray_init: dict[str, Any] | None = None, cpus_per_task: float = 1,
          log=print) -> list[SweepResult]:
    """Run the grid (see ``plan``) with ``engine``; returns one result per run, in grid order.

    Everything is validated before the first run starts. A run that fails to execute is reported
    (status ``failed``) and does not stop the others. ``retries``, ``ray_address``, ``ray_init``
    (extra ``ray.init`` arguments) and ``cpus_per_task`` apply to the Ray engine.
    """
    root = Path(root or repo_root())
    check_engine(engine, jobs, retries, cpus_per_task)
    tasks = plan(scales, seeds, chapters, root=root)
    t0, done = time.perf_counter(), {}

    def report(result: SweepResult) -> None:
        done[result.task] = result
        log(_progress(len(done), len(tasks), result, time.perf_counter() - t0), flush=True)

    if engine == "ray":
        from overparam.book.cluster import run_on_ray

        run_on_ray(tasks, root, force=force, retries=retries, address=ray_address, init_kwargs=ray_init,
                   cpus_per_task=cpus_per_task, report=lambda task, run: report(SweepResult(task, run)))
    elif jobs == 1:
        for task in tasks:
            report(SweepResult(task, _run_local(task, root, force)))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: the driver may hold threads (and, in tests, JAX) that fork would copy
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_run_local, task, root, force): task for task in tasks}
            for fut in as_completed(futures):
                report(SweepResult(futures[fut], fut.result()))
    return [done[t] for t in tasks]


# ---------------------------------------------------------------- reading it back
@dataclass(frozen=True)
class ChapterReplication:
    """One chapter at one scale: its registered results and the state of each replication seed.

    ``replicas``: seed -> that run's results (current cache key only); ``problems``: seed -> why a
    replication seed found on disk is not used (failed to execute, or from other code/parameters).
    """

    cid: str
    registered: dict[str, Any] | None
    replicas: dict[int, dict[str, Any]]
    problems: dict[int, str] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        """Every seed with a usable run, the registered one first."""
        first = [self.registered["seed"]] if self.registered and isinstance(self.registered.get("seed"), int) else []
        return first + [k for k in sorted(self.replicas) if k not in first]

    def assessments(self) -> list[tuple[dict[str, Any], Assessment]]:
        """Each claim of the registered run with its ``claims.assess`` verdict across the seeds."""
        if not self.registered:
            return []
        seed = self.registered.get("seed")
        by_seed = {k: {c["id"]: c for c in res["claims"]} for k, res in self.replicas.items()}
        out = []
        for c in self.registered["claims"]:
            others = {k: claims.get(c["id"]) for k, claims in by_seed.items()}
            out.append((c, assess(c, seed if isinstance(seed, int) else -1, others)))
        return out


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def replication(scale: str, chapters: dict[str, Path] | None = None, *, root: Path | None = None,
                runs_folder: Path | None = None) -> dict[str, ChapterReplication]:
    """Per chapter id: the registered run in ``runs_folder`` (default ``_build/runs/<scale>``) and its replicas.

    A replication run is used only when its key file matches the cache key of the current chapter,
    code and pins at that seed: runs left from older code are listed in ``problems`` instead.
    """
    root = Path(root or repo_root())
    chapters = chapters if chapters is not None else discover_chapters(root)
    folder = Path(runs_folder or run_dir(scale, root))
    seed_dirs = sorted((folder / REPLICAS).glob("seed-*")) if (folder / REPLICAS).exists() else []
    out = {}
    for cid, source in chapters.items():
        registered = _read(folder / "results" / f"{cid}.json")
        replicas, problems = {}, {}
        for d in seed_dirs:
            suffix = d.name.removeprefix("seed-")
            if not suffix.isdigit():
                continue
            seed = int(suffix)
            status = _read(d / "status" / f"{cid}.json") or {}
            results = _read(d / "results" / f"{cid}.json")
            if status.get("status") == "failed":
                problems[seed] = f"failed to execute: {status.get('error', '')}"
                continue
            if results is None:
                continue
            key_file = d / "keys" / f"{cid}.key"
            try:
                current = cache_key(source, validate_parameters(source, scale, {"seed": seed}), root)
            except ValueError as exc:
                problems[seed] = f"cannot be checked: {exc}"
                continue
            if not key_file.exists() or key_file.read_text() != current:
                problems[seed] = "from other code, pins or parameters (run the sweep again)"
                continue
            replicas[seed] = results
        out[cid] = ChapterReplication(cid, registered, replicas, problems)
    return out



@dataclass
class Counts:
    """Claim counts of one chapter (or the whole book): flags overlap, and count enforced claims only."""

    claims: int = 0
    enforced: int = 0
    pass_everywhere: int = 0
    fail_registered: int = 0
    fragile: int = 0
    underpowered: int = 0
    cannot_discriminate: int = 0
    missing_control: int = 0

    def add(self, claim: dict[str, Any], a: Assessment) -> None:
        self.claims += 1
        if not a.enforced:
            return
        self.enforced += 1
        self.pass_everywhere += a.pass_everywhere
        self.fail_registered += claim["status"] == FAIL
        self.fragile += FRAGILE in a.flags
        self.underpowered += UNDERPOWERED in a.flags
        self.cannot_discriminate += CANNOT_DISCRIMINATE in a.flags
        self.missing_control += MISSING_CONTROL in a.flags

    def __iadd__(self, other: "Counts") -> "Counts":
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


COUNT_HEADERS = ("claims", "enforced", "pass everywhere", "fail at registered seed", "fragile", "underpowered",
                 "cannot discriminate", "missing control")


def counts(chapters: dict[str, ChapterReplication]) -> tuple[dict[str, Counts], Counts]:
    """Per chapter and total ``Counts``."""
    per, total = {}, Counts()
    for cid, rep in chapters.items():
        c = Counts()
        for claim, a in rep.assessments():
            c.add(claim, a)
        per[cid] = c
        total += c
    return per, total


def summary_line(total: Counts) -> str:
    """One sentence: how many claims pass everywhere, are fragile, underpowered, cannot discriminate, lack a control."""
    return (f"{total.pass_everywhere} of {total.enforced} enforced claims pass at every seed; "
            f"{total.fragile} fragile, {total.underpowered} underpowered, {total.cannot_discriminate} cannot "
            f"discriminate, {total.missing_control} without a control where one is required")


def _fmt(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def replication_report(chapters: dict[str, ChapterReplication]) -> str:
    """Plain-text table of ``counts`` per chapter, then every fragile claim with its per-seed values."""
    per, total = counts(chapters)
    rows = [("chapter", "seeds") + COUNT_HEADERS]
    for cid, c in per.items():
        seeds = ",".join(map(str, chapters[cid].seeds)) or "-"
        rows.append((cid, seeds) + tuple(str(getattr(c, f)) for f in Counts.__dataclass_fields__))
    rows.append(("all", "") + tuple(str(getattr(total, f)) for f in Counts.__dataclass_fields__))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    fragile = [(cid, claim, a) for cid, rep in chapters.items() for claim, a in rep.assessments() if a.fragile]
    if fragile:
        lines += ["", "fragile claims (value at each seed; * = does not hold):"]
        for cid, claim, a in fragile:
            vals = ", ".join(f"seed {k}: {_fmt(v)}{'' if a.outcomes[k] else '*'}" for k, v in a.values.items())
            lines.append(f"  {cid} {claim['id']}: {vals}")
    for cid, rep in chapters.items():
        for seed, why in sorted(rep.problems.items()):
            lines.append(f"  note: chapter {cid} seed {seed} not used: {why}")
    lines += ["", summary_line(total) + " (reported, not blocking)."]
    return "\n".join(lines)

