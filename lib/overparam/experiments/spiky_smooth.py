r"""The ReLU and spiky-smooth activations, and the NTK of a two-layer network with either.

Network (the one these kernels belong to). Inputs x on the unit sphere S^{d-1}, a first-layer
bias folded into the input, hidden width m -> infinity, NTK parameterization:

    x~ = (x, beta) / sqrt(1 + beta^2)               (unit norm),
    f(x) = (1/sqrt(m)) sum_j v_j phi(w_j . x~),      w_j ~ N(0, I_{d+1}), v_j ~ N(0, 1),

so every pre-activation u = w . x~ is N(0, 1) and two inputs give correlation

    rho(t) = (t + beta^2) / (1 + beta^2),   t = x . x'    (``bias_correlation``).

In the book's model description this is ``spiky_net_spec(d, m, a, b)`` (``MLPSpec.two_layer(d + 1, m)``:
widths (d + 1, m, 1), ntk parameterization, sigma_w = 1, no biases) applied to
``spiky_net_inputs(x, beta)`` = sqrt(d + 1) x~ (that spec divides its inputs by sqrt(d + 1)): the
bias of this network is the spec's last input coordinate, not the spec's sigma_b (which would also
give the output layer a bias). For ReLU, ``kernels.analytic.mlp_kernels(spiky_net_spec(d, m),
spiky_net_inputs(x, beta))`` is ``relu_ntk_dot(x . x', beta)``; the tests check this, and the
spiky-smooth NTK against the empirical NTK of a wide ``spiky_net_spec`` network.

The NTK (gradient inner product over w and v, summed over parameters, per output) is the
dot-product kernel

    Theta(t) = E[phi(u) phi(u')] + rho E[phi'(u) phi'(u')],   (u, u') ~ N(0, [[1, rho], [rho, 1]]).

* ReLU: E[relu relu'] = K1(rho) = (sqrt(1-rho^2) + (pi - arccos rho) rho) / (2 pi) and
  E[step step'] = K0(rho) = (pi - arccos rho) / (2 pi) (arc-cosine kernels, Cho & Saul 2009),
  taken from ``kernels.analytic.dual_activation``; ``relu_ntk_dot``.
* Spiky-smooth (Haas et al. 2023): phi(u) = relu(u) + (a/b) sin(b u), a small (a/b) and fast
  (b) fluctuation whose *derivative* a cos(b u) is O(a) (``SpikySmooth``). Its NTK is exactly

      Theta_ss(rho) = Theta_relu(rho) + 2 a rho e^{-b^2/2}
                      + a^2 e^{-b^2} (rho cosh(b^2 rho) + sinh(b^2 rho) / b^2),

  (derived in ``overparam.derivations.spectra``): for rho >= 0 the last term is
  ~ (a^2/2)(rho + 1/b^2) exp(-b^2 (1 - rho)), a Gaussian spike of height a^2/2 and width
  ~sqrt(2(1+beta^2))/b in the distance |x - x'|. ``spiky_smooth_ntk_dot``.

All kernels here are NumPy float64 functions of t (so that Gram matrices of 2000 points with
spikes 1e-5 wide are exact to rounding); the activations are jax.numpy functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from overparam.kernels.analytic import dual_activation
from overparam.kernels.spectra import dot_kernel_matrix, one_minus_dot
from overparam.models import MLPSpec


def check_beta(beta) -> float:
    """Validate the first-layer bias scale beta >= 0."""
    if not beta >= 0:
        raise ValueError(f"beta={beta!r} must be >= 0 (the first-layer bias scale)")
    return float(beta)


def bias_correlation(t, beta: float = 0.0):
    """rho = (t + beta^2) / (1 + beta^2): correlation of the pre-activations of inputs with x . x' = t."""
    check_beta(beta)
    return (np.asarray(t, dtype=np.float64) + beta**2) / (1.0 + beta**2)


@jax.jit
def _relu_duals_jit(r):
    return dual_activation("relu", jnp.ones_like(r), jnp.ones_like(r), r)


