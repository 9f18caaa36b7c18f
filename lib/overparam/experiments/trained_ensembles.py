"""Finite networks against their infinite-width kernels: ensembles of MLPs trained by full-batch GD.

The predictions to compare with are those of ``overparam.kernels.regression`` (kernel regression,
the NTK gradient-flow prediction and its GP over initializations) with the kernels of
``overparam.kernels.analytic``; a run's gradient-flow time is t = lr * num_steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from overparam.kernels.regression import kernel_regression
from overparam.models import MLPSpec
from overparam.training import mse_loss, run_loop


@partial(jax.tree_util.register_dataclass,
         data_fields=["f0_train", "f0_test", "f_train", "f_test", "diverged", "final_loss"], meta_fields=[])
@dataclass(frozen=True)
class EnsembleRun:
    """Outputs of S finite networks before and after training, for each learning rate (R of them).

    f0_train (S, N, K), f0_test (S, M, K): at initialization; f_train (R, S, N, K),
    f_test (R, S, M, K): after ``num_steps`` of GD (minus f0 for centred runs); diverged (R, S) bool (outputs of a
    diverged run are those at its last finite step; see ``overparam.training``);
    final_loss (R, S): ``mse_loss`` on the training set, without the weight decay (inf if diverged).
    """

    f0_train: jax.Array
    f0_test: jax.Array
    f_train: jax.Array
    f_test: jax.Array
    diverged: jax.Array
    final_loss: jax.Array


def train_mlp_ensemble(key, x_train, y_train, x_test, depth: int, width: int, lrs, num_steps: int,
                       activation: str = "relu", sigma_w=1.0, sigma_b=0.0, num_seeds: int = 4,
                       weight_decay=0.0, centered=False) -> EnsembleRun:
    """Train ``num_seeds`` MLPs (``MLPSpec``, ntk parameterization, hidden width ``width``) by full-batch GD.

    Loss: ``mse_loss`` (1/(2N) sum over examples and outputs) plus (weight_decay / 2) ||theta||^2
    on all parameters (decay towards 0, not towards the initialization). lrs: (R,) learning
    rates, each run for every seed; weight_decay: a scalar or (R,), paired with lrs.
    centered: a bool or (R,) bools; a centred run trains g(theta, x) = f(theta, x) - f(theta_0, x),
    which starts from g = 0 everywhere, and reports g (Lee et al. 2020): in the kernel regime it
    follows the NTK mean prediction without the random initial function. One compilation per
    (shapes, width, depth, activation, sigmas, num_steps); the per-run settings are traced.
    The gradient-flow time of
    a run is t = lr * num_steps (``gradient_flow_prediction``). Seed s is initialized from
    ``jax.random.split(key, num_seeds)[s]`` (as ``MLPSpec.init_ensemble``).
    """
    depth = _check_depth_positive(depth)
    x_train, y_train, x_test = (jnp.asarray(a) for a in (x_train, y_train, x_test))
    if y_train.ndim != 2 or y_train.shape[0] != x_train.shape[0]:
        raise ValueError(f"y_train has shape {y_train.shape}; expected ({x_train.shape[0]}, K)")
    widths = (x_train.shape[1],) + (int(width),) * (depth - 1) + (y_train.shape[1],)
    lrs = jnp.atleast_1d(jnp.asarray(lrs, x_train.dtype))
    if lrs.ndim != 1:
        raise ValueError(f"lrs has shape {lrs.shape}; expected a scalar or (R,)")
    wds = jnp.broadcast_to(jnp.asarray(weight_decay, x_train.dtype), lrs.shape)
    centers = jnp.broadcast_to(jnp.asarray(centered, x_train.dtype), lrs.shape)
    return _train_ensemble(jax.random.split(key, num_seeds), x_train, y_train, x_test, lrs, wds, centers, widths=widths,
                           activation=activation, sigma_w=float(sigma_w), sigma_b=float(sigma_b),
                           num_steps=int(num_steps))


@partial(jax.jit, static_argnames=("widths", "activation", "sigma_w", "sigma_b", "num_steps"))
def _train_ensemble(keys, x_train, y_train, x_test, lrs, wds, centers, *, widths, activation, sigma_w, sigma_b,
                    num_steps):
    apply_fn = MLPSpec(widths, activation, "ntk", sigma_w, sigma_b)
    params0 = apply_fn.init_ensemble(keys)
    batched = jax.vmap(apply_fn, (0, None))

    f0_train, f0_test = batched(params0, x_train), batched(params0, x_test)

    def run(setting):
        lr, wd, center = setting

        def train_one(p, f0):
            def loss_fn(q):
                penalty = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(q))
                return mse_loss(apply_fn(q, x_train) - center * f0, y_train) + 0.5 * wd * penalty

            return run_loop(loss_fn, p, optax.sgd(lr), num_steps, record_every=num_steps)

        result = jax.vmap(train_one)(params0, f0_train)
        f_train = batched(result.params, x_train) - center * f0_train
        f_test = batched(result.params, x_test) - center * f0_test
        final = jnp.where(result.diverged, jnp.inf, 0.5 * jnp.sum((f_train - y_train) ** 2, axis=(1, 2)) / y_train.shape[0])
        return f_train, f_test, result.diverged, final

    f_train, f_test, diverged, final_loss = jax.lax.map(run, (lrs, wds, centers))
    return EnsembleRun(f0_train, f0_test, f_train, f_test, diverged, final_loss)


# ---------------------------------------------------------------- the ensemble against its NTK-GP
def _as_sm_k(f_test, mean, cov):
    """f_test (S, M[, K]), mean (M[, K]), cov (M, M) -> float64 (S, M, K), (M, K), (M, M)."""
    f, mu, c = (np.asarray(a, dtype=np.float64) for a in (f_test, mean, cov))
    if mu.ndim == 1:
        mu = mu[:, None]
    if f.ndim == 2:
        f = f[..., None]
    m = mu.shape[0]
    if f.ndim != 3 or f.shape[1:] != mu.shape or c.shape != (m, m):
        raise ValueError(f"f_test {f.shape}, mean {mu.shape}, cov {c.shape}: expected (S, M[, K]), (M[, K]), (M, M)")
    return f, mu, c


def standardized_residuals(f_test, mean, cov):
    """z = (f - mean) / sqrt(diag cov), per network, test point and output: (S, M, K).

    f_test (S, M) or (S, M, K): S trained networks' test outputs; mean (M,) or (M, K) and cov (M, M):
    the predicted Gaussian over initializations (``gradient_flow_prediction`` with the NNGP blocks,
    the same covariance for every output). If the networks are draws from that Gaussian, every z is
    N(0, 1): the mean of z^2 is 1 (Lee et al. 2019: the trained ensemble *is* the NTK-GP).
    """
    f, mu, c = _as_sm_k(f_test, mean, cov)
    sd = np.sqrt(np.clip(np.diag(c), 1e-30, None))
    return (f - mu) / sd[None, :, None]


def mean_sq_z_null_sd(cov, num_nets: int, num_outputs: int = 1) -> float:
    """Standard deviation of the mean of z^2 over ``num_nets`` x M x K draws from the predicted Gaussian.

    With rho the correlation matrix of cov (M, M), Isserlis gives Cov(z_i^2, z_j^2) = 2 rho_ij^2, so
    Var(mean z^2) = 2 sum_ij rho_ij^2 / (num_nets M^2 K) (outputs and networks independent).
    """
    c = np.asarray(cov, dtype=np.float64)
    sd = np.sqrt(np.clip(np.diag(c), 1e-30, None))
    rho = c / np.outer(sd, sd)
    return float(np.sqrt(2.0 * np.sum(rho**2) / (num_nets * c.shape[0] ** 2 * num_outputs)))


def ensemble_mean_sq_gaps(f_test, mean, sizes):
    """Mean squared gap between the average of k networks and the predicted mean, for each k in sizes: (len(sizes),).

    The S networks are split into S // k disjoint groups of k (in order); the gap is averaged over
    groups, test points and outputs. For draws from the predicted Gaussian its expectation is
    tr(cov) / (M k): averaging k members divides the variance of the initial function by k
    (Lee et al. 2020's ensembling), down to the finite-width bias of the mean.
    """
    f, mu, _ = _as_sm_k(f_test, mean, np.eye(np.asarray(mean).shape[0]))
    out = []
    for k in sizes:
        k = int(k)
        groups = f.shape[0] // k
        if k < 1 or groups < 1:
            raise ValueError(f"ensemble size {k} must be between 1 and the number of networks {f.shape[0]}")
        avg = f[: groups * k].reshape(groups, k, *f.shape[1:]).mean(1)
        out.append(float(np.mean((avg - mu[None]) ** 2)))
    return np.array(out)


def ensemble_mean_gap_ratio(f_test, mean, cov) -> float:
    """Squared gap of the mean of all S networks to ``mean``, in units of its predicted size tr(cov) K / S.

    f_test (S, M) or (S, M, K), mean (M,) or (M, K), cov (M, M). If the networks are draws from
    N(mean, cov) (per output), the average of S of them is N(mean, cov / S), so the ratio has
    expectation 1 and standard deviation ``ensemble_mean_gap_ratio_null_sd``. Against another
    mean mu' its expectation is 1 + S ||mean - mu'||^2 / (K tr cov): unlike the slope in k, the
    whole ensemble magnifies a difference of means S times.
    """
    f, mu, c = _as_sm_k(f_test, mean, cov)
    s, _, k = f.shape
    return float(np.sum((f.mean(0) - mu) ** 2) / (k * np.trace(c) / s))


def ensemble_mean_gap_ratio_null_sd(cov, num_outputs: int = 1) -> float:
    """Standard deviation of ``ensemble_mean_gap_ratio`` for draws from the predicted Gaussian.

    The gap is a sum of independent lambda_i chi^2_1 terms over the eigenvalues lambda_i of cov
    (one set per output), so its variance is 2 K sum lambda_i^2 and the ratio's is
    2 sum lambda^2 / (K (sum lambda)^2): the number of networks cancels.
    """
    evals = np.clip(np.linalg.eigvalsh(np.asarray(cov, dtype=np.float64)), 0.0, None)
    return float(np.sqrt(2.0 * np.sum(evals**2) / num_outputs) / np.sum(evals))


def ridge_fit_distance(f_train, ntk_train_train, y_train, times, ridge_factor=1.0):
    """Distance of networks stopped at gradient-flow times ``times`` from kernel ridge regression with ridge c / t.

    f_train (R, S, N) or (R, S, N, K): training-set outputs of S networks after flow time times[r]
    (t = lr * steps, ``train_mlp_ensemble``); ntk_train_train (N, N); y_train (N,) or (N, K);
    ridge_factor c. The ridge fit is ``kernel_regression`` with ridge c N / t on Theta, i.e. ridge
    c / t on Theta / N, the operator of the flow under ``mse_loss``. Returns (R, S) float64:
    ||f - f_ridge|| / ||y|| on the training inputs. For the linearized flow itself and c = 1 this
    is at most ``derivations.kernels.flow_ridge_filter_gap(1)`` = 0.2036 at every t.
    """
    theta = np.asarray(ntk_train_train, dtype=np.float64)
    y = np.asarray(y_train, dtype=np.float64)
    y = y[:, None] if y.ndim == 1 else y
    f = np.asarray(f_train, dtype=np.float64)
    f = f[..., None] if f.ndim == 3 else f
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    n = theta.shape[0]
    if f.ndim != 4 or f.shape[0] != times.shape[0] or f.shape[2:] != y.shape or theta.shape != (n, n):
        raise ValueError(f"f_train {f.shape}, times {times.shape}, y_train {y.shape}, ntk {theta.shape}: "
                         "expected (R, S, N[, K]), (R,), (N[, K]), (N, N)")
    if np.any(times <= 0) or ridge_factor <= 0:
        raise ValueError(f"times {times} and ridge_factor {ridge_factor} must be positive")
    out = []
    for r, t in enumerate(times):
        fit = np.asarray(kernel_regression(theta, theta, y, ridge=ridge_factor * n / t))
        out.append(np.linalg.norm(f[r] - fit[None], axis=(1, 2)) / np.linalg.norm(y))
    return np.array(out)


def gp_draws(key, mean, cov, num_nets: int, num_draws: int = 1):
    """``num_draws`` x ``num_nets`` samples of the predicted Gaussian's test outputs: (num_draws, num_nets, M, K).

    The null model of the calibration and ensembling statistics (what they would be if the trained
    ensemble were exactly the NTK-GP); cov gets a 1e-10 trace/M jitter for the Cholesky factor.
    """
    mu = np.asarray(mean, dtype=np.float64)
    mu = mu[:, None] if mu.ndim == 1 else mu
    c = np.asarray(cov, dtype=np.float64)
    m = c.shape[0]
    chol = np.linalg.cholesky(c + 1e-10 * np.trace(c) / m * np.eye(m))
    eps = np.asarray(jax.random.normal(key, (num_draws, num_nets, m, mu.shape[1])), dtype=np.float64)
    return mu + np.einsum("ij,dsjk->dsik", chol, eps)


def _check_depth_positive(depth) -> int:
    if int(depth) != depth or depth < 2:
        raise ValueError(f"depth={depth!r} must be an integer >= 2 (at least one hidden layer)")
    return int(depth)
