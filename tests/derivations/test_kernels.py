"""Every SymPy result of derivations.kernels checked against the numerical code or Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from scipy.special import erf

from overparam.derivations import kernels as dk
from overparam.kernels.analytic import deq_nngp, dual_activation, dual_series_coefficients, fc_kernels
from overparam.derivations.symbolic import to_numeric


# float64 everywhere: symbolic vs numeric agreement to ~1e-12
pytestmark = pytest.mark.usefixtures("x64")


COVS = [(1.3, 0.8, 0.6), (0.5, 2.0, -0.9), (1.0, 1.0, 0.999), (0.7, 0.2, 0.0)]


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_expectations_match_the_library(activation):
    e, edot = dk.expectations(activation)
    fe = to_numeric(e, [dk.q1, dk.q2, dk.k12], backend="numpy")
    fd = to_numeric(edot, [dk.q1, dk.q2, dk.k12], backend="numpy")
    for a, b, c in COVS:
        kappa, kdot = dual_activation(activation, jnp.float64(a), jnp.float64(b), jnp.float64(c))
        assert np.isclose(fe(a, b, c), float(kappa), rtol=1e-10, atol=1e-14)
        assert np.isclose(fd(a, b, c), float(kdot), rtol=1e-10)


def test_relu_expectations_against_monte_carlo():
    kappa1, kappa0 = dk.relu_expectations()
    rng = np.random.default_rng(1)
    a, b, c = 1.3, 0.8, -0.4
    z = rng.multivariate_normal([0, 0], [[a, c], [c, b]], size=400_000)
    th = np.arccos(c / np.sqrt(a * b))
    subs = {dk.q1: a, dk.q2: b, dk.theta: th}
    prod = np.maximum(z[:, 0], 0) * np.maximum(z[:, 1], 0)
    step = (z[:, 0] > 0) & (z[:, 1] > 0)
    assert abs(float(kappa1.subs(subs)) - prod.mean()) < 5 * prod.std() / np.sqrt(len(z))
    assert abs(float(kappa0.subs(subs)) - step.mean()) < 5 * step.std() / np.sqrt(len(z))


def test_erf_expectations_against_monte_carlo_and_price():
    e, edot = dk.erf_expectation(), dk.erf_derivative_expectation()
    assert sp.simplify(sp.diff(e, dk.k12) - edot) == 0  # Price: d/dk E[phi phi] = E[phi' phi']
    rng = np.random.default_rng(2)
    a, b, c = 0.9, 1.7, 0.7
    z = rng.multivariate_normal([0, 0], [[a, c], [c, b]], size=400_000)
    subs = {dk.q1: a, dk.q2: b, dk.k12: c}
    for expr, samples in ((e, erf(z[:, 0]) * erf(z[:, 1])),
                          (edot, 4 / np.pi * np.exp(-z[:, 0] ** 2 - z[:, 1] ** 2))):
        assert abs(float(expr.subs(subs)) - samples.mean()) < 5 * samples.std() / np.sqrt(len(z))


def test_gaussian_lemma_numerically():
    a, b, lemma = dk.gaussian_integral_lemma()
    zz = np.linspace(-30, 30, 200_001)
    for av, bv in ((0.7, 0.3), (2.0, -1.5)):
        numeric = np.trapezoid(np.exp(-av * zz**2 + bv * zz), zz)
        assert np.isclose(float(lemma.subs({a: av, b: bv})), numeric, rtol=1e-10)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_layer_recursion_matches_fc_kernels(activation):
    sig_next, theta_next, th = dk.fc_layer_recursion(activation)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)))
    sw, sb = 1.3, 0.4
    s1 = sw**2 * np.asarray(x @ x.T) / 3 + sb**2  # Sigma^1 = Theta^1
    assert np.allclose(s1, np.asarray(fc_kernels(x, None, 1, activation, sw, sb)[0]))
    subs = {dk.q1: s1[0, 0], dk.q2: s1[1, 1], dk.k12: s1[0, 1], th: s1[0, 1], dk.sigma_w: sw, dk.sigma_b: sb}
    nngp, ntk = fc_kernels(x, None, 2, activation, sw, sb)
    assert np.isclose(float(sig_next.subs(subs)), float(nngp[0, 1]), rtol=1e-10)
    assert np.isclose(float(theta_next.subs(subs)), float(ntk[0, 1]), rtol=1e-10)


def test_relu_series_coefficients():
    poly, coeffs = dk.relu_normalized_series(10)
    series = [poly.coeff(dk.rho, k) for k in range(11)]
    assert all(sp.simplify(s - c) == 0 for s, c in zip(series, coeffs))
    assert all(c >= 0 for c in coeffs)
    np.testing.assert_allclose([float(c) for c in coeffs], dual_series_coefficients("relu", 11), rtol=1e-12)
    arcsin_series = sp.series(sp.asin(dk.rho), dk.rho, 0, 12).removeO()
    for m in range(5):
        assert arcsin_series.coeff(dk.rho, 2 * m + 1) == dk.arcsin_coefficient(m)


def test_deq_contraction_constants():
    relu = dk.deq_fixed_point("relu")
    assert relu["condition"] == (dk.sigma_w**2 < 2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)))
    sw, su, sb = 1.2, 0.7, 0.3
    k, _ = deq_nngp(x, None, sw, su, sb, tol=1e-13, max_iter=2000)
    c = su**2 * np.sum(np.asarray(x) ** 2, 1) / 2 + sb**2
    q_star = to_numeric(relu["diag_fixed_point"], [relu["c"], dk.sigma_w], backend="numpy")
    np.testing.assert_allclose(np.diag(np.asarray(k)), q_star(c, sw), rtol=1e-10)
    erf_ = dk.deq_fixed_point("erf")
    assert sp.simplify(erf_["condition"].rhs - sp.pi / 4) == 0
    # the diagonal slope is largest at q = 0, and E[phi' phi'] <= 4/pi over all covariances
    slope = to_numeric(erf_["diag_slope"], [erf_["q"], dk.sigma_w], backend="numpy")
    qs = np.linspace(0, 50, 2001)
    assert np.all(np.diff(slope(qs, 1.0)) < 0) and np.isclose(slope(0.0, 1.0), 4 / np.pi)
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0, 5, 1000), rng.uniform(0, 5, 1000)
    cc = rng.uniform(-1, 1, 1000) * np.sqrt(a * b)
    assert np.all(np.asarray(dual_activation("erf", a, b, cc)[1]) <= 4 / np.pi + 1e-12)


def test_gradient_flow_mode_limit():
    discrete, limit, flow = dk.gradient_flow_mode()
    assert sp.simplify(limit - flow) == 0
    value = discrete.subs({dk.lr: 0.01, dk.lam: 3.0, dk.n_train: 5, dk.steps: 200})
    assert np.isclose(float(value), float(flow.subs({dk.lam: 3.0, dk.n_train: 5, dk.t: 2.0})), rtol=0.02)


def test_relu_forward_iteration_rate():
    assert sp.simplify(dk.relu_forward_iteration_rate() - dk.sigma_w / sp.sqrt(2)) == 0
    # the circular law: spectral radius of W D / sqrt(n), D a random half-identity, tends to 1/sqrt(2)
    rng = np.random.default_rng(0)
    n = 1000
    w = rng.normal(size=(n, n)) / np.sqrt(n)
    d = (rng.random(n) < 0.5).astype(float)
    radius = np.abs(np.linalg.eigvals(w * d[None, :])).max()
    assert abs(radius - 1 / np.sqrt(2)) < 0.05


@pytest.mark.parametrize("c", [1, 10])
def test_flow_ridge_filter_gap_is_the_largest_gap(c):
    r = dk.flow_ridge_filter_gap(c)
    assert r["stationarity"] == 0 and r["closed_form_error"] == 0
    gap = sp.lambdify(r["x"], r["gap"], "numpy")
    x = np.linspace(0.0, 60.0, 600001)
    assert abs(gap(x).max() - float(r["value"])) < 1e-9
    assert abs(x[np.argmax(gap(x))] - float(r["x_star"])) < 1e-3
    assert np.isclose(float(sp.N(dk.flow_ridge_filter_gap(1)["value"])), 0.2036321888, atol=1e-9)


def test_flow_ridge_filter_gap_bounds_the_regression_code():
    """The flow at time t and ridge N c / t on Theta, from overparam.kernels.regression, differ by at most
    value * ||y|| on the training inputs, with equality for y an eigenvector whose s t is x*."""
    from overparam.kernels.regression import gradient_flow_prediction, kernel_regression

    rng = np.random.default_rng(0)
    n = 12
    a = rng.normal(size=(n, 3 * n))
    theta = a @ a.T / (3 * n)
    evals, evecs = np.linalg.eigh(theta)
    for c in (1, 10):
        bound = float(dk.flow_ridge_filter_gap(c)["value"])
        x_star = float(dk.flow_ridge_filter_gap(c)["x_star"])
        for t in np.geomspace(0.1, 1e3, 9):
            y = rng.normal(size=(n, 1))
            flow = np.asarray(gradient_flow_prediction(theta, theta, y, t=t).mean)
            ridge = np.asarray(kernel_regression(theta, theta, y, ridge=c * n / t))
            assert np.linalg.norm(flow - ridge) <= bound * np.linalg.norm(y) + 1e-12
        y = evecs[:, [n // 2]]
        t = x_star * n / evals[n // 2]  # s = lambda / N, s t = x*
        flow = np.asarray(gradient_flow_prediction(theta, theta, y, t=t).mean)
        ridge = np.asarray(kernel_regression(theta, theta, y, ridge=c * n / t))
        assert np.isclose(np.linalg.norm(flow - ridge), bound, rtol=1e-9)
