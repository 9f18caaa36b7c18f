"""Where a Python process spends its JAX compile time, from JAX's own monitoring events.

Three duration events cover every ``jax.jit`` compilation (jax 0.10, ``jax._src.dispatch``):

    /jax/core/compile/jaxpr_trace_duration          Python tracing to a jaxpr (top-level jits only,
                                                    so nested jits are not counted twice)
    /jax/core/compile/jaxpr_to_mlir_module_duration lowering the jaxpr to an MLIR module
    /jax/core/compile/backend_compile_duration      XLA compilation (or a persistent-cache read)

A persistent compilation cache hit still fires the backend event (it wraps the cache read) and
also ``/jax/compilation_cache/cache_hits``; ``XLA compilations`` below are backend events minus
cache hits. Each event carries the name of the function compiled.

``install(path)`` appends one tab-separated line per event to ``path`` (``kind, seconds,
function``), flushed at once, so a process that is killed still leaves what it compiled;
``summarize(path)`` reads such a log back; with ``MEMORY_ENV`` set as well, the devices' memory
statistics (peak bytes in use on a GPU) are written at exit. ``sitecustomize_source()`` is the text of a
``sitecustomize.py`` that installs the listeners in any Python process (a notebook kernel)
started with ``EVENTS_ENV`` set and the folder of that file on ``PYTHONPATH``.
"""

from __future__ import annotations

import collections
import os
from pathlib import Path

EVENTS_ENV = "OVERPARAM_JAX_EVENTS"   # path of the event log the process appends to
NO_CACHE_ENV = "OVERPARAM_JAX_NO_PERSISTENT_CACHE"   # "1": disable the persistent compilation cache (a cold run)
MEMORY_ENV = "OVERPARAM_JAX_MEMORY"   # path: at exit, write the devices' memory_stats() there (JSON)

KINDS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "backend",
}
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def install(path: str | os.PathLike) -> None:
    """Register listeners that append every compile event of this process to the log at ``path``."""
    import jax

    log = open(path, "a", buffering=1)  # line-buffered: each event is on disk when the call returns

    def on_duration(event, duration, **kwargs):
        kind = KINDS.get(event)
        if kind is not None:
            name = str(kwargs.get("fun_name", "?")).replace("\t", " ").replace("\n", " ")
            log.write(f"{kind}\t{duration:.6f}\t{name}\n")

    def on_event(event, **_):
        if event == CACHE_HIT_EVENT:
            log.write("cache_hit\t0\t-\n")

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)


def record_memory_at_exit(path: str | os.PathLike) -> None:
    """At interpreter exit, write ``{device: memory_stats()}`` of every local device to ``path`` (JSON).

    On a GPU the stats include ``peak_bytes_in_use`` (XLA's allocator, the whole process); the CPU
    backend returns none (written as null). Nothing is written if the process is killed.
    """
    import atexit
    import json

    def dump():
        import jax

        stats = {str(d): d.memory_stats() for d in jax.local_devices()}
        Path(path).write_text(json.dumps(stats, default=int))

    atexit.register(dump)


def summarize(path: str | os.PathLike) -> dict:
    """Totals of an event log: counts and seconds per kind, XLA compilations, and the most compiled functions.

    Returns ``{"traces", "lowerings", "backend_events", "cache_hits", "compilations", "trace_s",
    "lower_s", "backend_s", "compile_s", "top": [(function, compilations), ...]}`` where
    ``compilations = backend_events - cache_hits`` and ``compile_s = trace_s + lower_s + backend_s``.
    A missing log (the process compiled nothing or never started) gives all zeros.
    """
    counts, seconds, per_fun = collections.Counter(), collections.Counter(), collections.Counter()
    path = Path(path)
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) != 3:
                continue  # a line cut short by a killed process
            kind, secs, name = parts
            counts[kind] += 1
            seconds[kind] += float(secs)
            if kind == "backend":
                per_fun[name] += 1
    compile_s = seconds["trace"] + seconds["lower"] + seconds["backend"]
    return dict(traces=counts["trace"], lowerings=counts["lower"], backend_events=counts["backend"],
                cache_hits=counts["cache_hit"], compilations=counts["backend"] - counts["cache_hit"],
                trace_s=seconds["trace"], lower_s=seconds["lower"], backend_s=seconds["backend"],
                compile_s=compile_s, top=per_fun.most_common(5))


def sitecustomize_source() -> str:
    """Text of a ``sitecustomize.py`` that calls ``install`` when ``EVENTS_ENV`` is set (and nothing otherwise)."""
    here = str(Path(__file__).resolve().parent)
    return (
        "import os, sys\n"
        f"if os.environ.get({EVENTS_ENV!r}):\n"
        f"    sys.path.insert(0, {here!r})\n"
        "    import jax_events\n"
        f"    jax_events.install(os.environ[{EVENTS_ENV!r}])\n"
        f"    if os.environ.get({NO_CACHE_ENV!r}) == '1':\n"
        "        import jax\n"
        "        jax.config.update('jax_enable_compilation_cache', False)\n"
        f"    if os.environ.get({MEMORY_ENV!r}):\n"
        f"        jax_events.record_memory_at_exit(os.environ[{MEMORY_ENV!r}])\n"
        "    sys.path.remove(" f"{here!r})\n"
    )
