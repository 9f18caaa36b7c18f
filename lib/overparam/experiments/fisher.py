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


@partial(jax.jit, static_argnames=("apply_fn", "per_example", "output_map"))
def fisher_top_trace_batch(apply_fn, params_batch, x_batch, per_example: bool = True, output_map=None):
    """(lambda_max(G), tr G, lambda_max(C G C)) over a leading seed axis (S,), two seeds at a time.

    C = (I_N - 1 1^T / N) (x) I_K centres each output over the batch: C G C is the Gram of the
    network with its output mean-subtracted (``center_last``; the tests check it).
    """
    def one(px):
        gram = fisher_gram(apply_fn, px[0], px[1], per_example, output_map)
        n = px[1].shape[0]
        k = gram.shape[0] // n
        center = jnp.kron(jnp.eye(n) - jnp.ones((n, n)) / n, jnp.eye(k))
        return jnp.linalg.eigvalsh(gram)[-1], jnp.trace(gram), jnp.linalg.eigvalsh(center @ gram @ center)[-1]

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


def fisher_width_stats(key, widths: Sequence[int], norm: str, depth: int = 3, num_seeds: int = 4,
                       input_ratio: float = 1.0, sample_ratio: float = 1.0, num_examples: int | None = None,
                       activation="relu", parameterization: str = "standard") -> dict:
    """Spectral statistics of F vs width M: d = input_ratio*M inputs, N = sample_ratio*M (or ``num_examples``) samples.

    Network: ``normalized_mlp((d, M, ..., M, 1), norm)`` with ``depth`` weight layers, sigma_w^2 = 2,
    in the standard parameterization of Karakida et al. (or ``"ntk"``), at ``num_seeds`` random
    initializations, each with its own inputs x ~ N(0, I_d) (the same draws for every ``norm`` and
    parameterization: the NTK-parameterized net then has the same effective weights). Returns a dict
    of numpy arrays: ``lam_max``, ``trace`` = tr G = tr F, ``mean`` = tr F / P, ``bulk`` = the mean of
    the other N - 1 eigenvalues of G, (tr G - lam_max) / (N - 1), and ``lam_max_centered`` = lambda_max
    of the Gram with the output centred over the batch, each (W, S); ``num_params`` and
    ``num_examples`` (W,).
    """
    check_normalization(norm)
    if depth < 2:
        raise ValueError(f"depth={depth} must be >= 2 (at least one hidden layer)")
    if num_examples is not None and int(num_examples) < 2:
        raise ValueError(f"num_examples={num_examples} must be >= 2 (None: sample_ratio * M)")
    out = {k: [] for k in ("lam_max", "trace", "lam_max_centered", "num_params", "num_examples")}
    for m in widths:
        d = max(1, round(input_ratio * m))
        n = int(num_examples) if num_examples is not None else max(2, round(sample_ratio * m))  # Karakida: all ~ M
        net = (d,) + (int(m),) * (depth - 1) + (1,)
        k_x, k_p = jax.random.split(jax.random.fold_in(key, int(m)))  # same width, same draw
        x = jax.random.normal(k_x, (num_seeds, n, d))
        params = normalized_mlp(net, "none", activation, parameterization).init_ensemble(jax.random.split(k_p, num_seeds))
        apply_fn, per_example, output_map = fisher_setup(net, norm, activation, parameterization)
        top, trace, top_c = fisher_top_trace_batch(apply_fn, params, x, per_example, output_map)
        out["lam_max"].append(top)
        out["trace"].append(trace)
        out["lam_max_centered"].append(top_c)
        out["num_params"].append(sum(a * b for a, b in zip(net[:-1], net[1:])))
        out["num_examples"].append(n)
    res = {k: np.asarray(v) if k.startswith("num") else np.asarray(jnp.stack(v)) for k, v in out.items()}
    res["mean"] = res["trace"] / res["num_params"][:, None]
    res["bulk"] = (res["trace"] - res["lam_max"]) / (res["num_examples"][:, None] - 1)
    return res


def fisher_width_sweep(key, widths: Sequence[int], norm: str, depth: int = 3, num_seeds: int = 4,
                       input_ratio: float = 1.0, sample_ratio: float = 1.0, activation="relu",
                       parameterization: str = "standard"):
    """(lam_max (W, S), lam_mean (W, S)) of ``fisher_width_stats`` (same arguments): lambda_max(F) and tr F / P."""
    stats = fisher_width_stats(key, widths, norm, depth, num_seeds, input_ratio, sample_ratio, None, activation,
                               parameterization)
    return stats["lam_max"], stats["mean"]


