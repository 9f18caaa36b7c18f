"""Training throughput: ``train_gd`` / ``train_sgd`` (one jitted ``lax.scan``) by width, and sweeps that compile once.

Network: ``MLP((d_in, width, width, 1), "relu", "ntk")``, float32, mse loss on y = sin(x_0),
``record_every = num_steps`` (one recorded loss per run). Table 1: steps/s and examples/s
(steps/s x examples per step) from the median over repeats after one compile run. Table 2:
a grid of seeds x learning rates run with ``jax.vmap`` inside one ``jax.jit``; the compile
column counts XLA compilations during that call (``common.count_compilations``): the first
call of a grid shape compiles, new seeds and learning rates of the same shape do not, a new
grid shape compiles once more. Seconds there include the compile when there is one.

FLOP counts (``common.gradient_flops``): a step on B examples costs one forward and one
backward pass, 2B(3W - W_1) (W weights, W_1 of the first layer), i.e. the usual
'6 x params x batch'; SGD adds two forward passes over the full data set per run (the
recorded and the final training loss), GD one (the final loss). The optimizer update (O(P)) is
not counted. 'peak' is the achieved rate over the machine's measured float32 matmul rate (a
2048 x 2048 product); 'same-shape peak' is the time plain jitted matmuls of exactly the run's
product shapes take (``matmul_reference_seconds``: each (m, k, n) product timed alone, many in one
jit) over the run's time: how close the loop comes to what its own matrix products can do, which
at width 128 and batch 128 is well below the large-matrix rate.

Run: ``python benchmarks/training_bench.py [--widths 128 512 1024] [--steps 50]``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from flax import nnx

from common import (count_compilations, forward_flops, fraction_of_peak, gradient_flops, median_time, print_table,
                    report_machine, wall_times)
from overparam.models import as_function, MLP, MLPSpec, param_count
from overparam.training import batch_loss, full_batch_loss, train_gd, train_sgd


def gd_run_flops(widths, n: int, num_steps: int) -> float:
    """``train_gd`` for num_steps on N examples: num_steps * 2N(3W - W_1) + the final forward 2NW."""
    return num_steps * gradient_flops(widths, n) + forward_flops(widths, n)


def sgd_run_flops(widths, n: int, batch_size: int, num_steps: int) -> float:
    """``train_sgd`` with one record: num_steps * 2B(3W - W_1) + two forwards on all N examples."""
    return num_steps * gradient_flops(widths, batch_size) + 2 * forward_flops(widths, n)


def step_matmul_shapes(widths, batch: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) matrix products of one gradient step of an MLP on ``batch`` examples.

    Forward (B, n_{l-1}) @ (n_{l-1}, n_l) for every layer, weight gradients (n_{l-1}, B) @ (B, n_l)
    for every layer, input cotangents (B, n_l) @ (n_l, n_{l-1}) for every layer but the first:
    their FLOPs sum to ``common.gradient_flops(widths, batch)``.
    """
    widths = tuple(int(n) for n in widths)
    layers = list(zip(widths[:-1], widths[1:]))
    return ([(batch, a, b) for a, b in layers] + [(a, batch, b) for a, b in layers]
            + [(batch, b, a) for a, b in layers[1:]])


def matmul_seconds(m: int, k: int, n: int, reps: int = 200, repeats: int = 5) -> float:
    """Seconds of one float32 (m, k) @ (k, n) product, timed as ``reps`` dependent products inside one jit.

    Each product adds the loop counter to its left factor (so XLA cannot hoist it out of the loop,
    and dispatch is paid once per ``reps`` products); fastest of ``repeats`` runs.
    """
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32) / k

    @jax.jit
    def chain(a, b):
        body = lambda i, acc: acc + ((a + i.astype(a.dtype)) @ b)[0, 0]
        return jax.lax.fori_loop(0, reps, body, jnp.zeros((), a.dtype))

    return min(wall_times(lambda: chain(a, b), repeats)) / reps