def relu_duals(rho):
    """(K1(rho), K0(rho)) = (E[relu(u) relu(u')], E[step(u) step(u')]) for unit-variance u, u' of correlation rho.

    float64 NumPy arrays of rho's shape, from ``kernels.analytic.dual_activation`` (run in
    float64: the spectra and the ridgeless solves need it).
    """
    rho = np.asarray(rho, dtype=np.float64)
    with jax.enable_x64(True):
        k1, k0 = _relu_duals_jit(jnp.asarray(rho, dtype=jnp.float64))
        return np.asarray(k1), np.asarray(k0)


def relu_ntk_dot(t, beta: float = 0.0):
    """Two-layer ReLU NTK Theta(t) = K1(rho) + rho K0(rho), rho = ``bias_correlation(t, beta)``: float64, t's shape."""
    rho = bias_correlation(t, beta)
    k1, k0 = relu_duals(rho)
    return k1 + rho * k0


def relu_taylor_coefficients(num_terms: int):
    """Taylor coefficients in rho of (K1, K0): two (num_terms,) float64 arrays, all >= 0.

    K1 = 1/(2 pi) + rho/4 + sum_{m>=0} a_m rho^{2m+2} / ((2m+2) 2 pi),
    K0 = 1/4 + arcsin(rho)/(2 pi) = 1/4 + sum_{m>=0} a_m rho^{2m+1} / (2 pi),
    a_m = (2m)! / (4^m (m!)^2 (2m+1)); from ``kernels.analytic.dual_series_coefficients``.
    At rho = 1 the terms of K0 decay only like m^{-3/2} (its singularity (1 - rho)^{1/2}), those of
    K1 like m^{-5/2} (singularity (1 - rho)^{3/2}); ``derivations.spectra.arccos_taylor_decay``.
    """
    from overparam.kernels.analytic import dual_series_coefficients

    if int(num_terms) != num_terms or num_terms < 2:
        raise ValueError(f"num_terms={num_terms!r} must be an integer >= 2")
    k1 = dual_series_coefficients("relu", int(num_terms))
    k0 = dual_series_coefficients("erf", int(num_terms)) / (2.0 * np.pi)  # arcsin(rho) / (2 pi)
    k0[0] = 0.25
    return k1, k0


# ------------------------------------------------------------------------- spiky-smooth
def check_spike(amplitude, frequency):
    """Validate the spike parameters a >= 0 (derivative amplitude) and b > 0 (frequency)."""
    if not amplitude >= 0:
        raise ValueError(f"amplitude={amplitude!r} must be >= 0")
    if not frequency > 0:
        raise ValueError(f"frequency={frequency!r} must be > 0")


def spiky_smooth_activation(u, amplitude: float, frequency: float):
    """phi(u) = relu(u) + (a/b) sin(b u): ReLU plus a fluctuation of height a/b and slope up to a (jnp, u's shape)."""
    check_spike(amplitude, frequency)
    return jax.nn.relu(u) + (amplitude / frequency) * jnp.sin(frequency * u)


@dataclass(frozen=True)
class SpikySmooth:
    """The activation u -> ``spiky_smooth_activation(u, amplitude, frequency)`` as a value.

    Frozen and hashed by its two numbers, so ``MLPSpec``s built with equal ``SpikySmooth``s are
    equal and share one jit compilation (a lambda would be hashed by identity).
    """

    amplitude: float
    frequency: float

    def __post_init__(self):
        check_spike(self.amplitude, self.frequency)

    def __call__(self, u):
        return spiky_smooth_activation(u, self.amplitude, self.frequency)


def spiky_net_spec(d: int, width: int, amplitude: float = 0.0, frequency: float = 1.0) -> MLPSpec:
    """The two-layer network of the module docstring: ``MLPSpec.two_layer(d + 1, width, phi)``.

    phi = ``SpikySmooth(amplitude, frequency)``, or the named "relu" for amplitude = 0 (the same
    function, with a closed-form kernel in ``kernels.analytic``). Its inputs are
    ``spiky_net_inputs(x, beta)`` (N, d + 1); ``spec(params, inputs)`` is (N, 1).
    """
    check_spike(amplitude, frequency)
    activation = "relu" if amplitude == 0 else SpikySmooth(float(amplitude), float(frequency))
    return MLPSpec.two_layer(d + 1, width, activation)


