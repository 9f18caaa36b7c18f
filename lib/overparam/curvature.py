"""Curvature in parameter space: Hessian-vector products, full Hessians, Lanczos eigenvalues, top eigenspaces.

Everything acts on a scalar function of a params pytree: a loss ``loss_fn(params) -> ()`` or
the output of the model at one input (``model_output_fn``), so the same code gives the
Hessian of the loss (sharpness, edge of stability) and the Hessian of the network output
d^2 f(x) / d params^2 (how far the network is from its linearization).

Eigenvectors are returned as flat vectors (P, k) in the order of
``overparam.models.flatten_params``; eigenvalues in descending order. For an explicit symmetric
matrix (a kernel Gram matrix along a trajectory) ``top_eigs_subspace`` tracks its top-k
eigenspace by warm-started subspace iteration.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from overparam.models import param_count

WHICH = ("largest", "smallest", "magnitude")


def hvp(loss_fn, params, v):
    """Hessian-vector product H(params) v of a scalar ``loss_fn``; v and the result are pytrees like params.

    Forward-over-reverse: the jvp of the gradient, about the cost of two gradients.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def flat_hvp(loss_fn, params):
    """(matvec, dim): v (P,) -> H v (P,) in the flat coordinates of ``ravel_pytree(params)``."""
    vec, unflatten = ravel_pytree(params)

    def matvec(v):
        return ravel_pytree(hvp(loss_fn, params, unflatten(v)))[0]

    return matvec, vec.shape[0]


def hessian_full(loss_fn, params, max_params: int = 5000):
    """Full Hessian (P, P) of a scalar ``loss_fn`` in flat coordinates; only for P <= max_params.

    Costs P^2 memory; raises ValueError above ``max_params`` (use ``hessian_top_eigs``).
    """
    vec, unflatten = ravel_pytree(params)
    if vec.shape[0] > max_params:
        raise ValueError(
            f"params has P={vec.shape[0]} entries, above max_params={max_params}: the full Hessian "
            "would need P^2 memory; use hessian_top_eigs (Lanczos on Hessian-vector products)"
        )
    return jax.jit(jax.hessian(lambda v: loss_fn(unflatten(v))))(vec)


def _orthogonalize(w, basis):
    # Classical Gram-Schmidt applied twice is enough to keep Lanczos vectors orthogonal to
    # working precision ("twice is enough"); rows of basis not yet filled are zero.
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _restart_vector(basis):
    # The standard basis vector least covered by span(basis), orthogonalized: with fewer
    # than dim basis vectors its squared projection is < 1, so the result is nonzero.
    j = jnp.argmin(jnp.sum(basis**2, axis=0))
    fresh = _orthogonalize(jnp.zeros(basis.shape[1], basis.dtype).at[j].set(1.0), basis)
    return fresh / jnp.linalg.norm(fresh)


