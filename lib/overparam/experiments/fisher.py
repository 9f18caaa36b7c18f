r"""Fisher information of a network, its largest and mean eigenvalue, and normalization layers.

Convention. For the MSE loss (Gaussian outputs of unit variance) the Fisher information of a
network with outputs f (N, K) on a batch x (N, d) is

    F = (1/N) J^T J    (P, P),   J = d vec(f) / d theta   (NK, P),

the outer-product part H_o of the loss Hessian (``overparam.experiments.hessian_rank``). Its non-zero
eigenvalues are those of the dual Gram matrix

    G = (1/N) J J^T    (NK, NK)  =  Theta / N,

Theta the empirical NTK Gram matrix (summed over parameters). So lambda_max(F) = lambda_max(G)
is computed from an NK x NK matrix, and the mean eigenvalue of F is tr(F)/P = tr(G)/P.

Normalization (``NORMS``; no learned scale or shift, eps = 1e-5 inside the square roots):

* ``"none"``: the plain ``overparam.models.MLP``.
* ``"bn_last"``: batch normalization of the output: each output unit is standardized over the
  batch, f = (u - mean_N u) / std_N u, u the plain output (Karakida et al., 2019).
* ``"center_last"``: only the mean subtraction of ``bn_last``: f = u - mean_N u.
* ``"bn_middle"``: every hidden pre-activation unit standardized over the batch before the activation.
* ``"ln_middle"``: every hidden pre-activation standardized over its units (per example) before the activation.

The batch-normalized networks couple the examples of a batch: their ``apply_fn`` must see the
whole batch, and their Jacobian is computed for the whole batch at once (``per_example=False``).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from overparam.models import MLP, check_inputs, init_mlp_params

NORMS = ("none", "bn_last", "center_last", "bn_middle", "ln_middle")
BATCH_COUPLED = ("bn_last", "center_last", "bn_middle")
EPS = 1e-5


def check_norm(norm: str) -> str:
    """Return ``norm`` if known, else ValueError listing ``NORMS``."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not known; allowed: {', '.join(NORMS)}")
    return norm


def batch_standardize(h, center_only: bool = False):
    """(h - mean over the batch) / std over the batch, per column; h (N, n)."""
    h = h - jnp.mean(h, axis=0, keepdims=True)
    return h if center_only else h / jnp.sqrt(jnp.mean(h * h, axis=0, keepdims=True) + EPS)


def layer_standardize(h):
    """(h - mean over units) / std over units, per example (row); h (N, n)."""
    h = h - jnp.mean(h, axis=1, keepdims=True)
    return h / jnp.sqrt(jnp.mean(h * h, axis=1, keepdims=True) + EPS)


def normalized_forward(model: MLP, x, norm: str = "none"):
    """Output (N, K) of an ``MLP`` with the normalization ``norm`` inserted (see module docstring).

    The layers (weights, multipliers, parameterization, activation) are the model's own;
    only the normalization steps are added. ``norm="none"`` equals ``model(x)``.
    """
    check_norm(norm)
    a = check_inputs(x, model.widths[0])
    last = len(model.layers) - 1
    for l, layer in enumerate(model.layers):
        h = layer(a)
        if l == last:
            break
        if norm == "bn_middle":
            h = batch_standardize(h)
        elif norm == "ln_middle":
            h = layer_standardize(h)
        a = model.activation(h)
    if norm in ("bn_last", "center_last"):
        h = batch_standardize(h, center_only=(norm == "center_last"))
    return h


def normalized_mlp(widths: Sequence[int], norm: str, activation="relu", parameterization: str = "standard",
                   sigma_w: float = math.sqrt(2.0)):
    """apply_fn(params, x) -> (N, K) of a bias-free ``MLP(widths)`` with normalization ``norm``.

    params: the ``nnx.State`` of ``overparam.models.init_mlp_params(key, widths, activation,
    parameterization, sigma_w, 0.0, use_bias=False)`` (or a seed-batched one from
    ``init_mlp_ensemble``, with ``jax.vmap``). Default: the standard parameterization of
    Karakida et al., w_l ~ N(0, sigma_w^2 / n_{l-1}), with the He value sigma_w^2 = 2 for ReLU.
    """
    check_norm(norm)
    template = nnx.eval_shape(
        lambda: MLP(widths, activation, parameterization, sigma_w, 0.0, use_bias=False, rngs=nnx.Rngs(0)))
    graphdef, _, rest = nnx.split(template, nnx.Param, ...)

    def apply_fn(params, x):
        return normalized_forward(nnx.merge(graphdef, params, rest), x, norm)

    return apply_fn


# ---------------------------------------------------------------------------------- Jacobians


def output_jacobian(apply_fn, params, x, per_example: bool = True):
    """Jacobian of the stacked outputs as a pytree like params with leaves (N*K, *leaf.shape).

    Row n*K + k is d f_k(x_n) / d theta. per_example=True differentiates each example alone
    (cost ~ N single-example backward passes); it is wrong for batch-coupled networks
    (batch normalization), which need per_example=False (the whole batch, cost ~ N*K
    backward passes of the whole batch).
    """
    if per_example:
        def one(xn):
            return jax.jacrev(lambda p: apply_fn(p, xn[None])[0])(params)  # leaves (K, *shape)

        jac = jax.vmap(one)(x)  # leaves (N, K, *shape)
    else:
        jac = jax.jacrev(lambda p: apply_fn(p, x))(params)  # leaves (N, K, *shape)
    return jax.tree.map(lambda j: j.reshape(j.shape[0] * j.shape[1], *j.shape[2:]), jac)


def block_grams(jac):
    """List of per-leaf Gram matrices J_b J_b^T, each (NK, NK), in ``jax.tree.leaves`` order."""
    return [j.reshape(j.shape[0], -1) @ j.reshape(j.shape[0], -1).T for j in jax.tree.leaves(jac)]


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
    check_norm(norm)
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
    check_norm(norm)
    if depth < 2:
        raise ValueError(f"depth={depth} must be >= 2 (at least one hidden layer)")
    lam_max, lam_mean = [], []
    for m in widths:
        d, n = max(1, round(input_ratio * m)), max(2, round(sample_ratio * m))  # Karakida: all sizes ~ M
        net = (d,) + (int(m),) * (depth - 1) + (1,)
        k_x, k_p = jax.random.split(jax.random.fold_in(key, int(m)))  # same width, same draw
        x = jax.random.normal(k_x, (num_seeds, n, d))
        params = jax.vmap(lambda k: init_mlp_params(k, net, activation, parameterization, math.sqrt(2.0), 0.0,
                                                    use_bias=False))(jax.random.split(k_p, num_seeds))
        apply_fn, per_example, output_map = fisher_setup(net, norm, activation, parameterization)
        top, mean = fisher_eig_stats_batch(apply_fn, params, x, per_example, output_map)
        lam_max.append(top)
        lam_mean.append(mean)
    return np.asarray(jnp.stack(lam_max)), np.asarray(jnp.stack(lam_mean))