def spiky_net_inputs(x, beta: float = 0.0) -> np.ndarray:
    """sqrt(d + 1) (x, beta) / sqrt(1 + beta^2): (N, d + 1) inputs of ``spiky_net_spec`` for unit-norm x (N, d).

    The bias folded in as a last coordinate; the rows have norm sqrt(d + 1), as the spec's
    ntk parameterization expects (it divides by sqrt(d + 1)). float64 NumPy.
    """
    check_beta(beta)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; expected (N, d) unit-norm rows")
    folded = np.concatenate([x, np.full((len(x), 1), float(beta))], axis=1)
    return folded * np.sqrt((x.shape[1] + 1) / (1.0 + beta**2))


def spike_ntk_dot(rho, amplitude: float, frequency: float, one_minus_rho=None):
    """Theta_ss(rho) - Theta_relu(rho): the part of the NTK added by the fluctuation (float64).

    2 a rho e^{-b^2/2} + a^2 e^{-b^2} (rho cosh(b^2 rho) + sinh(b^2 rho)/b^2), written with
    exp(-b^2 (1 -+ rho)) so that it neither overflows nor loses the spike for large b.
    The first term (the ReLU-fluctuation cross terms) is below 1e-300 for b > 37.
    one_minus_rho: 1 - rho computed accurately (e.g. from ``spectra.one_minus_dot``); pass it
    when b^2 * 1e-16 is not negligible (b > ~1e6), where 1 - rho from rho has lost the spike.
    """
    check_spike(amplitude, frequency)
    rho = np.asarray(rho, dtype=np.float64)
    gap = 1.0 - rho if one_minus_rho is None else np.asarray(one_minus_rho, dtype=np.float64)
    a, b2 = float(amplitude), float(frequency) ** 2
    near = np.exp(-b2 * gap)  # e^{-b^2} e^{+b^2 rho}
    far = np.exp(-b2 * (1.0 + rho))  # e^{-b^2} e^{-b^2 rho}
    spikes = 0.5 * a**2 * (rho * (near + far) + (near - far) / b2)
    return spikes + 2.0 * a * rho * np.exp(-0.5 * b2)


def spiky_smooth_ntk_dot(t, amplitude: float, frequency: float, beta: float = 0.0):
    """Two-layer NTK of phi = relu + (a/b) sin(b .) as a function of t = x . x' (float64)."""
    rho = bias_correlation(t, beta)
    return relu_ntk_dot(t, beta) + spike_ntk_dot(rho, amplitude, frequency)


def spike_height(amplitude: float, frequency: float) -> float:
    """Theta_ss(1) - Theta_relu(1) = a^2 (1 + 1/b^2)(1 - e^{-2b^2})/2 + 2 a e^{-b^2/2}: the effective ridge."""
    return float(spike_ntk_dot(1.0, amplitude, frequency))


# ------------------------------------------------- benign overfitting experiment (the circle)
def circle_target(angle):
    """f*(angle) = sin(angle) + cos(3 angle)/2 on the unit circle (smooth, mean 0, variance 5/8)."""
    return np.sin(angle) + 0.5 * np.cos(3.0 * angle)


def sample_circle_task(key, n: int, n_test: int, noise: float):
    """(x (n, 2), y (n,), x_test (n_test, 2), f_test (n_test,)): uniform angles, y = f* + noise * N(0, 1).

    f_test is the clean target (the excess risk is E (f_hat - f*)^2; the test error on noisy
    labels is noise^2 + excess). float64 NumPy, drawn from the jax ``key``.
    """
    k1, k2, k3 = jax.random.split(key, 3)
    with jax.enable_x64(True):
        ang = np.asarray(jax.random.uniform(k1, (n,), jnp.float64, 0.0, 2 * np.pi))
        ang_test = np.asarray(jax.random.uniform(k2, (n_test,), jnp.float64, 0.0, 2 * np.pi))
        eps = np.asarray(jax.random.normal(k3, (n,), jnp.float64))
    circle = lambda th: np.stack([np.cos(th), np.sin(th)], axis=1)  # noqa: E731
    return circle(ang), circle_target(ang) + noise * eps, circle(ang_test), circle_target(ang_test)


