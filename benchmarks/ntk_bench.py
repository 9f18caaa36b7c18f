"""Empirical NTK of an MLP three ways: layer-wise (matrix products), Jacobian contraction, vjp/jvp.

Network: ``MLP((d_in, width, width, 1), "relu", "ntk", sigma_b=0.1)``, float32, N inputs with
x1 = x2 (an N x N Gram matrix). Times are the median over repeats after one compile run (the
two slow methods use half the repeats); ratio is relative to layer-wise, rel diff is the max
deviation from the layer-wise kernel relative to its largest entry.
Run: ``python benchmarks/ntk_bench.py [--widths 256 1024] [--n 256] [--repeats 5]``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from common import median_time, print_table
from overparam.models import MLP, as_function, param_count
from overparam.ntk import ntk_empirical, ntk_jacobian, ntk_mlp_layerwise

COLUMNS = [
    ("method", "method", ""), ("width", "width", "d"), ("n", "N", "d"), ("params", "P", "d"),
    ("seconds", "median s", ".4f"), ("ratio", "ratio", ".1f"), ("rel_diff", "rel diff", ".1e"),
]


def bench_width(width: int, n: int, d_in: int, repeats: int) -> list[dict]:
    model = MLP((d_in, width, width, 1), "relu", "ntk", sigma_b=0.1, rngs=nnx.Rngs(0))
    apply_fn, params = as_function(model)
    x = jax.random.normal(jax.random.key(1), (n, d_in))
    methods = {
        "layer-wise": jax.jit(lambda p, x: ntk_mlp_layerwise(model, x, params=p)),
        "jacobian": jax.jit(lambda p, x: ntk_jacobian(apply_fn, p, x)),
        "vjp-generic": jax.jit(lambda p, x: ntk_empirical(apply_fn, p, x)),
    }
    reference = methods["layer-wise"](params, x)
    rows = []
    for name, fn in methods.items():
        seconds = median_time(lambda: fn(params, x), repeats if name == "layer-wise" else max(1, repeats // 2))
        error = float(jnp.abs(fn(params, x) - reference).max() / jnp.abs(reference).max())
        rows.append(dict(method=name, width=width, n=n, params=param_count(params), seconds=seconds, rel_diff=error))
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
    print(f"device: {jax.devices()[0].device_kind}, N = {args.n}, d_in = {args.d_in}, depth 2 hidden layers")
    print_table([r for width in args.widths for r in bench_width(width, args.n, args.d_in, args.repeats)], COLUMNS)


if __name__ == "__main__":
    main()
