"""Execute chapters: jupytext MyST source -> notebook -> papermill with parameters.

One run folder per scale (``_build/runs/<scale>``) holds what a chapter run
produces::

    notebooks/<name>.ipynb         last successful executed notebook
    notebooks/<name>.failed.ipynb  last failed attempt (with the error cell)
    results/<id>.json              claims + provenance, written by the chapter
    status/<id>.json               outcome of the last attempt (ok/cached/failed)
    figures/<id>/*.png             figures saved by the chapter
    keys/<id>.key                  cache key of the last successful run
    locks/<id>.lock                held while the chapter runs (one run of a chapter at a time)

A chapter is re-executed only when its cache key changes: the key hashes the
chapter source, its parameters, every file of ``lib/overparam`` and the pinned
requirements. A failing chapter never overwrites the last good notebook.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from overparam.book.claims import FAIL, RESULTS_DIR_ENV
from overparam.book.plotting import FIGURES_DIR_ENV
from overparam.book.provenance import repo_root
from overparam.book.scales import check_scale

CHAPTER_RE = re.compile(r"^(\d\d)_[a-z0-9_]+\.md$")
PINNED_FILES = ("requirements.txt", "requirements-runtime.txt", "constraints.txt")


@dataclass(frozen=True)
class ChapterRun:
    """Outcome of one chapter run. ``status``: ok, cached or failed."""

    chapter: str
    name: str
    scale: str
    status: str
    wall_time_s: float
    notebook: str | None
    error: str | None = None
    failed_cell: int | None = None
    claims_failed: int = 0
    claims_total: int = 0
    claims_known_failures: int = 0


# ---------------------------------------------------------------- discovery
def discover_chapters(root: Path | None = None) -> dict[str, Path]:
    """Map chapter id (``"01"``) to its source ``chapters/NN_topic.md``, in order."""
    root = Path(root or repo_root())
    found: dict[str, Path] = {}
    for path in sorted((root / "chapters").glob("*.md")):
        m = CHAPTER_RE.match(path.name)
        if m:
            if m.group(1) in found:
                raise ValueError(f"two chapters share id {m.group(1)}: {found[m.group(1)].name} and {path.name}")
            found[m.group(1)] = path
    return found


def resolve_chapter(chapter: str, root: Path | None = None) -> Path:
    """The source of ``chapter``, given as id (``1``, ``01``) or file stem; ValueError lists the known ones."""
    chapters = discover_chapters(root)
    key = chapter.zfill(2) if chapter.isdigit() else chapter
    for cid, path in chapters.items():
        if key in (cid, path.stem, path.name):
            return path
    known = ", ".join(f"{cid} ({p.stem})" for cid, p in chapters.items()) or "none"
    raise ValueError(f"unknown chapter {chapter!r}; known chapters: {known}")


def read_notebook(source: Path):
    """Read a jupytext MyST notebook as an nbformat notebook."""
    import jupytext

    return jupytext.read(source)


def declared_parameters(source: Path) -> dict[str, Any]:
    """Names and default values of the cell tagged ``parameters`` (literal assignments only)."""
    nb = read_notebook(source)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{source.name}: expected exactly one code cell tagged 'parameters', found {len(cells)}")
    params: dict[str, Any] = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            params[node.targets[0].id] = ast.literal_eval(node.value)
    if "scale" not in params:
        raise ValueError(f"{source.name}: the parameters cell must declare 'scale'")
    return params


def validate_parameters(source: Path, scale: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full parameter set for a run; ValueError on an unknown scale or parameter name.

    Checked before any work starts, so a typo costs nothing.
    """
    check_scale(scale)
    declared = declared_parameters(source)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for chapter {source.stem}; "
            f"allowed: {', '.join(sorted(declared))}"
        )
    if "scale" in overrides and overrides["scale"] != scale:
        raise ValueError("give the scale once (as scale=...), not also as a parameter override")
    for name, value in overrides.items():
        default = declared[name]
        if default is not None and value is not None and type(value) is not type(default) and not (
            isinstance(default, float) and isinstance(value, int)
        ):
            raise ValueError(
                f"parameter {name!r} of chapter {source.stem} takes a {type(default).__name__} "
                f"(default {default!r}), got {value!r}"
            )
    return {**declared, **overrides, "scale": scale}


