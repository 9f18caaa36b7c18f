"""Top Hessian eigenvalue: full Hessian + eigh vs Lanczos on Hessian-vector products, by parameter count.

Loss: ``mse_loss`` of a two-layer tanh MLP (d_in=16) on N=64 random points. The full Hessian
costs O(P^2) memory and O(P^3) for eigh; Lanczos costs ``num_iters`` HVPs (each ~ a few
gradients). The table shows where Lanczos wins; the library refuses the full Hessian above
``max_params`` (5000 by default); the full Hessian is timed over half the repeats (it takes
~10-60 s at P = 4609). 'peak' is the achieved FLOP rate of the counts below over the
machine's measured float32 matmul rate.

FLOP counts (conventions and ``hvp_flops`` in ``common``; W weights, W_1 = d_in * width, P params):

* Lanczos, m iterations: m HVPs, 2N(8W - 5W_1) each, plus full reorthogonalization (classical
  Gram-Schmidt twice against the (m + 1, P) basis: 8(m + 1)P per iteration).
* Full Hessian + eigh: ``jax.hessian`` (forward-over-reverse) pushes P tangents through one
  shared gradient: 2N(3W - W_1) + P * 2N(6W - 4W_1); then ``eigvalsh`` (LAPACK syevd, which
  also forms the eigenvectors) about 4P^3 (4/3 P^3 for the tridiagonal reduction, ~8/3 P^3
  to accumulate the eigenvectors; the data-dependent divide-and-conquer work is not counted).

Run: ``python benchmarks/hessian_bench.py``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from common import fraction_of_peak, gradient_flops, hvp_flops, median_time, print_table, report_machine, weight_count
from overparam.curvature import hessian_full, hessian_top_eigs
from overparam.models import as_function, MLP, MLPSpec, param_count
from overparam.training import full_batch_loss


NUM_ITERS = 40


def lanczos_flops(widths, n: int, num_params: int, num_iters: int = NUM_ITERS) -> float:
    """``hessian_top_eigs`` with ``num_iters`` Lanczos steps: num_iters (HVP + 8 (num_iters + 1) P)."""
    return num_iters * (hvp_flops(widths, n) + 8.0 * (num_iters + 1) * num_params)


def full_hessian_flops(widths, n: int, num_params: int) -> float:
    """``hessian_full`` + ``eigvalsh``: 2N(3W - W_1) + P 2N(6W - 4W_1) + 4 P^3 (see the module docstring)."""
    w, w1 = weight_count(widths)
    return gradient_flops(widths, n) + num_params * 2.0 * n * (6 * w - 4 * w1) + 4.0 * float(num_params) ** 3


def bench(width: int, n: int, d_in: int, repeats: int, full_limit: int, peak: float) -> list[dict]:
    widths = (d_in, width, 1)
    model = MLPSpec(widths, "tanh").module(0)
    apply_fn, params = as_function(model)
    x = jax.random.normal(jax.random.key(1), (n, d_in))
    y = jnp.sin(x[:, :1])
    loss = full_batch_loss(apply_fn, x, y)
    p = param_count(params)
    lanczos = jax.jit(lambda prm: hessian_top_eigs(loss, prm, 1, jax.random.key(2), num_iters=NUM_ITERS)[0])
    top = float(lanczos(params)[0])  # the compile run, kept for its value
    rows = [dict(method=f"lanczos ({NUM_ITERS} HVPs)", params=p, top=top, flops=lanczos_flops(widths, n, p),
                 seconds=median_time(lambda: lanczos(params), repeats, warmup=False))]
    if p <= full_limit:
        full = jax.jit(lambda prm: jnp.linalg.eigvalsh(hessian_full(loss, prm, max_params=full_limit))[-1])
        top = float(full(params))
        rows.append(dict(method="full Hessian + eigh", params=p, top=top, flops=full_hessian_flops(widths, n, p),
                         seconds=median_time(lambda: full(params), max(1, repeats // 2), warmup=False)))
    else:
        rows.append(dict(method="full Hessian + eigh", params=p, seconds=None, top=None,
                         flops=full_hessian_flops(widths, n, p)))
    base = rows[0]["seconds"]
    for r in rows:
        r["ratio"] = None if r["seconds"] is None else r["seconds"] / base
        r["gflop"] = r["flops"] / 1e9
        r["peak"] = fraction_of_peak(r["flops"], r["seconds"], peak)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64, 128, 256, 1024])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-limit", type=int, default=5000)
    args = parser.parse_args()
    peak = report_machine(f"two-layer tanh MLP, d_in = 16, N = {args.n}")
    rows = [r for w in args.widths for r in bench(w, args.n, 16, args.repeats, args.full_limit, peak)]
    print_table(rows, [("method", "method", ""), ("params", "P", "d"), ("seconds", "median s", ".4f"),
                       ("ratio", "vs lanczos", ".1f"), ("gflop", "GFLOP", ".3g"), ("peak", "frac. of peak", ".3f"),
                       ("top", "top eigenvalue", ".5g")])


if __name__ == "__main__":
    main()
