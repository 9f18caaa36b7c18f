"""Shared pieces of the benchmark scripts: timing, the machine's matmul peak, FLOP counts, table printing."""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import jax
import jax.numpy as jnp


def wall_times(fn, repeats: int = 5, warmup: bool = True) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``fn()``, after one untimed call that compiles it (unless warmup=False)."""
    if warmup:
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return times


def median_time(fn, repeats: int = 5, warmup: bool = True) -> float:
    """Median wall time (s) of ``fn()`` over ``repeats`` calls, after one untimed call that compiles it.

    warmup=False when the caller has already run (and compiled) ``fn``, e.g. to read its value.
    """
    return statistics.median(wall_times(fn, repeats, warmup))


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations():
    """Count XLA compilations inside the block: ``with count_compilations() as c: ...; c["n"]``.

    Listens to JAX's monitoring event for each backend compile (any function, eager ops
    included), so prepare inputs before the block. A persistent compilation cache hit skips it.
    """
    counter = {"n": 0}

    def listener(event, duration, **_):
        if event == BACKEND_COMPILE_EVENT:
            counter["n"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def matmul_peak_gflops(n: int = 2048, repeats: int = 7) -> float:
    """Measured float32 matmul throughput (GFLOP/s) of this machine: the reference for 'fraction of peak'.

    The fastest of ``repeats`` n x n products: other load on a shared machine only slows a run
    down, so the best time is the closest to what the machine can do.
    """
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    return 2 * n**3 / min(wall_times(lambda: mm(a), repeats)) / 1e9


def report_machine(description: str) -> float:
    """Measure the matmul peak, print it with the device, JAX version and load (contention), return it (GFLOP/s)."""
    peak = matmul_peak_gflops()
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}; measured float32 matmul peak "
          f"{peak:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {description}",
          flush=True)
    return peak


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as an aligned table; columns are (key, header, format spec)."""
    cells = [[format(r[k], fmt) if r.get(k) is not None else "-" for k, _, fmt in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (_, h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


# ----------------------------------------------------------------------------- FLOP counts
# Conventions for every count below: a matrix product (m, k) @ (k, n) costs 2 m k n FLOPs;
# elementwise ops, biases and reductions are not counted (their share shrinks like 1/width).
# widths = (n_0 = d_in, n_1, ..., n_L = K) as in ``overparam.models.MLP``; N examples;
# W = sum_l n_{l-1} n_l is the number of weights, W_1 = n_0 n_1 those of the first layer (whose
# input needs no cotangent or tangent). ``tests/test_benchmarks.py`` checks these counts
# against XLA's own cost analysis of the compiled functions.


def weight_count(widths) -> tuple[int, int]:
    """(W, W_1): the number of weights of an MLP with these widths, and of its first layer."""
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2:
        raise ValueError(f"widths={widths!r}: expected at least (d_in, d_out)")
    return sum(a * b for a, b in zip(widths[:-1], widths[1:])), widths[0] * widths[1]


def forward_flops(widths, n: int) -> float:
    """Forward pass on N inputs: 2 N W."""
    w, _ = weight_count(widths)
    return 2.0 * n * w


def gradient_flops(widths, n: int) -> float:
    """Parameter gradient of a scalar loss of the outputs on N inputs (one forward + one vjp).

    forward 2NW + weight gradients a^T delta 2NW + input cotangents delta W^T 2N(W - W_1)
    = 2N (3W - W_1), the familiar '6 x params x batch'.
    """
    w, w1 = weight_count(widths)
    return 2.0 * n * (3 * w - w1)


def hvp_flops(widths, n: int) -> float:
    """Hessian-vector product of a scalar loss on N inputs, forward-over-reverse (``jax.jvp`` of the gradient).

    Primal: forward 2NW, input cotangents 2N(W - W_1) (the primal weight gradient is not needed).
    Tangent (each product of two varying factors costs two products): forward 2N(2W - W_1),
    input cotangents 4N(W - W_1), weight gradients 2N(2W - W_1). Total 2N (8W - 5W_1).
    For a smooth activation (tanh, erf); with phi'' = 0 (relu, linear) XLA also drops the primal
    cotangent that only feeds the first layer's weight gradient, 2N n_1 n_2 less.
    """
    w, w1 = weight_count(widths)
    return 2.0 * n * (8 * w - 5 * w1)


def fraction_of_peak(flops: float, seconds: float | None, peak_gflops: float) -> float | None:
    """Achieved FLOP rate flops / seconds as a fraction of the measured matmul peak (None if not timed)."""
    if seconds is None or not seconds > 0:
        return None
    return flops / seconds / 1e9 / peak_gflops


def xla_flops(jitted, *args) -> float | None:
    """XLA's own FLOP count of ``jitted(*args)`` (cost analysis of the compiled function; None if unavailable).

    XLA counts elementwise ops too, so it is a little above the matmul counts of this module.
    """
    cost = jitted.lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX returns one dict per device
        cost = cost[0] if cost else None
    return None if not cost or "flops" not in cost else float(cost["flops"])
