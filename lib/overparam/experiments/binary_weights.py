r"""Binary-weight two-layer networks (stochastic rounding, straight-through gradient) and their NTK.

The model (following Zhang, Yin & Wang 2022, who treat the binary weights as random
variables under stochastic rounding). Inputs x~ (N, D) with unit-norm rows; hidden width m;
real output weights v (m, 1); real *latent* first-layer weights W (D, m) in [-1, 1]:

    forward:   Q = round(W),  Q_ij = +1 with probability (1 + W_ij)/2, else -1  (so E Q = W),
               f(x~; Q) = (1/sqrt(m)) sum_j v_j relu(Q_j . x~),
    backward:  straight-through, dQ/dW := 1 (the gradient of the rounded net w.r.t. Q is used for W),
    after a step: W is clipped back to [-1, 1] (BinaryConnect).

In code: ``binary_net_init`` / ``binary_net_apply`` (outputs (N, 1)), trained by
``train_binary_net`` (full-batch GD on ``training.run_loop``, the clipping as its constraint);
``binary_net_gaps`` runs one training per seed and measures train and test errors.

A fresh Q is drawn at every forward pass (every training step), so the weights the network
computes with are exactly +-1 and the rounding noise acts in the forward pass. Predictions
are the mean over rounding draws (``quasi_predict``): the "quasi network" of Zhang et al.

The real-weight ("vanilla") network is the same function with Q = W and W ~ N(0, 1).
Both have unit pre-activation variance: Var(Q_j . x~) = |x~|^2 = 1.

The quasi network and its NTK (the analytic side; large fan-in D, so that the rounding noise
of Q_j . x~ is Gaussian by the CLT, and input rows spread over many coordinates). Given W,
Q_j . x~ ~ N(u_j, 1 - q) with u_j = W_j . x~ and q = E[W_ij^2] (the latent second moment:
q = 1/3 for W ~ U(-1, 1)), so E_Q f = (1/sqrt(m)) sum_j v_j relu~(u_j), relu~ the
Gaussian-smoothed ReLU. With u, u' of variance q and covariance q rho, the smoothed
pre-activations u + sqrt(1-q) z have unit variance and correlation q rho, hence

    Theta_bin(t) = K1(q rho) + rho K0(q rho)     vs     Theta_real(t) = K1(rho) + rho K0(rho),

with K1, K0 the arc-cosine kernels (``spiky_smooth.relu_duals``) and rho = t without a bias
(``spiky_smooth.bias_correlation`` with beta). The rounding noise *shrinks the correlation*
by q < 1 inside the arc-cosine kernels, which moves their singularity at rho = 1 out to
rho = 1/q: Theta_bin is analytic on [-1, 1] and its spectrum decays geometrically.

Inputs of low dimension d are used through a fixed isometric embedding x~ = x R^T, R (D, d)
with orthonormal columns (``random_embedding``): dot products, hence every kernel above, are
unchanged, and the rows of x~ spread over D coordinates as the CLT needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from overparam.experiments.spiky_smooth import bias_correlation, relu_duals, relu_taylor_coefficients
from overparam.kernels.spectra import taylor_compose_affine
from overparam.training import mse_loss, run_loop


# ------------------------------------------------------------------------------ analytic kernel
def check_q(q):
    """Validate the latent second moment q in (0, 1]."""
    if not 0 < q <= 1:
        raise ValueError(f"q={q!r} must be in (0, 1] (latent second moment E[W^2] of weights in [-1, 1])")
    return float(q)


def binary_ntk_dot(t, q: float, beta: float = 0.0):
    """NTK of the quasi (binary-weight) network, Theta_bin(t) = K1(q rho) + rho K0(q rho), float64.

    q = 1 gives back the real-weight ReLU NTK ``spiky_smooth.relu_ntk_dot``.
    """
    rho = bias_correlation(t, beta)
    k1, k0 = relu_duals(check_q(q) * rho)
    return k1 + rho * k0


def binary_ntk_taylor(q: float, num_terms: int = 400, beta: float = 0.0) -> np.ndarray:
    """Taylor coefficients in t of ``binary_ntk_dot`` (num_terms,), all >= 0 (for the exact spectrum).

    In rho: c1_n q^n + c0_{n-1} q^{n-1} (the shift is the factor rho in front of K0); then
    rho = (t + beta^2)/(1 + beta^2) is substituted. The series converges like (q (1 + 2 beta^2)/(1 + beta^2))^n
    on [-1, 1] (q < 1 and beta = 0: like q^n); the truncation error is below sum of the dropped terms.
    """
    q = check_q(q)
    k1, k0 = relu_taylor_coefficients(num_terms)
    powers = q ** np.arange(num_terms)
    in_rho = k1 * powers
    in_rho[1:] += (k0 * powers)[:-1]
    alpha = 1.0 / (1.0 + beta**2)
    return taylor_compose_affine(in_rho, alpha, beta**2 * alpha)


def uniform_latent_q(bound: float = 1.0) -> float:
    """q = E[W^2] = bound^2 / 3 for latent weights W ~ U(-bound, bound)."""
    if not 0 < bound <= 1:
        raise ValueError(f"bound={bound!r} must be in (0, 1]")
    return bound**2 / 3.0


# ------------------------------------------------------------------------------ finite network
def random_embedding(key, d: int, big_d: int) -> jax.Array:
    """R (big_d, d) with orthonormal columns: x -> x R^T keeps every dot product."""
    if big_d < d:
        raise ValueError(f"big_d={big_d} must be >= d={d}")
    g = jax.random.normal(key, (big_d, d))
    r, _ = jnp.linalg.qr(g)
    return r


def stochastic_round(key, w):
    """Q in {-1, +1} with P(Q = +1) = (1 + w)/2 for w in [-1, 1]: unbiased, E Q = w (Q has w's shape and dtype)."""
    return jnp.where(jax.random.uniform(key, w.shape, w.dtype) < 0.5 * (1.0 + w), 1.0, -1.0).astype(w.dtype)


def binary_net_init(key, d_in: int, width: int, binary: bool, latent_bound: float = 1.0):
    """params {"w": (d_in, width), "v": (width, 1)} with f = 0 at initialization (antisymmetric pairs).

    width must be even: neurons j and j + width/2 share the first-layer weights and have
    opposite v, so the real network (and the mean over rounding of the binary one) is exactly
    0 at initialization while the NTK is unchanged (no random initial function adds to the
    test error). w ~ U(-latent_bound, latent_bound) (binary: the latent weights) or N(0, 1)
    (real); v ~ N(0, 1).
    """
    if width % 2:
        raise ValueError(f"width={width} must be even (antisymmetric pairs of neurons)")
    kw, kv = jax.random.split(key)
    half = width // 2
    if binary:
        w = jax.random.uniform(kw, (d_in, half), minval=-latent_bound, maxval=latent_bound)
    else:
        w = jax.random.normal(kw, (d_in, half))
    v = jax.random.normal(kv, (half,))
    return {"w": jnp.concatenate([w, w], axis=1), "v": jnp.concatenate([v, -v])[:, None]}


def binary_net_apply(params, x, key=None, *, binary: bool = False):
    """f(x) (N, 1) = relu(x @ W_eff) @ v / sqrt(m); W_eff = W (real) or one rounding draw Q of W (binary).

    x: (N, D) unit-norm rows; params from ``binary_net_init`` (w (D, m), v (m, 1)). binary=True
    needs ``key`` (one Q for the whole batch) and uses the straight-through estimator
    W + stop_gradient(Q - W): forward value Q, gradient as if W.

    The real network (binary=False) is ``MLPSpec.two_layer(D, m)`` (ntk parameterization, no
    biases) on the inputs sqrt(D) x, with layers [w, v]: that spec's 1/sqrt(D) is absorbed by
    the unit-norm rows here (tests/experiments/test_binary_weights.py checks both the function
    and its infinite-width NTK, ``binary_ntk_dot`` at q = 1, against ``kernels.analytic.mlp_kernels``).
    """
    w, v = params["w"], params["v"]
    if binary:
        if key is None:
            raise ValueError("binary=True needs a key for the stochastic rounding")
        w = w + jax.lax.stop_gradient(stochastic_round(key, w) - w)
    return jax.nn.relu(x @ w) @ v / math.sqrt(v.shape[0])


def clip_latent_weights(params):
    """The BinaryConnect projection after each step: latent first-layer weights w clipped to [-1, 1]."""
    return {"w": jnp.clip(params["w"], -1.0, 1.0), "v": params["v"]}


@partial(jax.jit, static_argnames=("num_draws",))
def _quasi_mean(params, x, key, *, num_draws: int):
    keys = jax.random.split(key, num_draws)
    return jnp.mean(jax.vmap(lambda k: binary_net_apply(params, x, k, binary=True))(keys), axis=0)


def quasi_predict(params, x, key, *, binary: bool, num_draws: int = 64):
    """Mean prediction (N, 1) over ``num_draws`` rounding draws (binary), or the plain output (real).

    x: (N, D) unit-norm rows; key: the rounding draws ``jax.random.split(key, num_draws)``.
    """
    return _quasi_mean(params, x, key, num_draws=num_draws) if binary else binary_net_apply(params, x)


@dataclass(frozen=True)
class GapResult:
    """Train/test mean squared errors and the generalization gap test - train.

    Arrays over the leading seed axis S: train_mse (S,), test_mse (S,), gap = test - train (S,),
    losses (S, num_steps) the training loss (1/2n sum (f - y)^2 with the rounded weights) per step.
    """

    train_mse: np.ndarray
    test_mse: np.ndarray
    gap: np.ndarray
    losses: np.ndarray


def _rounding_keys(data, t):
    x, y, key = data
    return x, y, jax.random.fold_in(key, t)


@partial(jax.jit, static_argnames=("binary", "num_steps"))
def train_binary_net(params0, x, y, lr, key, *, binary: bool, num_steps: int):
    """Full-batch GD on ``mse_loss`` = 1/(2n) sum (f - y)^2: (params after num_steps, step losses (num_steps,)).

    params0 from ``binary_net_init``; x (n, D) unit-norm rows, y (n, 1); lr relative to this loss.
    Step t computes the loss and its straight-through gradient with the rounding draw
    ``fold_in(key, t)`` (binary; the real network ignores key), updates theta <- theta - lr grad,
    then clips the latent weights to [-1, 1] (binary: ``clip_latent_weights``). One
    ``training.run_loop`` without divergence handling; losses[t] is the loss at theta_t.
    """
    def loss_fn(params, x, y, k):
        return mse_loss(binary_net_apply(params, x, k, binary=binary), y)

    result = run_loop(loss_fn, params0, optax.sgd(lr), num_steps, data=(x, y, key), batches=_rounding_keys,
                      constraint=clip_latent_weights if binary else None, record_every=num_steps,
                      divergence_threshold=None)
    return result.params, result.step_losses


def binary_net_gaps(keys, x, y, x_test, y_test, *, binary: bool, width: int, lr: float, num_steps: int,
                    latent_bound: float = 1.0, num_draws: int = 256) -> GapResult:
    """``train_binary_net`` once per seed (vmapped) from ``binary_net_init``, then train/test errors.

    keys: (S,) typed keys (init, rounding and evaluation draws of each seed); x (S, n, D) and
    x_test (S, M, D) unit-norm rows; y (S, n), y_test (S, M) labels (one data set per seed;
    noisy labels on both sides give the usual generalization gap). lr is relative to
    1/(2n) sum (f - y)^2 (stable for lr < 2 / lambda_max(Theta / n)). The binary network draws
    a fresh rounding at every step; its errors are those of ``quasi_predict`` with ``num_draws``.
    """
    x, y, x_test, y_test = (jnp.asarray(a, jnp.float32) for a in (x, y, x_test, y_test))
    s = len(keys)
    if x.ndim != 3 or x.shape[0] != s or y.shape != x.shape[:2]:
        raise ValueError(f"x has shape {x.shape} and y has shape {y.shape}; expected ({s}, n, D) and ({s}, n)")
    if x_test.ndim != 3 or x_test.shape[0] != s or y_test.shape != x_test.shape[:2]:
        raise ValueError(f"x_test has shape {x_test.shape}, y_test {y_test.shape}; expected ({s}, M, D) and ({s}, M)")

    def one_seed(key, x, y, x_test, y_test):
        k_init, k_train, k_eval = jax.random.split(key, 3)
        params0 = binary_net_init(k_init, x.shape[1], width, binary, latent_bound)
        params, losses = train_binary_net(params0, x, y[:, None], jnp.float32(lr), k_train, binary=binary,
                                          num_steps=num_steps)
        f_all = quasi_predict(params, jnp.concatenate([x, x_test]), k_eval, binary=binary, num_draws=num_draws)[:, 0]
        f_train, f_test = f_all[: x.shape[0]], f_all[x.shape[0]:]
        return jnp.mean((f_train - y) ** 2), jnp.mean((f_test - y_test) ** 2), losses

    train_mse, test_mse, losses = jax.vmap(one_seed)(keys, x, y, x_test, y_test)
    train_mse, test_mse = np.asarray(train_mse, np.float64), np.asarray(test_mse, np.float64)
    return GapResult(train_mse, test_mse, test_mse - train_mse, np.asarray(losses))


# ------------------------------------------------------------ the generalization-gap experiment
def sphere_target(x):
    """f*(x) = sqrt(3) x_1 + sqrt(15) x_2 x_3 on S^2: harmonics of degree 1 and 2, each of variance 1."""
    x = np.asarray(x)
    return np.sqrt(3.0) * x[..., 0] + np.sqrt(15.0) * x[..., 1] * x[..., 2]


def sample_sphere_tasks(key, num_seeds: int, n: int, n_test: int, noise: float):
    """num_seeds independent data sets on S^2: x (S, n, 3), y (S, n), x_test (S, n_test, 3), y_test (S, n_test).

    Uniform inputs; labels f*(x) + noise * N(0, 1) on both sides (``sphere_target``); float64 NumPy.
    """
    k1, k2, k3, k4 = jax.random.split(key, 4)
    with jax.enable_x64(True):
        def sphere(k, size):
            g = np.asarray(jax.random.normal(k, (num_seeds, size, 3), jnp.float64))
            return g / np.linalg.norm(g, axis=-1, keepdims=True)

        x, x_test = sphere(k1, n), sphere(k2, n_test)
        y = sphere_target(x) + noise * np.asarray(jax.random.normal(k3, (num_seeds, n), jnp.float64))
        y_test = sphere_target(x_test) + noise * np.asarray(jax.random.normal(k4, (num_seeds, n_test), jnp.float64))
    return x, y, x_test, y_test


def kernel_gd_errors(kernel_fn, x, y, x_test, y_test, lr: float, num_steps: int):
    """(train MSE, test MSE) of the linearized network f = 0 + kernel GD: (I - lr K/n)^T on the residual.

    kernel_fn: dot-product kernel t -> Theta(t) (e.g. ``binary_ntk_dot``); x (n, d), x_test (M, d)
    unit-norm rows; same loss and lr convention as ``train_binary_net``. float64.
    """
    from overparam.kernels.spectra import dot_kernel_matrix

    k_train = dot_kernel_matrix(kernel_fn, x)
    k_test = dot_kernel_matrix(kernel_fn, x_test, x)
    with jax.enable_x64(True):
        f_train, f_test = (np.asarray(f) for f in _kernel_gd_jit(k_train, k_test, y, float(lr), int(num_steps)))
    return float(np.mean((f_train - y) ** 2)), float(np.mean((f_test - y_test) ** 2))


@partial(jax.jit, static_argnames=("num_steps",))
def _kernel_gd_jit(k_train, k_test, y, lr, num_steps):
    from overparam.kernels.regression import gradient_flow_prediction

    pred = gradient_flow_prediction(k_train, k_test, y, lr=lr, num_steps=num_steps)
    return pred.mean_train, pred.mean
