"""Every chapter at ``full`` on one accelerator, fastest first, within a total time budget.

One prepared script for a GPU machine (a fresh copy of the repository, possibly no virtualenv):

1. Environment. Checks that the book's packages import (else tries ``pip install -r
   requirements.txt -c constraints.txt``) and which backend JAX sees. If ``nvidia-smi`` finds a
   GPU but JAX has no CUDA backend, tries ``pip install "jax[cuda12]==<the pinned jax>"`` once.
   Every step and its outcome is printed and recorded; if no GPU can be used the chapters run
   on the CPU, and the summary says so in its first line (``device``).
2. Order. Chapters run one by one, fastest first by estimate: the in-notebook wall time of the
   last ``ci`` run (``--estimates``: a results folder, default ``_build/runs/ci/results``, else
   ``benchmarks/full_estimates.json``). ``full`` times are unknown until measured; the order
   is only a guess that puts the quick chapters first.
3. Each chapter runs in its own process group (``chapters_bench.bench_chapter``: the book's
   runner, JAX compile events) under a timeout of ``min(--per-chapter, time left)``; no chapter
   starts with less than ``--min-start`` seconds left, so the whole run stops before ``--budget``.
   Peak GPU memory: ``nvidia-smi`` sampled every 200 ms in the background (the device's used
   memory minus what was in use before the chapter started), and the kernel's own
   ``memory_stats()['peak_bytes_in_use']`` at exit. JAX's preallocation is switched off
   (``XLA_PYTHON_CLIENT_PREALLOCATE=false``) so that used memory is what the chapter needs.
4. Output under ``--out`` (default ``$OUT``, else ``_build/gpu_full``): ``<NN>.json`` per chapter
   (wall time, compile time, memory, device, claim outcomes with measured values), the chapter's
   results file ``results/<NN>.json``, ``summary.json`` and ``summary.md`` (a table).

Run: ``python3 benchmarks/gpu_full.py --budget 540`` (the script itself needs only the standard library).
Check the logic on a CPU: ``python benchmarks/gpu_full.py --scale smoke --budget 60 --no-install``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ESTIMATES = HERE / "full_estimates.json"
PREALLOCATE_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def log(msg: str) -> None:
    print(f"[gpu_full {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------- environment
def pinned_jax_version(root: Path = ROOT) -> str:
    """The ``jax==X`` pin of requirements-runtime.txt, which requirements.txt includes (ValueError if there is none)."""
    path = root / "requirements-runtime.txt"
    m = re.search(r"^jax==([\w.]+)\s*$", path.read_text(), re.M)
    if not m:
        raise ValueError(f"no 'jax==<version>' pin in {path}")
    return m.group(1)


def _env_with_lib() -> dict:
    lib = str(ROOT / "lib")
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, **PREALLOCATE_ENV, "PYTHONPATH": os.pathsep.join(p for p in (lib, path) if p)}


PROBE = ("import json, jax, papermill, jupytext, flax, optax, sympy, overparam\n"
         "print(json.dumps(dict(backend=jax.default_backend(), jax=jax.__version__,\n"
         "                      devices=[d.device_kind for d in jax.devices()])))")


def probe_jax(python: str = sys.executable) -> dict:
    """What a fresh process sees: {"ok", "backend", "jax", "devices"} or {"ok": False, "error"}."""
    res = subprocess.run([python, "-c", PROBE], capture_output=True, text=True, env=_env_with_lib(), timeout=300)
    if res.returncode != 0:
        return dict(ok=False, error=(res.stderr.strip().splitlines() or ["?"])[-1])
    return dict(ok=True, **json.loads(res.stdout.strip().splitlines()[-1]))


def nvidia_smi() -> str | None:
    """``nvidia-smi -L`` (the GPUs the driver sees), or None without a driver or GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return res.stdout.strip() or None if res.returncode == 0 else None