# ------------------------------------------------------------------ mean-field predictions


def _relu_moments(v, c):
    rho = np.clip(c / v, -1.0, 1.0)
    theta = np.arccos(rho)
    return v / 2, v / (2 * np.pi) * (np.sqrt(1 - rho**2) + (np.pi - theta) * rho), (np.pi - theta) / (2 * np.pi)


def _relu_kappas(depth: int, input_ratio: float, sigma_w2: float, input_correlation: float):
    q, steps = [(1.0, float(input_correlation))], []
    for _ in range(depth - 1):
        q1, q2, step = _relu_moments(sigma_w2 * q[-1][0], sigma_w2 * q[-1][1])
        q.append((q1, q2))
        steps.append((0.5, step))
    qh = [(1.0, 1.0)]
    for step in reversed(steps):
        qh.insert(0, (sigma_w2 * qh[0][0] * step[0], sigma_w2 * qh[0][1] * step[1]))
    fan = [input_ratio] + [1.0] * (depth - 1)
    k = [sum(fan[l] * q[l][i] * qh[l][i] for l in range(depth)) for i in (0, 1)]
    kn = [sigma_w2 * sum(q[l][i] * qh[l][i] for l in range(depth)) for i in (0, 1)]
    return k, kn


def relu_fisher_moments(depth: int = 3, input_ratio: float = 1.0, sigma_w2: float = 2.0) -> dict:
    """Karakida's kappa_1, kappa_2 (and their NTK-parameterization values) of the bias-free ReLU net, in float.

    The same recursions as ``overparam.derivations.hessian_fisher.relu_fisher_moments`` (its
    docstring has them; the tests check the two agree): uncorrelated inputs x ~ N(0, I_d), d =
    input_ratio * M, hidden widths M, one output. Theta(x, x) = M kappa1, Theta(x, x') = M kappa2 in the
    standard parameterization; kappa1_ntk, kappa2_ntk without the factor M in the NTK one.
    ``kappa2_slope`` (``_ntk``): d kappa2 / d rho at input overlap rho = x.x'/d = 0 (central difference,
    step 1e-5; the derivation module has it exactly), which sets the spread of the bulk.
    """
    depth = int(depth)
    if depth < 2:
        raise ValueError(f"depth={depth} must be >= 2")
    (k1, k2), (k1n, k2n) = _relu_kappas(depth, input_ratio, sigma_w2, 0.0)
    h = 1e-5
    (_, up), (_, up_n) = _relu_kappas(depth, input_ratio, sigma_w2, h)
    (_, dn), (_, dn_n) = _relu_kappas(depth, input_ratio, sigma_w2, -h)
    return dict(kappa1=k1, kappa2=float(k2), kappa1_ntk=k1n, kappa2_ntk=float(k2n),
                kappa2_slope=float((up - dn) / (2 * h)), kappa2_slope_ntk=float((up_n - dn_n) / (2 * h)))


def fisher_predictions(moments: dict, width, num_examples, parameterization: str = "standard",
                       input_dim=None) -> dict:
    """Mean-field lambda_max, bulk mean and centred lambda_max of F = J^T J / N (numpy, broadcast over width, N).

    G = (c/N) [(kappa1 - kappa2) I + kappa2 1 1^T], c = M (standard) or 1 with the kappa^ntk values
    (``"ntk"``): lam_max = c (kappa1 + (N-1) kappa2)/N, bulk = c (kappa1 - kappa2)/N. ``centered``: the
    top of the bulk, c [kappa1 - kappa2 + kappa2' (2 sqrt(gamma) + gamma)] / N with gamma = N / input_dim
    (the overlap spread, ``overparam.derivations.hessian_fisher.relu_kappa2_slope``); = bulk when
    input_dim is None (d -> oo).
    """
    m, n = np.asarray(width, dtype=float), np.asarray(num_examples, dtype=float)
    if parameterization == "standard":
        c, k1, k2, k2p = m, moments["kappa1"], moments["kappa2"], moments["kappa2_slope"]
    elif parameterization == "ntk":
        c, k1, k2, k2p = np.ones_like(m), moments["kappa1_ntk"], moments["kappa2_ntk"], moments["kappa2_slope_ntk"]
    else:
        raise ValueError(f"parameterization={parameterization!r}; allowed: standard, ntk")
    gamma = 0.0 if input_dim is None else n / np.asarray(input_dim, dtype=float)
    return dict(lam_max=c * (k1 + (n - 1) * k2) / n, bulk=c * (k1 - k2) / n,
                centered=c * (k1 - k2 + k2p * (2 * np.sqrt(gamma) + gamma)) / n)