def forward_matmul_shapes(widths, n: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) products of a forward pass on n examples: (n, n_{l-1}) @ (n_{l-1}, n_l) per layer."""
    widths = tuple(int(w) for w in widths)
    return [(n, a, b) for a, b in zip(widths[:-1], widths[1:])]


def matmul_reference_seconds(widths, num_steps: int, batch: int, num_forwards: int, n: int, cache=None) -> float:
    """Seconds plain jitted matmuls of the same shapes take for a run's products (``matmul_seconds`` each).

    A run = num_steps gradient steps on ``batch`` examples + num_forwards forward passes on n.
    ``run_seconds / this`` is the run's fraction of the same-shape matmul peak. ``cache``: a dict
    reused across calls so each shape is timed once.
    """
    cache = {} if cache is None else cache
    def t(shape):
        if shape not in cache:
            cache[shape] = matmul_seconds(*shape)
        return cache[shape]
    return (num_steps * sum(t(s) for s in step_matmul_shapes(widths, batch))
            + num_forwards * sum(t(s) for s in forward_matmul_shapes(widths, n)))


def make_data(n: int, d_in: int):
    x = jax.random.normal(jax.random.key(1), (n, d_in))
    return x, jnp.sin(x[:, :1])


def throughput(width: int, args, peak: float, shape_cache: dict) -> list[dict]:
    widths = (args.d_in, width, width, 1)
    apply_fn, params = as_function(MLPSpec(widths, "relu", "ntk").module(0))
    p = param_count(params)
    x_gd, y_gd = make_data(args.n_gd, args.d_in)
    x, y = make_data(args.n_sgd, args.d_in)
    gd_loss, sgd_loss, key = full_batch_loss(apply_fn, x_gd, y_gd), batch_loss(apply_fn), jax.random.key(3)
    steps = args.steps
    runs = {
        f"train_gd (N={args.n_gd})": (
            lambda: train_gd(gd_loss, params, args.lr, steps, record_every=steps).final_loss,
            args.n_gd, gd_run_flops(widths, args.n_gd, steps),
            matmul_reference_seconds(widths, steps, args.n_gd, 1, args.n_gd, shape_cache)),
        f"train_sgd (B={args.batch}/{args.n_sgd})": (
            lambda: train_sgd(sgd_loss, params, x, y, args.batch, args.lr, steps, key, record_every=steps).final_loss,
            args.batch, sgd_run_flops(widths, args.n_sgd, args.batch, steps),
            matmul_reference_seconds(widths, steps, args.batch, 2, args.n_sgd, shape_cache)),
    }
    rows = []
    for name, (run, batch, flops, reference) in runs.items():
        seconds = median_time(run, args.repeats)
        rows.append(dict(method=name, width=width, params=p, seconds=seconds, steps_s=steps / seconds,
                         examples_s=steps * batch / seconds, peak=fraction_of_peak(flops, seconds, peak),
                         same_shape=reference / seconds))
    return rows


def timed_call(fn, *args):
    """(seconds, compilations) of one call of fn(*args), blocking on the result."""
    with count_compilations() as compiles:
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        seconds = time.perf_counter() - start
    return seconds, compiles["n"]


def sweeps(args, peak: float) -> list[dict]:
    widths = (args.d_in, args.sweep_width, args.sweep_width, 1)
    apply_fn = as_function(MLPSpec(widths, "relu", "ntk").module(0))[0]
    x_gd, y_gd = make_data(args.n_gd, args.d_in)
    x, y = make_data(args.n_sgd, args.d_in)
    gd_loss, sgd_loss = full_batch_loss(apply_fn, x_gd, y_gd), batch_loss(apply_fn)
    steps = args.steps

    # seeds enter as a batch of params0 (and of SGD keys), learning rates as an array: both traced
    @jax.jit
    def gd_grid(params0, lrs):
        run = lambda p, lr: train_gd(gd_loss, p, lr, steps, record_every=steps).final_loss
        return jax.vmap(lambda p: jax.vmap(lambda lr: run(p, lr))(lrs))(params0)

    @jax.jit
    def sgd_grid(params0, keys, lrs):
        run = lambda p, k, lr: train_sgd(sgd_loss, p, x, y, args.batch, lr, steps, k, record_every=steps).final_loss
        return jax.vmap(lambda p, k: jax.vmap(lambda lr: run(p, k, lr))(lrs))(params0, keys)

    rows = []
    calls = [("first call", 0, 4), ("new seeds and lrs", 1, 4), ("more lrs: new shape", 2, 8), ("new seeds and lrs", 3, 8)]
    for name, grid, flops_per_run in (("gd", gd_grid, gd_run_flops(widths, args.n_gd, steps)),
                                      ("sgd", sgd_grid, sgd_run_flops(widths, args.n_sgd, args.batch, steps))):
        for label, salt, num_lrs in calls:
            keys = jax.random.split(jax.random.key(100 + salt), args.seeds)
            params0 = MLPSpec(widths, "relu", "ntk").init_ensemble(keys)
            lrs = jnp.geomspace(0.01, 1.0, num_lrs) * (1.0 + 0.01 * salt)
            inputs = (params0, lrs) if name == "gd" else (params0, jax.random.split(keys[0], args.seeds), lrs)
            jax.block_until_ready(inputs)
            seconds, compiles = timed_call(grid, *inputs)
            num_runs = args.seeds * num_lrs
            rows.append(dict(loop=f"train_{name}", call=label, grid=f"{args.seeds} seeds x {num_lrs} lrs",
                             compiles=compiles, seconds=seconds, steps_s=num_runs * steps / seconds,
                             peak=fraction_of_peak(num_runs * flops_per_run, seconds, peak)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--n-gd", type=int, default=512, help="examples for full-batch GD")
    parser.add_argument("--n-sgd", type=int, default=4096, help="examples for SGD")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep-width", type=int, default=128)
    parser.add_argument("--seeds", type=int, default=4)
    args = parser.parse_args()
    peak = report_machine(f"2 hidden layers, d_in = {args.d_in}, {args.steps} steps per run")
    shape_cache = {}
    print_table([r for w in args.widths for r in throughput(w, args, peak, shape_cache)],
                [("method", "method", ""), ("width", "width", "d"), ("params", "P", "d"),
                 ("seconds", "median s/run", ".4f"), ("steps_s", "steps/s", ".1f"),
                 ("examples_s", "examples/s", ".3g"), ("peak", "frac. of peak", ".3f"),
                 ("same_shape", "frac. of same-shape peak", ".3f")])
    print(f"\nsweeps at width {args.sweep_width}: vmap over seeds x learning rates inside one jit")
    print_table(sweeps(args, peak),
                [("loop", "loop", ""), ("call", "call", ""), ("grid", "grid", ""), ("compiles", "compiles", "d"),
                 ("seconds", "s (incl. compile)", ".3f"), ("steps_s", "run-steps/s", ".0f"),
                 ("peak", "frac. of peak", ".3f")])


if __name__ == "__main__":
    main()
