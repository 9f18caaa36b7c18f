r"""A finite-width deep equilibrium model (DEQ): one weight matrix shared by every layer.

Convention (rows are examples, as in ``overparam.models``; all weights ~ N(0, 1)):

    h^l = sigma_w z^{l-1} W / sqrt(n) + sigma_u x U / sqrt(d) + sigma_b b,   z^l = phi(h^l),
    z^0 = 0,   f(x) = z^L v / sqrt(n),

W (n, n) the same at every layer, U (d, n), b (n,), v (n, d_out). The equilibrium is the
limit z* = phi(h*) of the iteration (the "infinitely deep" weight-tied network); it exists and
the iteration converges geometrically when the map z -> phi(sigma_w z W / sqrt(n) + ...) is a
contraction: Lip(phi) sigma_w ||W||_op / sqrt(n) < 1, and ||W||_op / sqrt(n) -> 2 for a square
Gaussian matrix, so sigma_w < 1/2 suffices for relu (Lip 1) at large width; Gao et al. (2023)
assume sigma_w^2 < 1/8 (||W||_op <= 2 sqrt(2n) with probability >= 1 - exp(-(6 - 4 sqrt 2) n), from
the Gaussian bound ||W||_op <= 2 sqrt(n) + s with probability >= 1 - exp(-s^2 / 2)). Beyond that
the fixed point can still be reached by local convergence (e.g. relu with sigma_w = 1: the
linearization at z* is stable, only about half the units being active), but existence,
uniqueness and convergence from every start are no longer guaranteed.

The per-network kernel (1/n) h^L(x).h^L(x') converges, as n -> infinity, to the NNGP kernel
Sigma^L of ``overparam.kernels.analytic.deq_nngp_layers`` and, as L -> infinity too, to the
fixed point ``deq_nngp``, in either order of the limits.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from overparam.models import get_activation


class DEQ(nnx.Module):
    """Weight-tied network unrolled for ``num_iters`` layers; conventions in the module docstring.

    Params: ``w`` (n, n), ``u`` (d, n), ``b`` (n,), ``v`` (n, d_out), all N(0, 1). The
    multipliers sigma_w / sqrt(n), sigma_u / sqrt(d), sigma_b, 1 / sqrt(n) are fixed.
    """

    def __init__(self, d_in: int, width: int, activation="relu", sigma_w=1.0, sigma_u=1.0, sigma_b=0.0,
                 d_out: int = 1, *, rngs: nnx.Rngs):
        if int(width) != width or width < 1 or int(d_in) != d_in or d_in < 1:
            raise ValueError(f"d_in={d_in!r} and width={width!r} must be positive integers")
        self.d_in, self.width = int(d_in), int(width)
        self.activation = get_activation(activation)
        self.sigma_w, self.sigma_u, self.sigma_b = float(sigma_w), float(sigma_u), float(sigma_b)
        normal = jax.random.normal
        self.w = nnx.Param(normal(rngs.params(), (width, width)))
        self.u = nnx.Param(normal(rngs.params(), (d_in, width)))
        self.b = nnx.Param(normal(rngs.params(), (width,)))
        self.v = nnx.Param(normal(rngs.params(), (width, d_out)))

    def _check(self, x):
        x = jnp.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"x has shape {x.shape}; expected (N, {self.d_in}) for this DEQ")
        return x

    def iterate(self, x, num_iters: int, record=None):
        """Run the layer map ``num_iters`` times from z^0 = 0; returns (z^L, records).

        record: optional function (h^l, z^l, z^{l-1}) -> pytree, stacked over l = 1..L
        (e.g. the Gram matrix of h^l; ``lax.scan`` keeps memory at one layer).
        """
        x = self._check(x)
        return deq_iterate(self.w[...], self.u[...], self.b[...], x, num_iters, self.sigma_w, self.sigma_u,
                           self.sigma_b, self.activation, record)

    def __call__(self, x, num_iters: int = 100):
        """Output f(x) = z^L v / sqrt(n): (N, d) -> (N, d_out)."""
        z, _ = self.iterate(x, num_iters)
        return z @ self.v[...] / math.sqrt(self.width)


def deq_iterate(w, u, b, x, num_iters: int, sigma_w, sigma_u, sigma_b, activation="relu", record=None):
    """The DEQ layer map iterated ``num_iters`` times from z^0 = 0, on raw arrays: (z^L, records).

    w (n, n), u (d, n), b (n,), x (N, d); the variances may be traced. See ``DEQ.iterate``.
    """
    if int(num_iters) != num_iters or num_iters < 1:
        raise ValueError(f"num_iters={num_iters!r} must be a positive integer")
    phi = get_activation(activation)
    n, d = w.shape[0], u.shape[0]
    drive = sigma_u * (x @ u) / math.sqrt(d) + sigma_b * b
    w = w * (sigma_w / math.sqrt(n))

    def step(z, _):
        h = z @ w + drive
        z_new = phi(h)
        return z_new, (None if record is None else record(h, z_new, z))

    z0 = jnp.zeros((x.shape[0], n), drive.dtype)
    return jax.lax.scan(step, z0, None, length=int(num_iters))


def _gram_and_residual(h, z_new, z_old):
    gram = h @ h.T / h.shape[1]
    residual = jnp.linalg.norm(z_new - z_old) / jnp.maximum(jnp.linalg.norm(z_new), 1e-30)
    return gram, residual


@partial(jax.jit, static_argnames=("width", "num_iters", "activation"))
def _deq_kernels(keys, x, width, num_iters, sigma_w, sigma_u, sigma_b, activation):
    def one(key):
        model = DEQ(x.shape[1], width, activation, rngs=nnx.Rngs(params=key))
        # the variances are traced (one compilation serves a sweep), so call the pure map
        _, (grams, residuals) = deq_iterate(model.w[...], model.u[...], model.b[...], x, num_iters,
                                            sigma_w, sigma_u, sigma_b, activation, _gram_and_residual)
        return grams, residuals

    return jax.lax.map(one, keys)


def deq_kernels_monte_carlo(key, x, width: int, num_iters: int, sigma_w=1.0, sigma_u=1.0, sigma_b=0.0,
                            activation: str = "relu", num_seeds: int = 4):
    """Per-layer empirical kernels of ``num_seeds`` DEQs of width n: (grams, residuals).

    grams: (S, L, N, N), (1/n) h^l(x_i).h^l(x_j) for l = 1..L (the estimate of Sigma^l, and of
    Sigma* once the iteration has converged); residuals: (S, L), ||z^l - z^{l-1}||_F / ||z^l||_F
    (the finite-width forward iteration's convergence). x: (N, d).
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; expected (N, d)")
    get_activation(activation)
    keys = jax.random.split(key, num_seeds)
    dt = x.dtype
    return _deq_kernels(keys, x, int(width), int(num_iters), jnp.asarray(sigma_w, dt), jnp.asarray(sigma_u, dt),
                        jnp.asarray(sigma_b, dt), activation)