def pip_install(args: list[str], python: str = sys.executable) -> tuple[bool, str]:
    """``pip install args`` into ``python``'s environment; (succeeded, last lines of pip's output).

    A system Python that refuses (PEP 668, "externally-managed-environment") is retried once with
    ``--break-system-packages``: the machine is a throw-away copy made to run this script.
    """
    cmd = [python, "-m", "pip", "install", "-q", *args]
    log(" ".join(cmd[1:]))
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0 and "externally-managed-environment" in res.stderr:
        log("retrying with --break-system-packages")
        res = subprocess.run([*cmd, "--break-system-packages"], capture_output=True, text=True, cwd=ROOT)
    tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-5:])
    return res.returncode == 0, tail


def prepare_environment(install: bool = True, python: str = sys.executable) -> dict:
    """Make JAX see the GPU if there is one; return {"device", "backend", "gpu", "steps": [...messages]}."""
    steps = []

    def note(msg):
        steps.append(msg)
        log(msg)

    gpus = nvidia_smi()
    note(f"nvidia-smi: {gpus}" if gpus else "nvidia-smi: not found or no GPU")
    info = probe_jax(python)
    if not info["ok"]:
        note(f"the book's packages do not import: {info['error']}")
        if install:
            ok, tail = pip_install(["-r", "requirements.txt", "-c", "constraints.txt"], python)
            note("installed requirements.txt" if ok else f"pip install -r requirements.txt FAILED:\n{tail}")
            info = probe_jax(python)
    if info["ok"] and info["backend"] != "gpu" and gpus:
        version = pinned_jax_version()
        note(f"JAX {info['jax']} sees no GPU (backend {info['backend']}) although nvidia-smi does")
        if install:
            ok, tail = pip_install([f"jax[cuda12]=={version}"], python)
            note(f"installed jax[cuda12]=={version}" if ok else
                 f"pip install jax[cuda12]=={version} FAILED (no registry?):\n{tail}")
            info = probe_jax(python)
    if not info["ok"]:
        raise SystemExit(f"cannot run chapters: the book's packages do not import ({info['error']}); steps: {steps}")
    gpu = info["backend"] == "gpu"
    if not gpu:
        note("NO GPU IN USE: running on the CPU instead. Times and memory below are CPU numbers, "
             "not the GPU measurement this script is meant for.")
    device = ", ".join(info["devices"])
    note(f"JAX {info['jax']}, backend {info['backend']}, devices: {device}")
    return dict(device=device, backend=info["backend"], gpu=gpu, jax=info["jax"], steps=steps)


# ------------------------------------------------------------------------------- order
def load_estimates(source: Path | None = None) -> dict[str, float]:
    """Estimated seconds per chapter id: ``wall_time_s`` of each results file in a folder, or a JSON {id: s}."""
    candidates = [source] if source else [ROOT / "_build" / "runs" / "ci" / "results", ESTIMATES]
    for path in candidates:
        path = Path(path)
        if path.is_dir() and any(path.glob("*.json")):
            return {p.stem: float(json.loads(p.read_text())["wall_time_s"]) for p in sorted(path.glob("*.json"))}
        if path.is_file():
            return {k: float(v) for k, v in json.loads(path.read_text())["ci_wall_time_s"].items()}
    raise FileNotFoundError(f"no estimates in {[str(c) for c in candidates]}")


def fastest_first(chapters: list[str], estimates: dict[str, float]) -> list[str]:
    """Chapters sorted by estimated time (unknown ones last, in their given order)."""
    return sorted(chapters, key=lambda c: (c not in estimates, estimates.get(c, 0.0)))


# ------------------------------------------------------------------------------- memory sampling
class GpuMemorySampler:
    """Peak of ``nvidia-smi``'s used memory (MiB, summed over GPUs) while running, in a background thread."""

    def __init__(self, interval_ms: int = 200):
        self.interval_ms, self.peak_mib, self.samples = interval_ms, None, 0
        self._proc = self._thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi") is None:
            return self
        self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                       f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, text=True,
                                      stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self):
        for line in self._proc.stdout:
            try:
                used = float(line.strip())
            except ValueError:
                continue
            self.samples += 1
            self.peak_mib = used if self.peak_mib is None else max(self.peak_mib, used)

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._thread.join(timeout=5)


