"""Empirical NTK of an MLP three ways: layer-wise (matrix products), Jacobian contraction, vjp/jvp.

Network: ``MLP((d_in, width, width, 1), "relu", "ntk", sigma_b=0.1)``, float32, N inputs with
x1 = x2 (an N x N Gram matrix). Times are the median over repeats after one compile run (the
two slow methods use half the repeats); ratio is relative to layer-wise, rel diff is the max
deviation from the layer-wise kernel relative to its largest entry; 'peak' is the achieved
FLOP rate (the analytic counts below) over the machine's measured float32 matmul rate.

FLOP counts (conventions in ``common``: W weights, W_1 in the first layer, K outputs, P all
parameters; matrix products only). For width n, 2 hidden layers, d_in << n, K = 1 the three are
about 4Nn^2 + 6N^2 n, 6N^2 n^2 and 4N^2 n^2: the Jacobian form does 6Nn / (4n + 6N) times the
work of the layer-wise one, about 280 at n = 1024, N = 256.

Run: ``python benchmarks/ntk_bench.py [--widths 256 1024] [--n 256] [--repeats 5]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from common import fraction_of_peak, median_time, print_table, report_machine, weight_count
from overparam.models import as_function, MLP, MLPSpec, param_count
from overparam.kernels.empirical import ntk_jacobian, ntk_layerwise, ntk_vjp_jvp

COLUMNS = [
    ("method", "method", ""), ("width", "width", "d"), ("n", "N", "d"), ("params", "P", "d"),
    ("seconds", "median s", ".4f"), ("ratio", "ratio", ".1f"), ("gflop", "GFLOP", ".2f"),
    ("peak", "frac. of peak", ".3f"), ("rel_diff", "rel diff", ".1e"),
]


def ntk_layerwise_flops(widths, n: int) -> float:
    """``ntk_mlp_layerwise`` on N inputs (x1 = x2): forward 2NW, deltas 2NK(W - W_1), Gram products.

    Per layer l the input Gram a a^T (2 N^2 n_{l-1}) and the delta Gram (2 N^2 K n_l):
    total 2NW + 2NK(W - W_1) + 2N^2 sum_l (n_{l-1} + K n_l).
    """
    w, w1 = weight_count(widths)
    k = widths[-1]
    grams = sum(a + k * b for a, b in zip(widths[:-1], widths[1:]))
    return 2.0 * n * w + 2.0 * n * k * (w - w1) + 2.0 * n * n * grams


def ntk_jacobian_flops(widths, n: int, num_params: int) -> float:
    """``ntk_jacobian`` (``jax.jacrev`` then J J^T) on N inputs: about 6 N^2 K W.

    jacrev runs N K vjps, each over the whole batch (the one-hot cotangent is a dense array to
    XLA): one forward 2NW + N K x 2N(2W - W_1); the contraction J J^T costs 2 N^2 K P.
    """
    w, w1 = weight_count(widths)
    k = widths[-1]
    return 2.0 * n * w + n * k * 2.0 * n * (2 * w - w1) + 2.0 * n * n * k * num_params


def ntk_vjp_jvp_flops(widths, n: int) -> float:
    """``ntk_empirical`` (NTK-vector products) on N inputs: about 4 N^2 K W.

    One shared forward 2NW; per column (N K of them) a one-example gradient 2(3W - W_1) and
    the jvp's tangent at all N inputs 2N(2W - W_1).
    """
    w, w1 = weight_count(widths)
    k = widths[-1]
    return 2.0 * n * w + n * k * (2.0 * (3 * w - w1) + 2.0 * n * (2 * w - w1))


def bench_width(width: int, n: int, d_in: int, repeats: int, peak: float) -> list[dict]:
    widths = (d_in, width, width, 1)
    model = MLPSpec(widths, "relu", "ntk", sigma_b=0.1).module(0)
    apply_fn, params = as_function(model)
    p = param_count(params)
    x = jax.random.normal(jax.random.key(1), (n, d_in))
    methods = {
        "layer-wise": (jax.jit(lambda p, x: ntk_layerwise(model.spec, p, x)), ntk_layerwise_flops(widths, n)),
        "jacobian": (jax.jit(lambda p, x: ntk_jacobian(apply_fn, p, x)), ntk_jacobian_flops(widths, n, p)),
        "vjp-generic": (jax.jit(lambda p, x: ntk_vjp_jvp(apply_fn, p, x)), ntk_vjp_jvp_flops(widths, n)),
    }
    reference = methods["layer-wise"][0](params, x)
    rows = []
    for name, (fn, flops) in methods.items():
        seconds = median_time(lambda: fn(params, x), repeats if name == "layer-wise" else max(1, repeats // 2))
        error = float(jnp.abs(fn(params, x) - reference).max() / jnp.abs(reference).max())
        rows.append(dict(method=name, width=width, n=n, params=p, seconds=seconds, rel_diff=error,
                         gflop=flops / 1e9, peak=fraction_of_peak(flops, seconds, peak)))
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio"] = row["seconds"] / base
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    peak = report_machine(f"N = {args.n}, d_in = {args.d_in}, 2 hidden layers")
    rows = [r for width in args.widths for r in bench_width(width, args.n, args.d_in, args.repeats, peak)]
    print_table(rows, COLUMNS)


if __name__ == "__main__":
    main()
