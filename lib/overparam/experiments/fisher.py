r"""Fisher information of a network, its largest and mean eigenvalue, and normalization layers.

Convention. For the MSE loss (Gaussian outputs of unit variance) the Fisher information of a
network with outputs f (N, K) on a batch x (N, d) is

    F = (1/N) J^T J    (P, P),   J = d vec(f) / d theta   (NK, P),

the outer-product part H_o of the loss Hessian (``overparam.experiments.hessian_rank``). Its non-zero
eigenvalues are those of the dual Gram matrix

    G = (1/N) J J^T    (NK, NK)  =  Theta / N,

Theta the empirical NTK Gram matrix (summed over parameters). So lambda_max(F) = lambda_max(G)
is computed from an NK x NK matrix, and the mean eigenvalue of F is tr(F)/P = tr(G)/P.

Normalization: the layers of ``overparam.models.MLPSpec`` (``NORMALIZATIONS``: none, bn_last, center_last,
bn_middle, ln_middle; Karakida et al., 2019). The batch-normalized networks couple the examples of a
batch: their Jacobian is computed for the whole batch at once (``per_example=False``), except for an
output normalization, which ``fisher_setup`` applies after the plain network (an ``output_map``) so
per-example Jacobians still serve.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from overparam.kernels.empirical import block_grams, output_jacobian
from overparam.models import BATCH_COUPLED, MLPSpec, batch_standardize, check_normalization


def normalized_mlp(widths: Sequence[int], norm: str, activation="relu", parameterization: str = "standard",
                   sigma_w: float = math.sqrt(2.0)) -> MLPSpec:
    """The bias-free ``MLPSpec(widths)`` with normalization ``norm``: ``spec(params, x) -> (N, K)``.

    params: ``spec.init(key)`` (or a seed-batched ``spec.init_ensemble(keys)``, with ``jax.vmap``).
    Default: the standard parameterization of Karakida et al., w_l ~ N(0, sigma_w^2 / n_{l-1}),
    with the He value sigma_w^2 = 2 for ReLU.
    """
    return MLPSpec(tuple(widths), activation, parameterization, sigma_w, 0.0, use_bias=False,
                   normalization=check_normalization(norm))


# ---------------------------------------------------------------------------------- the Fisher


@partial(jax.jit, static_argnames=("apply_fn", "per_example", "output_map"))
def fisher_gram(apply_fn, params, x, per_example: bool = True, output_map=None):
    """Dual Gram matrix G = J J^T / N (NK, NK) whose non-zero eigenvalues are those of F = J^T J / N.

    output_map: optional map of the whole output batch u (N, K) -> f (N, K) applied after
    ``apply_fn`` (e.g. ``batch_standardize``, batch normalization of the output). Then
    G = D G_u D^T by the chain rule, D = d vec(f) / d vec(u) (NK, NK) and G_u the Gram of
    ``apply_fn``: a batch-coupled last layer at the cost of per-example Jacobians. Jitted
    (apply_fn and output_map are static: build them once and reuse them).
    """
    gram = sum(block_grams(output_jacobian(apply_fn, params, x, per_example))) / x.shape[0]
    if output_map is None:
        return gram
    u = apply_fn(params, x)
    d = jax.jacfwd(output_map)(u).reshape(u.size, u.size)
    return d @ gram @ d.T


def fisher_eig_stats(apply_fn, params, x, per_example: bool = True, output_map=None):
    """(lambda_max(F), mean eigenvalue tr(F)/P) of the Fisher F = J^T J / N at params, via the dual Gram."""
    gram = fisher_gram(apply_fn, params, x, per_example, output_map)
    num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
    return jnp.linalg.eigvalsh(gram)[-1], jnp.trace(gram) / num_params


@partial(jax.jit, static_argnames=("apply_fn", "per_example", "output_map"))
def fisher_eig_stats_batch(apply_fn, params_batch, x_batch, per_example: bool = True, output_map=None):
    """``fisher_eig_stats`` over a leading seed axis of params and inputs x_batch (S, N, d): two arrays (S,).

    One compilation per shape; seeds are processed two at a time (``jax.lax.map``) to bound the
    memory of whole-batch Jacobians.
    """
    def one(px):
        return fisher_eig_stats(apply_fn, px[0], px[1], per_example, output_map)

    return jax.lax.map(one, (params_batch, x_batch), batch_size=2)


def _center(u):
    return batch_standardize(u, center_only=True)


_OUTPUT_MAPS = {"bn_last": batch_standardize, "center_last": _center}


def fisher_setup(net: Sequence[int], norm: str, activation="relu", parameterization: str = "standard"):
    """(apply_fn, per_example, output_map) to pass to the functions above for ``normalized_mlp(net, norm)``.

    Output normalizations (``bn_last``, ``center_last``) become an ``output_map`` after the plain
    network, so per-example Jacobians serve; ``bn_middle`` needs whole-batch Jacobians.
    """
    check_normalization(norm)
    if norm in ("bn_last", "center_last"):
        return normalized_mlp(net, "none", activation, parameterization), True, _OUTPUT_MAPS[norm]
    return normalized_mlp(net, norm, activation, parameterization), norm not in BATCH_COUPLED, None


def fisher_width_sweep(key, widths: Sequence[int], norm: str, depth: int = 3, num_seeds: int = 4,
                       input_ratio: float = 1.0, sample_ratio: float = 1.0, activation="relu",
                       parameterization: str = "standard"):
    """lambda_max(F) and mean eigenvalue of F vs width M, Karakida's scaling: d = input_ratio*M, N = sample_ratio*M.

    Network: ``normalized_mlp((d, M, ..., M, 1), norm)`` with ``depth`` weight layers, sigma_w^2 = 2,
    in the standard parameterization of Karakida et al. (or ``"ntk"``), at ``num_seeds`` random
    initializations, each with its own inputs x ~ N(0, I_d) (the same draws for every ``norm``).
    Returns (lam_max (W, S), lam_mean (W, S)) as numpy arrays.
    """
    check_normalization(norm)
    if depth < 2:
        raise ValueError(f"depth={depth} must be >= 2 (at least one hidden layer)")
    lam_max, lam_mean = [], []
    for m in widths:
        d, n = max(1, round(input_ratio * m)), max(2, round(sample_ratio * m))  # Karakida: all sizes ~ M
        net = (d,) + (int(m),) * (depth - 1) + (1,)
        k_x, k_p = jax.random.split(jax.random.fold_in(key, int(m)))  # same width, same draw
        x = jax.random.normal(k_x, (num_seeds, n, d))
        params = normalized_mlp(net, "none", activation, parameterization).init_ensemble(jax.random.split(k_p, num_seeds))
        apply_fn, per_example, output_map = fisher_setup(net, norm, activation, parameterization)
        top, mean = fisher_eig_stats_batch(apply_fn, params, x, per_example, output_map)
        lam_max.append(top)
        lam_mean.append(mean)
    return np.asarray(jnp.stack(lam_max)), np.asarray(jnp.stack(lam_mean))
