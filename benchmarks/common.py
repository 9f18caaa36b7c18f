"""Shared pieces of the benchmark scripts: timing, the machine's matmul peak, table printing."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp


def median_time(fn, repeats: int = 5) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` calls, after one untimed call that compiles it."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul throughput (GFLOP/s) of this machine: the reference for 'fraction of peak'."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    return 2 * n**3 / median_time(lambda: mm(a), repeats) / 1e9


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as an aligned table; columns are (key, header, format spec)."""
    cells = [[format(r[k], fmt) if r.get(k) is not None else "-" for k, _, fmt in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
