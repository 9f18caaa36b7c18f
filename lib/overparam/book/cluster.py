"""The Ray engine of the sweep: one Ray task per (chapter, seed), results shipped back.

``ray.init(address)`` connects to a running cluster (``ray start`` on each node, or Ray's Slurm
recipe; see README) or, without an address and with no cluster running here, starts a local
instance. The repository (without ``_build``, ``.venv``, ``.git`` and other generated folders)
is packed once, put in Ray's object store and unpacked on each node into
``$OVERPARAM_RAY_CODE_DIR/<hash>`` (default: a folder in the node's temporary directory), so
workers need the same Python environment but no shared file system. Each task runs ``runner.run_chapter`` in a scratch folder
on its node, packs that run folder (notebook, results, status, figures, key) into a gzipped tar
archive and returns it; the driver checks that the worker computed the same cache key as the
driver (same code, pins and parameters) and unpacks the archive into the run folder
atomically: every file is moved into place with ``os.replace``, and the key file last, so an
interrupted unpack counts as an unfinished run and is redone by the next sweep.

A task asks for one GPU when the cluster has any (``num_gpus=1``; Ray then sets
``CUDA_VISIBLE_DEVICES`` for it, and the chapter's kernel inherits it), and for
``cpus_per_task`` CPUs in any case. Ray retries a task whose worker process or node died
(``max_retries``); a chapter that fails to execute comes back as a failed run and is not
retried, since it would fail the same way. Runs already finished with the current cache key are
not submitted at all.

Each run's results record where it ran (``provenance.run_context``: host, engine, Ray job,
node and task ids, and Slurm's job id when the node runs under Slurm).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import platform
import shutil
import tarfile
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from overparam.book.provenance import GIT_COMMIT_ENV, RUN_CONTEXT_ENV, git_commit
from overparam.book.runner import (ChapterRun, scoped_environment, _write_json, cache_key, cached_run,
                                   resolve_chapter, run_chapter, validate_parameters)

# What a worker does not need from the repository: generated, installed or version-control folders.
# A pattern matches one path component, or (with a slash) the path from the repository root.
SHIP_EXCLUDES = ("_build", ".venv", ".git", "node_modules", "book/_vendor", "book/generated", "student",
                 "*.egg-info", "__pycache__", ".pytest_cache", ".ipynb_checkpoints", ".jupyter_cache")
RUN_SUBFOLDERS = ("notebooks", "results", "status", "figures", "keys")
CODE_DIR_ENV = "OVERPARAM_RAY_CODE_DIR"


def _shipped(rel: Path) -> bool:
    text = rel.as_posix()
    return not any(fnmatch.fnmatch(text, pat) or any(fnmatch.fnmatch(part, pat) for part in rel.parts)
                   for pat in SHIP_EXCLUDES)


def pack_code(root: Path) -> tuple[str, bytes]:
    """The repository's files a chapter run needs, as (sha256 of the archive, gzipped tar archive)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_file() and not path.is_symlink() and _shipped(rel):
                info = tar.gettarinfo(str(path), arcname=rel.as_posix())
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    data = buffer.getvalue()
    return hashlib.sha256(data).hexdigest()[:16], data


def unpack_code(digest: str, archive: bytes) -> Path:
    """The repository copy ``digest`` on this node, unpacked once (concurrent tasks race safely)."""
    base = Path(os.environ.get(CODE_DIR_ENV) or Path(tempfile.gettempdir()) / "overparam-code")
    target = base / digest
    if not target.exists():
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=base))
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
        try:
            os.rename(tmp, target)  # atomic; fails if another task got there first
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _execute(stem: str, scale: str, seed: int, env: dict[str, str], digest: str, code: bytes) -> dict[str, Any]:
    """Ray task body: run one chapter in a scratch folder on this node; return the run and its folder, packed.

    ``code`` is the packed repository (``pack_code``); its ``lib`` goes first on the chapter
    kernel's ``PYTHONPATH`` so that the shipped code, not an installed copy, is executed.
    """
    import ray

    ctx = ray.get_runtime_context()
    root = unpack_code(digest, code)
    env = {
        **env,
        RUN_CONTEXT_ENV["engine"]: "ray",
        RUN_CONTEXT_ENV["ray_job_id"]: ctx.get_job_id(),
        RUN_CONTEXT_ENV["ray_node_id"]: ctx.get_node_id(),
        RUN_CONTEXT_ENV["ray_task_id"]: ctx.get_task_id() or "",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "lib"), os.environ.get("PYTHONPATH", "")])),
    }
    with tempfile.TemporaryDirectory(prefix="overparam-ray-") as tmp, scoped_environment(**env):
        out = Path(tmp) / "run"
        run = run_chapter(stem, scale, {"seed": seed}, root=root, out=out, force=True)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name in RUN_SUBFOLDERS:
                if (out / name).exists():
                    tar.add(out / name, arcname=name)
    return {"run": asdict(run), "archive": buffer.getvalue(), "host": platform.node()}