def lanczos_tridiagonal(matvec, dim: int, num_iters: int, key):
    """Lanczos with full reorthogonalization: (alphas (m,), betas (m-1,), Q (m, dim)).

    Q^T A Q = tridiag(betas, alphas, betas) for symmetric A given by ``matvec``; the start
    vector is random (from key). On breakdown (the Krylov space is invariant) the next
    vector is a new direction orthogonal to Q and the off-diagonal entry is 0, so every
    eigenvalue of A stays reachable (with its multiplicity).
    """
    dtype = jnp.result_type(float)
    v0 = jax.random.normal(key, (dim,), dtype)
    basis = jnp.zeros((num_iters + 1, dim), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    eps = jnp.finfo(dtype).eps

    def body(i, state):
        basis, alphas, betas = state
        q = basis[i]
        aq = matvec(q).astype(dtype)
        alpha = q @ aq
        w = _orthogonalize(aq, basis)
        beta = jnp.linalg.norm(w)
        broke = beta <= 100 * eps * jnp.linalg.norm(aq)
        q_next = jax.lax.cond(broke, _restart_vector, lambda _: w / beta, basis)
        basis = basis.at[i + 1].set(q_next)
        return basis, alphas.at[i].set(alpha), betas.at[i].set(jnp.where(broke, 0.0, beta))

    init = (basis, jnp.zeros(num_iters, dtype), jnp.zeros(num_iters, dtype))
    basis, alphas, betas = jax.lax.fori_loop(0, num_iters, body, init)
    return alphas, betas[:-1], basis[:num_iters]


@partial(jax.jit, static_argnames=("k", "which"))
def _select(evals, evecs, k, which):
    if which == "largest":
        order = jnp.argsort(-evals)
    elif which == "smallest":
        order = jnp.argsort(evals)
    else:
        order = jnp.argsort(-jnp.abs(evals))
    order = order[:k]
    return evals[order], evecs[:, order]


def default_num_iters(dim: int, k: int) -> int:
    """Lanczos steps used when none are given: min(dim, 2k + 40)."""
    return min(dim, 2 * k + 40)


def _check_lanczos_args(dim: int, k: int, num_iters: int | None, which: str) -> int:
    num_iters = default_num_iters(dim, k) if num_iters is None else int(num_iters)
    if not 1 <= k <= num_iters <= dim:
        raise ValueError(f"need 1 <= k <= num_iters <= dim; got k={k}, num_iters={num_iters}, dim={dim}")
    if which not in WHICH:
        raise ValueError(f"which={which!r} is not known; allowed: {', '.join(WHICH)}")
    return num_iters


@partial(jax.jit, static_argnames=("matvec", "dim", "num_iters"))
def lanczos_ritz(matvec, dim: int, num_iters: int, key):
    """All Ritz pairs of ``num_iters`` Lanczos steps: (values (m,) ascending, vectors (dim, m)).

    Jitted with ``matvec`` static: reuse the same matvec object to avoid recompiling.
    """
    alphas, betas, basis = lanczos_tridiagonal(matvec, dim, num_iters, key)
    tri = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
    ritz_vals, ritz_coords = jnp.linalg.eigh(tri)
    return ritz_vals, basis.T @ ritz_coords


def lanczos_top_eigs(matvec, dim: int, k: int, key, num_iters: int | None = None, which: str = "largest"):
    """Top-k eigenpairs of a symmetric operator by Lanczos: (eigvals (k,), eigvecs (dim, k)).

    matvec: v (dim,) -> A v (dim,). which: "largest" (algebraic, default), "smallest", or
    "magnitude". Returned as Ritz pairs of ``num_iters`` steps (default
    ``default_num_iters``); extreme eigenvalues converge first, so check convergence by
    increasing num_iters. Uses the default float dtype (enable float64 for tight checks).
    """
    num_iters = _check_lanczos_args(dim, k, num_iters, which)
    return _select(*lanczos_ritz(matvec, dim, num_iters, key), k, which)


@partial(jax.jit, static_argnames=("loss_fn", "num_iters"))
def _hessian_ritz(loss_fn, params, key, num_iters):
    matvec, dim = flat_hvp(loss_fn, params)
    return lanczos_ritz(matvec, dim, num_iters, key)


def hessian_top_eigs(loss_fn, params, k: int, key, num_iters: int | None = None, which: str = "largest"):
    """Top-k Hessian eigenpairs of a scalar ``loss_fn`` at params: (eigvals (k,), eigvecs (P, k)).

    Lanczos on forward-over-reverse Hessian-vector products; see ``lanczos_top_eigs``.
    Compiled per ``loss_fn`` object and num_iters, with params traced: calls with the same
    ``loss_fn`` (e.g. along a training trajectory) compile once. Also usable inside
    ``jax.jit``/``vmap`` (e.g. in a training loop's ``observe``).
    """
    num_iters = _check_lanczos_args(param_count(params), k, num_iters, which)
    return _select(*_hessian_ritz(loss_fn, params, key, num_iters), k, which)


def hessian_spectral_norm(loss_fn, params, key, num_iters: int | None = None):
    """||H||_2 = max |eigenvalue| of the Hessian of a scalar ``loss_fn`` at params (Lanczos)."""
    eigvals, _ = hessian_top_eigs(loss_fn, params, 1, key, num_iters, which="magnitude")
    return jnp.abs(eigvals[0])


def model_output_fn(apply_fn, x, output_index: int = 0):
    """The scalar p -> f_k(p, x) for one input x (d_in,) and output k, for the functions above.

    E.g. ``hessian_spectral_norm(model_output_fn(apply_fn, x), params, key)`` is
    ||d^2 f(x) / d params^2||_2, the quantity that controls the distance to the linear model.
    """
    x = jnp.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"x has shape {x.shape}; expected one input of shape (d_in,)")
    return lambda params: apply_fn(params, x[None])[0, output_index]


@partial(jax.jit, static_argnames=("apply_fn", "num_iters", "output_index"))
def model_hessian_spectral_norm(apply_fn, params, x, key, num_iters: int | None = None, output_index: int = 0):
    """||d^2 f_k(x) / d params^2||_2 at one input x (d_in,): Lanczos on output Hessian-vector products.

    Jitted with ``apply_fn`` static; params, x and key traced.
    """
    return hessian_spectral_norm(model_output_fn(apply_fn, x, output_index), params, key, num_iters)


def top_eigs_subspace(matrix, v0, num_iters: int = 20):
    """Top-k eigenpairs of a symmetric PSD matrix (n, n) by subspace iteration from v0 (n, k).

    Returns (eigvals (k,) descending, eigvecs (n, k), orthonormal columns): ``num_iters`` steps
    V <- qr(A V) from qr(v0), then Rayleigh-Ritz in span(V). Converges like (mu_{k+1}/mu_k)^iters; a
    warm start (the previous step's eigenvectors along a trajectory) needs only a few iterations.
    Much cheaper than a full ``eigh`` when k << n. Traceable (a ``fori_loop``; ``num_iters`` static
    under ``jax.jit``).
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix has shape {matrix.shape}; expected a square (n, n) matrix")
    if v0.ndim != 2 or v0.shape[0] != matrix.shape[0] or not 1 <= v0.shape[1] <= matrix.shape[0]:
        raise ValueError(f"v0 has shape {v0.shape}; expected ({matrix.shape[0]}, k) with 1 <= k <= {matrix.shape[0]}")

    def body(_, v):
        return jnp.linalg.qr(matrix @ v)[0]

    v = jax.lax.fori_loop(0, num_iters, body, jnp.linalg.qr(v0)[0])
    small = v.T @ matrix @ v  # Rayleigh-Ritz in span(v)
    evals, rot = jnp.linalg.eigh((small + small.T) / 2)
    return evals[::-1], (v @ rot)[:, ::-1]
