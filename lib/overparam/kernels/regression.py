r"""Predictions from a kernel: kernel (ridge) regression, its tuning, the NNGP posterior, linear-model dynamics.

Shapes: k_train_train (N, N), k_test_train (M, N), k_test_test (M, M); targets y (N,) or
(N, K). A kernel from ``overparam.kernels.analytic`` is per output: with K outputs it acts
as K (x) I_K, so every output column is predicted with the same (N, N) kernel.

Time units of the gradient-flow prediction. With the book's loss
``mse_loss = 1/(2N) sum_{n,k} (f - y)^2`` (``overparam.training``) and a network in the NTK
parameterization, one GD step with learning rate lr moves the training outputs by
-(lr/N) Theta (f - y) to first order (Theta the NTK of ``overparam.kernels.empirical``, summed over
parameters), so in the linearized (infinite-width) model

    f_k(X)  = y + (I - lr Theta/N)^k (f_0(X) - y)                  (GD, k steps)
    f_t(X)  = y + exp(-t Theta/N) (f_0(X) - y),   t = lr * k        (gradient flow)
    f_t(x*) = f_0(x*) + Theta(x*, X) Theta^{-1} (I - exp(-t Theta/N)) (y - f_0(X)).

So t counts "learning rate times steps", and the kernel's eigenvalues enter divided by N: the
flow converges on a scale t ~ N / lambda_min(Theta), GD is stable iff lr < 2N / lambda_max.
At t = infinity the test prediction is ridgeless kernel regression with the NTK, started
from f_0.

Over random initializations f_0 is the NNGP Gaussian process (kernel K), so the prediction is
Gaussian (Lee et al. 2019, eq. 16): with A_t = Theta(x*, X) Theta^{-1} (I - exp(-t Theta/N)),

    mean_t = A_t y,   cov_t = K(x*, x*) - A_t K(X, x*) - K(x*, X) A_t^T + A_t K(X, X) A_t^T.

Everything uses the eigendecomposition of the (symmetric) train kernel; eigenvalues below
``rcond * lambda_max`` are treated as exact zeros (directions that never move).

Linear-model dynamics (``linear_model_prediction``): the same formulas for a model that is linear
in its parameters with tangent kernel Theta (the empirical NTK at initialization), in GD steps or
in flow time, for scalar outputs.

Tuning (``rbf_kernel``, ``krr_predict``, ``tune_krr``): the estimator K(x*, X) (K + ridge I)^{-1} y
applied to centred targets (the mean is added back: the kernels need not contain constants, and the
ridge should not shrink the mean); ridges relative to the kernel's scale, ridge = eps * trace(K) / N,
so one grid of eps serves kernels of any normalization (NTK, RBF); a whole ridge path from *one*
float64 NumPy eigendecomposition K = V diag(s) V^T (calling ``kernel_regression`` once per ridge
would redo an XLA eigendecomposition each time, ~0.2 s for N = 256 on CPU against ~0.01 s in NumPy;
the tests check that both give the same predictions). Ridges down to ~1e-10 of the kernel scale are
meaningless in float32. The infinite-width NTK / NNGP come from ``overparam.kernels.analytic`` (pass
e.g. ``ntk_fc`` with its keyword arguments as ``kernel_fn``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_square(name, k):
    k = jnp.asarray(k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"{name} has shape {k.shape}; expected a square (N, N) matrix")
    return k


def _check_cross(name, k, n):
    k = jnp.asarray(k)
    if k.ndim != 2 or k.shape[1] != n:
        raise ValueError(f"{name} has shape {k.shape}; expected (M, {n})")
    return k


def _check_targets(name, y, n):
    y = jnp.asarray(y)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"{name} has shape {y.shape}; expected ({n},) or ({n}, K)")
    return y


def _spectral_apply(k, g, rhs, rcond):
    """V diag(g(lambda)) V^T rhs for the symmetric k = V diag(lambda) V^T; g(0-ish) -> 0."""
    evals, evecs = jnp.linalg.eigh(k)
    keep = evals > rcond * jnp.max(evals)
    gl = jnp.where(keep, g(jnp.where(keep, evals, 1.0)), 0.0)
    proj = evecs.T @ rhs
    scaled = gl[:, None] * proj if proj.ndim == 2 else gl * proj
    return evecs @ scaled


def kernel_regression(k_train_train, k_test_train, y_train, ridge=0.0, *, rcond=None):
    """Kernel (ridge) regression mean K(x*, X) (K(X, X) + ridge I)^{-1} y: (M,) or (M, K).

    ridge is absolute (a common scale-free choice is eps * trace(K) / N). ridge=0 is the
    minimum-norm interpolant, which gradient flow with this kernel reaches at t = infinity
    from f_0 = 0. rcond: eigenvalue cut-off relative to the largest (default: 10 machine eps).
    """
    k = _check_square("k_train_train", k_train_train)
    n = k.shape[0]
    ks = _check_cross("k_test_train", k_test_train, n)
    y = _check_targets("y_train", y_train, n)
    rcond = 10 * jnp.finfo(k.dtype).eps if rcond is None else rcond
    alpha = _spectral_apply(k + ridge * jnp.eye(n, dtype=k.dtype), lambda lam: 1.0 / lam, y, rcond)
    return ks @ alpha


def gp_posterior(k_train_train, k_test_train, k_test_test, y_train, noise=0.0, *, rcond=None):
    """NNGP (Bayesian) posterior of a GP prior with kernel K given y = f(X) + N(0, noise):

    mean (M,) or (M, K) = K(x*, X) (K + noise I)^{-1} y;
    cov (M, M) = K(x*, x*) - K(x*, X) (K + noise I)^{-1} K(X, x*) (the same for every output).
    """
    k = _check_square("k_train_train", k_train_train)
    n = k.shape[0]
    ks = _check_cross("k_test_train", k_test_train, n)
    kss = _check_square("k_test_test", k_test_test)
    y = _check_targets("y_train", y_train, n)
    rcond = 10 * jnp.finfo(k.dtype).eps if rcond is None else rcond
    kn = k + noise * jnp.eye(n, dtype=k.dtype)
    inv = lambda lam: 1.0 / lam  # noqa: E731
    mean = ks @ _spectral_apply(kn, inv, y, rcond)
    cov = kss - ks @ _spectral_apply(kn, inv, ks.T, rcond)
    return mean, cov


@partial(jax.tree_util.register_dataclass, data_fields=["mean", "mean_train", "cov"], meta_fields=[])
@dataclass(frozen=True)
class FlowPrediction:
    """Linearized-network prediction after training time t.

    mean: (M,) or (M, K) test outputs; mean_train: (N,) or (N, K) train outputs; cov: (M, M)
    covariance over random initializations (None unless the NNGP blocks were given).
    """

    mean: jax.Array
    mean_train: jax.Array
    cov: jax.Array | None


def _flow_filter(t, lr, num_steps, n):
    """g(lambda) = (1 - decay(lambda)) / lambda, the spectral filter Theta^{-1}(I - decay)."""
    if num_steps is not None:
        if lr is None:
            raise ValueError("num_steps needs lr (discrete GD: decay (1 - lr lambda / N)^num_steps)")
        return lambda lam: (1.0 - (1.0 - lr * lam / n) ** num_steps) / lam
    if t is None or (not isinstance(t, jax.Array) and t == float("inf")):
        return lambda lam: 1.0 / lam
    # -expm1(-x) = 1 - e^{-x}, accurate for small x
    return lambda lam: -jnp.expm1(-t * lam / n) / lam


def gradient_flow_prediction(ntk_train_train, ntk_test_train, y_train, f0_train=None, f0_test=None, t=None, *,
                             lr=None, num_steps=None, nngp_train_train=None, nngp_test_train=None,
                             nngp_test_test=None, rcond=None) -> FlowPrediction:
    """Outputs of the linearized network trained on ``mse_loss`` (see the module docstring).

    t: gradient-flow time in units of lr * steps (None or inf: the end of training, ridgeless
    NTK regression). Or give lr and num_steps for the exact discrete-GD dynamics
    (I - lr Theta/N)^num_steps. f0_train (N,)/(N, K), f0_test (M,)/(M, K): one network's
    outputs at initialization (default zero: the mean over initializations). With the three
    NNGP blocks, ``cov`` is the covariance over initializations (Lee et al. 2019, eq. 16).
    """
    theta = _check_square("ntk_train_train", ntk_train_train)
    n = theta.shape[0]
    theta_s = _check_cross("ntk_test_train", ntk_test_train, n)
    y = _check_targets("y_train", y_train, n)
    f0 = jnp.zeros_like(y) if f0_train is None else _check_targets("f0_train", f0_train, n)
    f0s = jnp.zeros((theta_s.shape[0],) + y.shape[1:], y.dtype) if f0_test is None else jnp.asarray(f0_test)
    if f0s.shape != (theta_s.shape[0],) + y.shape[1:]:
        raise ValueError(f"f0_test has shape {f0s.shape}; expected {(theta_s.shape[0],) + y.shape[1:]}")
    rcond = 10 * jnp.finfo(theta.dtype).eps if rcond is None else rcond
    g = _flow_filter(t, lr, num_steps, n)
    moved_coef = _spectral_apply(theta, g, y - f0, rcond)  # Theta^{-1}(I - decay)(y - f0)
    mean = f0s + theta_s @ moved_coef
    mean_train = f0 + theta @ moved_coef
    cov = None
    blocks = (nngp_train_train, nngp_test_train, nngp_test_test)
    if any(b is not None for b in blocks):
        if any(b is None for b in blocks):
            raise ValueError("give all three of nngp_train_train, nngp_test_train, nngp_test_test for the covariance")
        k = _check_square("nngp_train_train", nngp_train_train)
        ks = _check_cross("nngp_test_train", nngp_test_train, n)
        kss = _check_square("nngp_test_test", nngp_test_test)
        a = _spectral_apply(theta, g, theta_s.T, rcond).T  # A_t = Theta_s Theta^{-1}(I - decay): (M, N)
        cov = kss - a @ ks.T - ks @ a.T + a @ k @ a.T
    return FlowPrediction(mean, mean_train, cov)


# ---------------------------------------------------------------- the linear model, GD or flow


def _check(ntk_train, ntk_test_train, f0_train, f0_test, y):
    n = ntk_train.shape[0]
    if ntk_train.shape != (n, n):
        raise ValueError(f"ntk_train has shape {ntk_train.shape}; expected square (N, N)")
    if ntk_test_train.ndim != 2 or ntk_test_train.shape[1] != n:
        raise ValueError(f"ntk_test_train has shape {ntk_test_train.shape}; expected (M, {n})")
    for name, arr, size in (("f0_train", f0_train, n), ("y", y, n), ("f0_test", f0_test, ntk_test_train.shape[0])):
        if arr.shape != (size,):
            raise ValueError(f"{name} has shape {arr.shape}; expected ({size},)")


def linear_model_prediction(ntk_train, ntk_test_train, f0_train, f0_test, y, lr, num_steps=None, time=None):
    """Train and test outputs of the linear model after GD (``num_steps``) or gradient flow (``time``).

    ntk_train (N, N), ntk_test_train (M, N), f0_train (N,), f0_test (M,), y (N,): scalar outputs.
    Give exactly one of ``num_steps`` (discrete GD with step lr) or ``time`` (flow for time t, rate lr).
    Returns (f_train (N,), f_test (M,)). Diverges (large outputs) when lr >= 2N / lambda_max.
    """
    _check(ntk_train, ntk_test_train, f0_train, f0_test, y)
    if (num_steps is None) == (time is None):
        raise ValueError("give exactly one of num_steps (gradient descent) or time (gradient flow)")
    # The same spectral formula as kernel regression's gradient-flow prediction (one implementation);
    # eigen-directions below 1e-12 of the top eigenvalue do not move.
    pred = gradient_flow_prediction(ntk_train, ntk_test_train, y, f0_train, f0_test,
                                    t=None if time is None else lr * time,
                                    lr=lr if num_steps is not None else None, num_steps=num_steps, rcond=1e-12)
    return pred.mean_train, pred.mean


# ------------------------------------------------------ tuning kernel ridge regression (RBF, NTK)


def rbf_kernel(x1, x2=None, bandwidth: float = 1.0):
    """exp(-||x - x'||^2 / (2 bandwidth^2)): (N1, N2) for x1 (N1, d), x2 (N2, d), in the inputs' dtype."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth={bandwidth!r} must be > 0")
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 has shape {x1.shape} and x2 has shape {x2.shape}; expected (N1, d) and (N2, d)")
    sq = jnp.sum(x1**2, 1)[:, None] + jnp.sum(x2**2, 1)[None, :] - 2 * x1 @ x2.T
    return jnp.exp(-jnp.maximum(sq, 0.0) / (2 * bandwidth**2))