def unpack_run(archive: bytes, out: Path, cid: str, stem: str) -> bool:
    """Unpack a task's run folder into ``out``; True when it holds a finished run (its key file).

    The archive is extracted into a staging folder inside ``out`` (same file system), then each file
    is moved into place; the key file is removed first and moved last. Only the run folder's own
    subfolders, regular files and this chapter's files are accepted.
    """
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".incoming-{cid}-", dir=out))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                top = Path(member.name).parts[0] if member.name else ""
                if top not in RUN_SUBFOLDERS or not (member.isfile() or member.isdir()):
                    raise ValueError(f"unexpected entry {member.name!r} in the archive of chapter {stem}")
            tar.extractall(staging, filter="data")
        key = staging / "keys" / f"{cid}.key"
        (out / "keys" / f"{cid}.key").unlink(missing_ok=True)
        if key.exists():  # a finished run replaces the last failed attempt, as run_chapter does
            (out / "notebooks" / f"{stem}.failed.ipynb").unlink(missing_ok=True)
        for path in sorted(p for p in staging.rglob("*") if p.is_file() and p != key):
            dest = out / path.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        if key.exists():
            (out / "keys").mkdir(exist_ok=True)
            os.replace(key, out / "keys" / f"{cid}.key")
            return True
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _failed(task, error: str) -> ChapterRun:
    return ChapterRun(task.cid, task.stem, task.scale, "failed", 0.0, None, error)


def _collect(task, payload: dict[str, Any], expected_key: str) -> ChapterRun:
    """Unpack one task's payload into ``task.out`` and return the run as seen from the driver."""
    run = ChapterRun(**payload["run"])
    archive = payload["archive"]
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        names = tar.getnames()
        key_name = f"keys/{task.cid}.key"
        worker_key = tar.extractfile(key_name).read().decode() if key_name in names else None
    if worker_key is not None and worker_key != expected_key:
        return _failed(task, f"the worker on {payload['host']} computed another cache key than this machine: its "
                             "copy of the chapter, lib/ or the pins differs; nothing was unpacked")
    unpack_run(archive, task.out, task.cid, task.stem)
    name = f"{task.stem}.ipynb" if run.status != "failed" else f"{task.stem}.failed.ipynb"
    notebook = task.out / "notebooks" / name
    return replace(run, notebook=str(notebook) if notebook.exists() else None)


def run_on_ray(tasks: list, root: Path, *, force: bool = False, retries: int = 2, address: str | None = None,
               init_kwargs: dict[str, Any] | None = None, cpus_per_task: float = 1,
               report: Callable[[Any, ChapterRun], None] = lambda task, run: None) -> None:
    """Run ``tasks`` (``sweep.SweepTask``) on Ray; ``report(task, run)`` is called as each finishes.

    Connects with ``ray.init(address, **init_kwargs)`` unless Ray is already initialized in this
    process (then that connection is used and left open).
    """
    import ray

    pending = []
    for task in tasks:
        cached = None if force else cached_run(task.stem, task.scale, {"seed": task.seed}, root=root, out=task.out)
        if cached is not None:
            report(task, cached)
        else:
            pending.append(task)
    if not pending:
        return
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, **(init_kwargs or {}))
        except (ConnectionError, RuntimeError) as exc:  # nothing was submitted
            raise ValueError(f"cannot start or reach Ray at ray_address={address!r}: {exc}") from None
    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(_execute).options(num_cpus=cpus_per_task, num_gpus=gpus, max_retries=retries,
                                              retry_exceptions=False)
        env = {GIT_COMMIT_ENV: git_commit(root)}
        digest, code = pack_code(root)
        code_ref = ray.put(code)
        refs = {}
        for task in pending:
            source = resolve_chapter(task.stem, root)
            expected = cache_key(source, validate_parameters(source, task.scale, {"seed": task.seed}), root)
            refs[remote.remote(task.stem, task.scale, task.seed, env, digest, code_ref)] = (task, expected)
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            task, expected = refs.pop(ready[0])
            try:
                run = _collect(task, ray.get(ready[0]), expected)
            except ray.exceptions.RayError as exc:  # the worker or node died more often than retries allow
                run = _failed(task, f"{type(exc).__name__} after {retries} retries: {str(exc).splitlines()[0]}")
            # the driver's view of the run (notebook path on this machine), as run_chapter writes it
            _write_json(task.out / "status" / f"{task.cid}.json", asdict(run))
            report(task, run)
    finally:
        if started:
            ray.shutdown()

