"""Top Hessian eigenvalue: full Hessian + eigh vs Lanczos on Hessian-vector products, by parameter count.

Loss: ``mse_loss`` of a two-layer tanh MLP (d_in=16) on N=64 random points. The full Hessian
costs O(P^2) memory and O(P^3) for eigh; Lanczos costs ``num_iters`` HVPs (each ~ a few
gradients). The table shows where Lanczos wins; the library refuses the full Hessian above
``max_params`` (5000 by default). Run: ``python benchmarks/hessian_bench.py``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from common import matmul_peak_gflops, median_time, print_table
from overparam.curvature import hessian_full, hessian_top_eigs
from overparam.models import MLP, as_function, param_count
from overparam.training import full_batch_loss


def bench(width: int, n: int, d_in: int, repeats: int, full_limit: int) -> list[dict]:
    model = MLP((d_in, width, 1), "tanh", rngs=nnx.Rngs(0))
    apply_fn, params = as_function(model)
    x = jax.random.normal(jax.random.key(1), (n, d_in))
    y = jnp.sin(x[:, :1])
    loss = full_batch_loss(apply_fn, x, y)
    p = param_count(params)
    lanczos = jax.jit(lambda prm: hessian_top_eigs(loss, prm, 1, jax.random.key(2), num_iters=40)[0])
    rows = [dict(method="lanczos (40 HVPs)", params=p, seconds=median_time(lambda: lanczos(params), repeats),
                 top=float(lanczos(params)[0]))]
    if p <= full_limit:
        full = jax.jit(lambda prm: jnp.linalg.eigvalsh(hessian_full(loss, prm, max_params=full_limit))[-1])
        rows.append(dict(method="full Hessian + eigh", params=p, seconds=median_time(lambda: full(params), repeats),
                         top=float(full(params))))
    else:
        rows.append(dict(method="full Hessian + eigh", params=p, seconds=None, top=None))
    base = rows[0]["seconds"]
    for r in rows:
        r["ratio"] = None if r["seconds"] is None else r["seconds"] / base
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64, 128, 256, 1024])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-limit", type=int, default=5000)
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    print(f"device: {jax.devices()[0].device_kind}; measured float32 matmul peak {peak:.1f} GFLOP/s")
    rows = [r for w in args.widths for r in bench(w, args.n, 16, args.repeats, args.full_limit)]
    print_table(rows, [("method", "method", ""), ("params", "P", "d"), ("seconds", "median s", ".4f"),
                       ("ratio", "vs lanczos", ".1f"), ("top", "top eigenvalue", ".5g")])


if __name__ == "__main__":
    main()