def _kernel_regression(k_train, k_eval, y, ridge):
    from overparam.kernels.regression import kernel_regression

    return kernel_regression(k_train, k_eval, y, ridge)


_kernel_regression_jit = jax.jit(_kernel_regression)  # one compile per shape instead of one per op


def kernel_fit(k_train, k_test, y, f_test, ridge: float = 0.0):
    """Kernel (ridge) regression from Gram blocks: (excess risk, max train residual, f_hat(x_test)).

    k_train (n, n), k_test (M, n), y (n,), f_test (M,) clean targets. ridge = 0 is the
    minimum-norm interpolant (ridgeless; the infinite-width network trained to convergence
    from f = 0). Uses ``kernels.regression.kernel_regression`` in float64.
    """
    with jax.enable_x64(True):
        both = np.asarray(_kernel_regression_jit(k_train, np.concatenate([k_train, k_test]), y, float(ridge)))
    f_train, f_hat = both[: len(y)], both[len(y):]
    return float(np.mean((f_hat - f_test) ** 2)), float(np.max(np.abs(f_train - y))), f_hat


def spiky_part(x1, x2, amplitude: float, frequency: float, beta: float = 0.0):
    """Gram block (N1, N2) of ``spike_ntk_dot`` for unit-norm rows, with 1 - rho from distances (float64)."""
    gap = one_minus_dot(x1, x2) / (1.0 + beta**2)
    return spike_ntk_dot(1.0 - gap, amplitude, frequency, one_minus_rho=gap)


def spiky_smooth_gram(x1, x2, amplitude: float, frequency: float, beta: float = 0.0):
    """Gram block (N1, N2) of ``spiky_smooth_ntk_dot``, accurate for any frequency (see ``spiky_part``)."""
    return dot_kernel_matrix(lambda t: relu_ntk_dot(t, beta), x1, x2) + spiky_part(x1, x2, amplitude, frequency, beta)


def interpolation_curves(key, ns, num_seeds: int, noise: float, n_test: int, amplitude: float,
                         frequency_of_n, beta: float = 1.0):
    """Excess risks of ridgeless regression with the ReLU and the spiky-smooth NTK, and of KRR.

    For each n in ``ns`` and seed: draw ``sample_circle_task``; fit (1) the ReLU NTK
    interpolant, (2) the spiky-smooth NTK interpolant with frequency b = frequency_of_n(n),
    (3) kernel ridge regression with the ReLU NTK and ridge = ``spike_height`` (what the
    spiky-smooth interpolant should equal away from its spikes). Returns a dict of
    (len(ns), num_seeds) arrays: "relu", "spiky", "krr" (excess risks), "spiky_residual"
    (max |f(x_i) - y_i|), "spiky_vs_krr" (RMS difference of the two predictions on the test
    points), and "frequency" (len(ns),).
    """
    keys = jax.random.split(key, len(ns) * num_seeds).reshape(len(ns), num_seeds)
    names = ("relu", "spiky", "krr", "spiky_residual", "spiky_vs_krr")
    out = {name: np.zeros((len(ns), num_seeds)) for name in names}
    out["frequency"] = np.array([float(frequency_of_n(n)) for n in ns])
    relu = lambda tt: relu_ntk_dot(tt, beta)  # noqa: E731
    for i, n in enumerate(ns):
        b = out["frequency"][i]
        for s in range(num_seeds):
            x, y, xt, ft = sample_circle_task(keys[i, s], int(n), n_test, noise)
            k_train, k_test = dot_kernel_matrix(relu, x), dot_kernel_matrix(relu, xt, x)
            out["relu"][i, s] = kernel_fit(k_train, k_test, y, ft)[0]
            out["krr"][i, s], _, f_krr = kernel_fit(k_train, k_test, y, ft, ridge=spike_height(amplitude, b))
            k_train = k_train + spiky_part(x, x, amplitude, b, beta)
            k_test = k_test + spiky_part(xt, x, amplitude, b, beta)
            out["spiky"][i, s], out["spiky_residual"][i, s], f_ss = kernel_fit(k_train, k_test, y, ft)
            out["spiky_vs_krr"][i, s] = float(np.sqrt(np.mean((f_ss - f_krr) ** 2)))
    return out
