"""The average gradient outer product (AGOP) of a predictor, its alignment with a target's AGOP,
and the synthetic low-rank targets whose AGOP is known in closed form.

Conventions. For a predictor f(x) with d_out outputs and inputs x (N, d), the AGOP over the
sample is

    G_f = (1/N) sum_i J(x_i)^T J(x_i)   (d, d),   J(x) = d f(x) / d x   (d_out, d),

i.e. the gradient outer product summed over outputs and averaged over inputs. The alignment of
two AGOPs is their cosine similarity in Frobenius inner product,

    align(G1, G2) = <G1, G2>_F / (|G1|_F |G2|_F)  in [-1, 1] ([0, 1] for PSD matrices).

Targets f*(x) = g(x_1, ..., x_r) on x ~ N(0, I_d) are ``overparam.data.low_rank_polynomial``;
their exact AGOP G* = diag(M, 0) of rank r comes from the SymPy derivation in
``overparam.derivations.agop`` (``target_agop``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from overparam.derivations import agop as agop_sym


def input_gradients(apply_fn, params, x):
    """Input Jacobians J(x_i) = d f(x_i)/d x_i, shape (N, d_out, d), of ``apply_fn(params, x) -> (N, d_out)``.

    Each input is differentiated separately (vmap over rows), so this is the per-example
    Jacobian also for models that mix examples (e.g. batch norm would not be per-example).
    """
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; expected (N, d)")

    def one(xi):
        return jax.jacrev(lambda z: apply_fn(params, z[None])[0])(xi)

    return jax.vmap(one)(x)


def agop_from_jacobians(jac):
    """AGOP (d, d) from input Jacobians (N, d_out, d) or gradients (N, d): (1/N) sum_i J_i^T J_i."""
    jac = jnp.asarray(jac)
    if jac.ndim == 2:
        jac = jac[:, None, :]
    if jac.ndim != 3:
        raise ValueError(f"jac has shape {jac.shape}; expected (N, d) or (N, d_out, d)")
    return jnp.einsum("nkd,nke->de", jac, jac) / jac.shape[0]


def agop(apply_fn, params, x):
    """AGOP (d, d) of the predictor ``apply_fn(params, x) -> (N, d_out)`` over the inputs x (N, d), summed over outputs."""
    return agop_from_jacobians(input_gradients(apply_fn, params, x))


def agop_alignment(g1, g2):
    """Cosine similarity <G1, G2>_F / (|G1|_F |G2|_F) of two (d, d) matrices (scalar array)."""
    g1, g2 = jnp.asarray(g1), jnp.asarray(g2)
    if g1.shape != g2.shape or g1.ndim != 2 or g1.shape[0] != g1.shape[1]:
        raise ValueError(f"AGOPs have shapes {g1.shape} and {g2.shape}; expected two square (d, d) matrices")
    return jnp.sum(g1 * g2) / (jnp.linalg.norm(g1) * jnp.linalg.norm(g2))


def target_agop(kind: str, d: int) -> np.ndarray:
    """Exact AGOP (d, d) of ``overparam.data.low_rank_polynomial(., kind)`` on x ~ N(0, I_d) (from SymPy).

    E.g. kind="x1x2": diag(1, 1, 0, ..., 0), rank 2.
    """
    return np.array(agop_sym.target_agop(kind, d).tolist(), dtype=float)


def agop_and_mean_gradient(apply_fn, params, x):
    """(G (d, d), g_bar (d_out, d)): the AGOP over x (N, d) and the mean input Jacobian g_bar = (1/N) sum_i J(x_i)."""
    jac = input_gradients(apply_fn, params, x)
    return agop_from_jacobians(jac), jnp.mean(jac, axis=0)


def alignment_split(g, g_bar, g_target):
    """The AGOP alignment and its split by the rank-one mean-gradient part: a dict of scalars.

    G = g_bar^T g_bar + C, with C = E[(J - g_bar)^T (J - g_bar)] the centered AGOP (PSD). Returns
    align = align(G, G*), align_centered = align(C, G*), mean_share = |g_bar|_F^2 / tr G. A change
    of align splits exactly into the change of align_centered (how the sensitive directions of the
    network, once the mean output slope is removed, sit in the target subspace) plus the change of
    align - align_centered (what the rank-one part costs: near 0 once g_bar is small or aligned).
    """
    g_bar = jnp.atleast_2d(g_bar)
    rank_one = g_bar.T @ g_bar
    centered = g - rank_one
    return dict(align=agop_alignment(g, g_target), align_centered=agop_alignment(centered, g_target),
                mean_share=jnp.sum(g_bar**2) / jnp.trace(g))
