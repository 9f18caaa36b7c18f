r"""Predictions from a kernel: kernel (ridge) regression, the NNGP posterior, and gradient flow.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp


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


# ------------------------------------------------ the finite networks these predictions describe
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
    """Train ``num_seeds`` ``MLP``s (ntk parameterization, hidden width ``width``) by full-batch GD.

    Loss: ``mse_loss`` (1/(2N) sum over examples and outputs) plus (weight_decay / 2) ||theta||^2
    on all parameters (decay towards 0, not towards the initialization). lrs: (R,) learning
    rates, each run for every seed; weight_decay: a scalar or (R,), paired with lrs.
    centered: a bool or (R,) bools; a centred run trains g(theta, x) = f(theta, x) - f(theta_0, x),
    which starts from g = 0 everywhere, and reports g (Lee et al. 2020): in the kernel regime it
    follows the NTK mean prediction without the random initial function. One compilation per
    (shapes, width, depth, activation, sigmas, num_steps); the per-run settings are traced.
    The gradient-flow time of
    a run is t = lr * num_steps (``gradient_flow_prediction``). Seed s is initialized from
    ``jax.random.split(key, num_seeds)[s]`` (as ``overparam.models.init_mlp_ensemble``).
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
    from overparam.models import init_mlp_ensemble
    from overparam.training import mse_loss, train_gd

    apply_fn, params0 = init_mlp_ensemble(keys, widths, activation, "ntk", sigma_w, sigma_b)
    batched = jax.vmap(apply_fn, (0, None))

    f0_train, f0_test = batched(params0, x_train), batched(params0, x_test)

    def run(setting):
        lr, wd, center = setting

        def train_one(p, f0):
            def loss_fn(q):
                penalty = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(q))
                return mse_loss(apply_fn(q, x_train) - center * f0, y_train) + 0.5 * wd * penalty

            return train_gd(loss_fn, p, lr, num_steps, num_steps)

        result = jax.vmap(train_one)(params0, f0_train)
        f_train = batched(result.params, x_train) - center * f0_train
        f_test = batched(result.params, x_test) - center * f0_test
        final = jnp.where(result.diverged, jnp.inf, 0.5 * jnp.sum((f_train - y_train) ** 2, axis=(1, 2)) / y_train.shape[0])
        return f_train, f_test, result.diverged, final

    f_train, f_test, diverged, final_loss = jax.lax.map(run, (lrs, wds, centers))
    return EnsembleRun(f0_train, f0_test, f_train, f_test, diverged, final_loss)


def _check_depth_positive(depth) -> int:
    if int(depth) != depth or depth < 2:
        raise ValueError(f"depth={depth!r} must be an integer >= 2 (at least one hidden layer)")
    return int(depth)