def krr_predict(k_train, k_eval_train, y_train, rel_ridges):
    """Kernel ridge predictions (R, N_eval, K) for ridges eps * trace(K)/N, eps in ``rel_ridges`` (R,).

    k_train (N, N), k_eval_train (N_eval, N), y_train (N,) or (N, K); centred by the training
    mean; float64 NumPy, one eigendecomposition for all ridges.
    """
    rel_ridges = np.atleast_1d(np.asarray(rel_ridges, dtype=np.float64))
    if rel_ridges.ndim != 1 or np.any(rel_ridges <= 0):
        raise ValueError(f"rel_ridges must be a 1-D array of values > 0, got {rel_ridges}")
    k = np.asarray(k_train, dtype=np.float64)
    ks = np.asarray(k_eval_train, dtype=np.float64)
    y = np.asarray(y_train, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    n = k.shape[0]
    if k.ndim != 2 or k.shape != (n, n) or ks.ndim != 2 or ks.shape[1] != n or y.shape[0] != n:
        raise ValueError(f"shapes do not match: k_train {k.shape}, k_eval_train {ks.shape}, y_train {y.shape}")
    ybar = y.mean(axis=0)
    s, v = np.linalg.eigh((k + k.T) / 2)
    ridges = rel_ridges * np.trace(k) / n
    shrink = 1.0 / (np.maximum(s, 0.0)[:, None] + ridges[None, :])  # (N, R)
    weights = shrink[:, :, None] * (v.T @ (y - ybar))[:, None, :]  # (N, R, K)
    return ybar + np.moveaxis(np.tensordot(ks @ v, weights, axes=(1, 0)), 1, 0)


@dataclass(frozen=True)
class KRRFit:
    """Outcome of ``tune_krr``.

    best_params: kernel parameters (dict) of the best fit; best_rel_ridge: its eps (ridge =
    eps * trace(K)/N); best_mse: its mean squared error on the evaluation set; mse: (P, R) errors
    over the kernel-parameter grid (rows, in the given order) and the ridges (columns);
    prediction: (N_eval, K) of the best fit.
    """

    best_params: dict
    best_rel_ridge: float
    best_mse: float
    mse: np.ndarray
    prediction: np.ndarray
    rel_ridges: np.ndarray
    params_grid: tuple


def tune_krr(
    kernel_fn: Callable[..., Any], params_grid: Sequence[dict], x_train, y_train, x_eval, y_eval, rel_ridges
) -> KRRFit:
    """Grid search of kernel parameters x relative ridges by mean squared error on (x_eval, y_eval).

    kernel_fn(x1, x2, **params) -> (N1, N2), called once per parameter set on (train + eval, train)
    inputs in float64; params_grid: list of keyword dicts (e.g. [dict(bandwidth=h) for h in hs]).
    Pass a noise-free test function as y_eval for the oracle-tuned ("best-tuned") estimator, or
    held-out noisy data for honest validation.
    """
    params_grid = tuple(dict(p) for p in params_grid)
    if not params_grid:
        raise ValueError("params_grid is empty; give at least one dict of kernel parameters (may be {})")
    x_train, x_eval = np.asarray(x_train, dtype=np.float64), np.asarray(x_eval, dtype=np.float64)
    y_eval = np.asarray(y_eval, dtype=np.float64)
    y_eval = y_eval[:, None] if y_eval.ndim == 1 else y_eval
    n_train = x_train.shape[0]
    rel_ridges = np.atleast_1d(np.asarray(rel_ridges, dtype=np.float64))
    mse = np.empty((len(params_grid), rel_ridges.size))
    best = (np.inf, None)
    for i, params in enumerate(params_grid):
        with jax.enable_x64(True):
            k_all = np.asarray(kernel_fn(jnp.asarray(np.concatenate([x_train, x_eval])), jnp.asarray(x_train), **params))
        preds = krr_predict(k_all[:n_train], k_all[n_train:], y_train, rel_ridges)
        mse[i] = np.mean((preds - y_eval[None]) ** 2, axis=(1, 2))
        j = int(np.nanargmin(mse[i]))
        if mse[i, j] < best[0]:
            best = (mse[i, j], (i, j, preds[j]))
    if best[1] is None:
        raise ValueError("every kernel ridge fit gave a non-finite error; check the kernel and the ridges")
    i, j, pred = best[1]
    return KRRFit(params_grid[i], float(rel_ridges[j]), float(best[0]), mse, pred, rel_ridges, params_grid)