def gpu_memory_used_mib() -> float | None:
    if shutil.which("nvidia-smi") is None:
        return None
    res = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True)
    try:
        return sum(float(v) for v in res.stdout.split())
    except ValueError:
        return None


# ------------------------------------------------------------------------------- one chapter
CHILD = """
import json, sys
sys.path.insert(0, {here!r})
from chapters_bench import bench_chapter
row = bench_chapter({chapter!r}, {scale!r}, cache=False, workdir={work!r}, timeout_s=None)
print("ROW " + json.dumps(row, default=str))
"""


def _kill_processes_with_env(name: str, marker: str) -> list[int]:
    """SIGKILL this user's processes whose environment variable ``name`` contains ``marker``; their pids.

    The chapter's kernel runs in a session of its own (jupyter_client), outside the process group
    that a timeout kills; it is found by the event-log path its environment carries.
    """
    killed = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(f"{name}=".encode()) and marker.encode() in e for e in env):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
                killed.append(int(proc.name))
            except OSError:
                pass
    return killed


def run_one(chapter: str, scale: str, timeout_s: float, out: Path, python: str = sys.executable) -> dict:
    """Run one chapter in a child process under ``timeout_s``; return its record (see the module docstring)."""
    import tempfile

    sys.path.insert(0, str(HERE))
    from jax_events import EVENTS_ENV

    before = gpu_memory_used_mib()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"gpu-full-{chapter}-") as work:
        code = CHILD.format(here=str(HERE), chapter=chapter, scale=scale, work=work)
        with GpuMemorySampler() as sampler:
            proc = subprocess.Popen([python, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env=_env_with_lib(), cwd=ROOT, start_new_session=True)
            try:
                stdout, stderr = proc.communicate(timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                timed_out = True
            stragglers = _kill_processes_with_env(EVENTS_ENV, work)
        wall = time.perf_counter() - start
        rows = [line[4:] for line in stdout.splitlines() if line.startswith("ROW ")]
        row = json.loads(rows[-1]) if rows else {}
        tail = "\n".join([line for line in stderr.strip().splitlines() if "running over TCP" not in line][-5:])
        error = f"timed out after {timeout_s:.0f} s" if timed_out else (row.get("error") if rows else tail or None)
        rec = dict(chapter=chapter, scale=scale, wall_s=round(wall, 1), timeout_s=round(timeout_s, 1),
                   status="timeout" if timed_out else row.get("status", "crashed"), error=error,
                   stderr_tail=None if rows and not timed_out else tail)
        if stragglers:
            rec["killed_kernel_pids"] = stragglers
        if row:
            rec.update(name=row["chapter"], notebook_s=row["notebook_s"], compilations=row["compilations"],
                       compile_s=row["compile_s"], run_s=row["run_s"])
            peaks = [s.get("peak_bytes_in_use") for s in (row["device_memory"] or {}).values() if s]
            rec["kernel_peak_bytes"] = max((p for p in peaks if p is not None), default=None)
        if sampler.peak_mib is not None:
            rec["gpu_peak_mib"] = sampler.peak_mib - (before or 0.0)
        res_file = Path(work) / "runs" / scale / "results" / f"{chapter}.json"
        if res_file.exists() and rec["status"] == "ok":
            (out / "results").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(res_file, out / "results" / f"{chapter}.json")
            claims = json.loads(res_file.read_text())["claims"]
            rec["claims"] = [dict(id=c["id"], status=c["status"], measured=c["measured"]) for c in claims]
            rec["claims_by_status"] = {st: sum(c["status"] == st for c in claims)
                                       for st in sorted({c["status"] for c in claims})}
    return rec


# ------------------------------------------------------------------------------- the run
def run_all(chapters: list[str], budget_s: float, per_chapter_s: float, min_start_s: float, run=run_one,
            clock=time.perf_counter, **kwargs) -> list[dict]:
    """Run ``chapters`` in order with ``run(chapter, timeout_s=..., **kwargs)`` until the budget is spent.

    Each chapter gets ``min(per_chapter_s, time left)``; a chapter with less than ``min_start_s``
    left is recorded as ``skipped`` (not started), as is every one after it.
    """
    start, records = clock(), []
    for ch in chapters:
        left = budget_s - (clock() - start)
        if left < min_start_s:
            records.append(dict(chapter=ch, status="skipped", reason=f"{left:.0f} s of the budget left "
                                                                    f"(< {min_start_s:.0f} s to start)"))
            continue
        log(f"{ch}: starting with a timeout of {min(per_chapter_s, left):.0f} s ({left:.0f} s of the budget left)")
        rec = run(ch, timeout_s=min(per_chapter_s, left), **kwargs)
        log(f"{ch}: {rec['status']} in {rec.get('wall_s', 0):.0f} s")
        records.append(rec)
    return records


def summary_table(env: dict, records: list[dict]) -> str:
    """A Markdown table of the records."""
    lines = [f"Device: {env['device']} (backend {env['backend']}, JAX {env['jax']})" +
             ("" if env["gpu"] else " -- NO GPU: CPU numbers"), "",
             "| chapter | status | wall s | compile s | GPU peak MiB (nvidia-smi) | XLA peak MiB | "
             "estimated peak GiB (full_memory.py) | claims |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        mib = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        claims = ", ".join(f"{n} {s}" for s, n in r.get("claims_by_status", {}).items()) or r.get("reason") or "-"
        lines.append(f"| {r['chapter']} | {r['status']} | {r.get('wall_s', '-')} | "
                     f"{'-' if r.get('compile_s') is None else round(r['compile_s'], 1)} | "
                     f"{mib(r.get('gpu_peak_mib'))} | "
                     f"{mib(None if r.get('kernel_peak_bytes') is None else r['kernel_peak_bytes'] / 2**20)} | "
                     f"{r.get('estimated_full_peak_gib', '-')} | {claims} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=540.0, help="total seconds for all chapters (default 540)")
    parser.add_argument("--per-chapter", type=float, default=600.0, help="timeout of one chapter (default 600 s)")
    parser.add_argument("--min-start", type=float, default=30.0, help="start no chapter with less time left")
    parser.add_argument("--scale", default="full")
    parser.add_argument("--chapters", nargs="+", help="chapter ids (default: all, fastest first)")
    parser.add_argument("--estimates", type=Path, help="results folder or JSON with ci wall times")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "_build" / "gpu_full"))
    parser.add_argument("--no-install", action="store_true", help="never call pip")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    env = prepare_environment(install=not args.no_install)
    setup_s = time.perf_counter() - t0
    sys.path.insert(0, str(ROOT / "lib"))
    from overparam.book.runner import discover_chapters

    chapters = [c.zfill(2) for c in args.chapters] if args.chapters else list(discover_chapters(ROOT))
    order = fastest_first(chapters, load_estimates(args.estimates))
    log(f"order (fastest first by ci time): {' '.join(order)}; {args.budget - setup_s:.0f} s of the budget left "
        f"after {setup_s:.0f} s of setup")
    records = run_all(order, args.budget - setup_s, args.per_chapter, args.min_start, scale=args.scale, out=args.out)
    peaks = json.loads(ESTIMATES.read_text()).get("full_peak_gib", {})
    for r in records:
        r.update(device=env["device"], backend=env["backend"], estimated_full_peak_gib=peaks.get(r["chapter"]))
        (args.out / f"{r['chapter']}.json").write_text(json.dumps(r, indent=2, default=str))
    table = summary_table(env, records)
    (args.out / "summary.json").write_text(json.dumps(dict(environment=env, setup_s=setup_s, budget_s=args.budget,
                                                           total_s=time.perf_counter() - t0, chapters=records),
                                                      indent=2, default=str))
    (args.out / "summary.md").write_text(table)
    print(table)
    log(f"total {time.perf_counter() - t0:.0f} s of a {args.budget:.0f} s budget; output in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