def parse_override(text: str) -> tuple[str, Any]:
    """``name=value`` from the command line; the value is a Python literal or a plain string."""
    if "=" not in text:
        raise ValueError(f"a parameter override looks like name=value, got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return name.strip(), value


# ---------------------------------------------------------------- cache key
def _hash_files(h, paths) -> None:
    for p in paths:
        h.update(str(p.name).encode())
        h.update(p.read_bytes())


def cache_key(source: Path, params: dict[str, Any], root: Path | None = None) -> str:
    """Hash of what determines a chapter's output: source, parameters, ``lib/`` and pinned versions."""
    root = Path(root or repo_root())
    h = hashlib.sha256()
    h.update(source.read_bytes())
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    lib = root / "lib"
    _hash_files(h, sorted(p for p in lib.rglob("*.py") if "__pycache__" not in p.parts))
    _hash_files(h, [root / f for f in PINNED_FILES if (root / f).exists()])
    return h.hexdigest()


# ---------------------------------------------------------------- execution
def run_dir(scale: str, root: Path | None = None) -> Path:
    return Path(root or repo_root()) / "_build" / "runs" / check_scale(scale)


# The persistent XLA compilation cache every chapter kernel shares (the book, the sweep, the exercise
# checks): a program compiled in one kernel is read back, not compiled again, in the next one that
# needs it. Every program is kept (CACHE_MIN_COMPILE_S = 0): a chapter compiles hundreds of small
# programs of 20-100 ms each, which together are most of its time at smoke. Measured on chapters 05
# and 08 at smoke: 295 programs, 2.7 MB on disk; the second run compiled none (backend seconds 34 -> 1).
JAX_CACHE = Path("_build") / "jax_cache"
CACHE_MIN_COMPILE_S = 0.0


def jax_cache_environment(root: Path | None = None) -> dict[str, str]:
    """Environment variables that point a chapter kernel's JAX at the shared cache ``<root>/_build/jax_cache``."""
    cache_dir = Path(root or repo_root()) / JAX_CACHE
    cache_dir.mkdir(parents=True, exist_ok=True)
    return {"JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(CACHE_MIN_COMPILE_S)}


# At smoke the numbers are illustrative and the sizes tiny: compilation is most of a chapter's time,
# so XLA compiles without its backend optimizations there. Measured on chapters 05, 08 and 09, cold:
# 70.1 s -> 50.6 s, XLA backend seconds 37.9 -> 20.2 for the same 727 programs. ci and full are
# compiled as usual.
SMOKE_XLA_FLAGS = "--xla_backend_optimization_level=0"


def kernel_environment(scale: str, root: Path | None = None) -> dict[str, str]:
    """Environment variables of a kernel that executes a chapter at ``scale``: the shared compilation
    cache (``jax_cache_environment``) and, at smoke, ``SMOKE_XLA_FLAGS`` added to any ``XLA_FLAGS``."""
    env = jax_cache_environment(root)
    if check_scale(scale) == "smoke":
        env["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), SMOKE_XLA_FLAGS]))
    return env


@contextmanager
def scoped_environment(**values: str):
    """Set environment variables (inherited by the kernels started inside) and restore them on exit."""
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


def _kernel_config():
    """Kernel settings for executing chapters: the kernel's channels are encrypted (CurveZMQ) when its
    kernelspec supports it, which also keeps ipykernel from warning, at every chapter, that it runs
    over TCP without encryption."""
    from traitlets.config import Config

    import zmq

    return Config({"KernelManager": {"transport_encryption": "auto"}}) if zmq.has("curve") else Config()


_ENGINE = "overparam"


def _register_engine() -> str:
    """Register (once) a papermill engine that reports each finished code cell to ``cell_progress(done, total)``
    (an optional keyword of ``papermill.execute_notebook``); returns its name."""
    from papermill.engines import NBClientEngine, papermill_engines

    if _ENGINE in papermill_engines._engines:
        return _ENGINE

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, cell_progress=None, **kwargs):
            if cell_progress is not None:
                code = {i for i, c in enumerate(nb_man.nb.cells) if c.cell_type == "code"}
                done, complete = set(), nb_man.cell_complete

                def cell_complete(cell, cell_index=None, **kw):
                    result = complete(cell, cell_index=cell_index, **kw)
                    if cell_index in code:
                        done.add(cell_index)
                        cell_progress(len(done), len(code))
                    return result

                nb_man.cell_complete = cell_complete
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register(_ENGINE, ProgressEngine)
    return _ENGINE


def _hide_injected_cell(nb_path: Path) -> None:
    """Remove papermill's injected-parameters cell from the rendered page (the scale shows in the claims)."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
    nbformat.write(nb, nb_path)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy so that ``dst`` is either its old or its new content, never half written."""
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    tmp.replace(path)


def _cached_run(source: Path, scale: str, key: str, out: Path) -> ChapterRun | None:
    """The run in ``out`` when it finished with cache key ``key`` (notebook, results and key present), else None."""
    cid = CHAPTER_RE.match(source.name).group(1)
    key_file, final_nb = out / "keys" / f"{cid}.key", out / "notebooks" / f"{source.stem}.ipynb"
    results, status_file = out / "results" / f"{cid}.json", out / "status" / f"{cid}.json"
    if not (key_file.exists() and key_file.read_text() == key and final_nb.exists() and results.exists()):
        return None
    failed, known, total = _claim_counts(results)
    prev = json.loads(status_file.read_text()) if status_file.exists() else {}
    return ChapterRun(cid, source.stem, scale, "cached", prev.get("wall_time_s", 0.0), str(final_nb),
                      claims_failed=failed, claims_total=total, claims_known_failures=known)


def cached_run(chapter: str, scale: str, overrides: dict[str, Any] | None = None, *, root: Path | None = None,
               out: Path | None = None) -> ChapterRun | None:
    """What ``run_chapter`` would return without executing, when the run in ``out`` is current; else None."""
    root = Path(root or repo_root())
    source = resolve_chapter(chapter, root)
    params = validate_parameters(source, scale, overrides)
    return _cached_run(source, scale, cache_key(source, params, root), Path(out or run_dir(scale, root)))


def _claim_counts(results_file: Path) -> tuple[int, int, int]:
    """(blocking failures, known failures, total) of a results file."""
    if not results_file.exists():
        return 0, 0, 0
    claims = json.loads(results_file.read_text()).get("claims", [])
    failed = [c for c in claims if c["status"] == FAIL]
    known = sum(bool(c.get("known_failure")) for c in failed)
    return len(failed) - known, known, len(claims)


def run_chapter(
    chapter: str,
    scale: str = "ci",
    overrides: dict[str, Any] | None = None,
    *,
    root: Path | None = None,
    out: Path | None = None,
    force: bool = False,
    timeout_s: int | None = 1800,
    progress=None,
    kernel_name: str = "python3",
) -> ChapterRun:
    """Execute one chapter at ``scale`` (skipped when its cache key is unchanged).

    Parameters are validated before anything runs. Execution errors do not
    raise: they come back as ``status="failed"`` with the failing cell.
    ``progress(done, total)``, when given, is called after each code cell of the chapter.
    ``kernel_name``: the Jupyter kernel that executes it (another environment's kernel, for instance).
    """
    root = Path(root or repo_root())
    source = resolve_chapter(chapter, root)
    cid = CHAPTER_RE.match(source.name).group(1)
    params = validate_parameters(source, scale, overrides)
    out = Path(out or run_dir(scale, root))
    for d in ("notebooks", "results", "figures", "status", "keys", "locks"):
        (out / d).mkdir(parents=True, exist_ok=True)
    with _chapter_lock(out / "locks" / f"{cid}.lock"):
        return _run_locked(source, cid, scale, params, root, out, force, timeout_s, progress, kernel_name)


@contextmanager
def _chapter_lock(path: Path):
    """An exclusive lock on ``path`` (POSIX ``flock``) for one chapter's run folder.

    Two processes that run the same chapter into the same folder (the test suite's processes, a
    sweep beside a book build) take turns: the second one then finds the run cached instead of
    executing the chapter again at the same time. Without ``fcntl`` (not POSIX) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_locked(source: Path, cid: str, scale: str, params: dict[str, Any], root: Path, out: Path, force: bool,
                timeout_s: int | None, progress, kernel_name: str) -> ChapterRun:
    """``run_chapter`` once the chapter's lock is held: the cache check, then papermill."""
    nb_dir, res_dir, fig_dir = out / "notebooks", out / "results", out / "figures"
    final_nb = nb_dir / f"{source.stem}.ipynb"
    key = cache_key(source, params, root)
    key_file = out / "keys" / f"{cid}.key"
    status_file = out / "status" / f"{cid}.json"

    if not force:
        cached = _cached_run(source, scale, key, out)
        if cached is not None:
            _write_json(status_file, asdict(cached))
            return cached
    key_file.unlink(missing_ok=True)  # a run killed from here on must not look finished

    import nbformat
    import papermill as pm

    t0 = time.perf_counter()
    error, failed_cell, notebook = None, None, None
    with tempfile.TemporaryDirectory(prefix=f"overparam-{cid}-") as tmp:
        tmp = Path(tmp)
        src_nb = tmp / f"{source.stem}.src.ipynb"
        nb = read_notebook(source)
        # Exercise checks grade students (overparam.book.exercises); the test suite runs them against the
        # instructor's solutions. They are not part of the rendered chapter, so the build skips them.
        nb.cells = [c for c in nb.cells if "check" not in c.metadata.get("tags", [])]
        nbformat.write(nb, src_nb)
        tmp_out, tmp_res = tmp / f"{source.stem}.ipynb", tmp / "results"
        env = {
            RESULTS_DIR_ENV: str(tmp_res),
            FIGURES_DIR_ENV: str(fig_dir),
            **kernel_environment(scale, root),
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }
        try:
            with scoped_environment(**env):
                pm.execute_notebook(
                    str(src_nb), str(tmp_out), parameters=params, cwd=str(source.parent), kernel_name=kernel_name,
                    progress_bar=False, log_output=False, execution_timeout=timeout_s,
                    config=_kernel_config(), engine_name=_register_engine(), cell_progress=progress,
                )
            results = tmp_res / f"{cid}.json"
            if not results.exists():
                raise RuntimeError(f"chapter {source.stem} ran but wrote no results: it must call claims.save()")
            _hide_injected_cell(tmp_out)
            _copy_atomic(results, res_dir / f"{cid}.json")
            _copy_atomic(tmp_out, final_nb)
            (nb_dir / f"{source.stem}.failed.ipynb").unlink(missing_ok=True)
            _write_text_atomic(key_file, key)
            notebook = str(final_nb)
        except pm.PapermillExecutionError as exc:
            failed_cell, error = exc.cell_index, f"{exc.ename}: {exc.evalue}"
        except Exception as exc:  # kernel died, timeout, missing results, ...
            error = f"{type(exc).__name__}: {exc}"
        if error is not None:
            key_file.unlink(missing_ok=True)
            if tmp_out.exists():
                failed_nb = nb_dir / f"{source.stem}.failed.ipynb"
                shutil.copyfile(tmp_out, failed_nb)
                notebook = str(failed_nb)
    wall = round(time.perf_counter() - t0, 2)
    failed, known, total = _claim_counts(res_dir / f"{cid}.json") if error is None else (0, 0, 0)
    run = ChapterRun(cid, source.stem, scale, "failed" if error else "ok", wall, notebook, error, failed_cell,
                     failed, total, known)
    _write_json(status_file, asdict(run))
    return run


PROGRESS_EVERY_S = 20.0


def cell_progress_log(prefix: str, log=print, every_s: float | None = None):
    """A ``progress(done, total)`` callback for ``run_chapter`` that logs ``<prefix>: cell 12/31 done, 45 s``
    at most every ``every_s`` seconds (default ``PROGRESS_EVERY_S``), so a long chapter shows where it is."""
    every_s = PROGRESS_EVERY_S if every_s is None else every_s
    t0 = time.perf_counter()
    last = [t0]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every_s and done < total:
            last[0] = now
            log(f"{prefix}: cell {done}/{total} done, {now - t0:.0f} s", flush=True)

    return progress


def run_chapters(
    chapters: list[str] | None = None,
    scale: str = "ci",
    overrides: dict[str, Any] | None = None,
    *,
    root: Path | None = None,
    out: Path | None = None,
    force: bool = False,
    log=print,
) -> list[ChapterRun]:
    """Run several chapters in order (all by default), one progress line each; failures don't stop the rest.

    All parameter sets are validated before the first chapter starts.
    """
    root = Path(root or repo_root())
    check_scale(scale)
    sources = [resolve_chapter(c, root) for c in chapters] if chapters else list(discover_chapters(root).values())
    for s in sources:
        validate_parameters(s, scale, overrides)
    runs, t_start = [], time.perf_counter()
    for i, s in enumerate(sources, 1):
        log(f"[{i}/{len(sources)}] {s.stem} ({scale}) running ...", flush=True)
        run = run_chapter(s.stem, scale, overrides, root=root, out=out, force=force,
                          progress=cell_progress_log(f"[{i}/{len(sources)}] {s.stem}", log))
        runs.append(run)
        elapsed = time.perf_counter() - t_start
        if run.status == "failed":
            where = f" at cell {run.failed_cell}" if run.failed_cell is not None else ""
            log(f"[{i}/{len(sources)}] {s.stem} FAILED{where} after {run.wall_time_s:.1f} s: {run.error}", flush=True)
        else:
            held = run.claims_total - run.claims_failed - run.claims_known_failures
            claims = (f"{held}/{run.claims_total} claims hold, {run.claims_failed} fail, "
                      f"{run.claims_known_failures} known failures" if scale != "smoke"
                      else f"{run.claims_total} claims recorded, not enforced at smoke")
            log(f"[{i}/{len(sources)}] {s.stem} {run.status} in {run.wall_time_s:.1f} s ({claims}); "
                f"total elapsed {elapsed:.0f} s", flush=True)
    return runs
