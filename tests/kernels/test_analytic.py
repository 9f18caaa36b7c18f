"""Closed-form NNGP / NTK / DEQ kernels: Gaussian expectations, recursions, finite-width agreement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.kernels.analytic import (
    deq_contraction, deq_min_eig_lower_bound, deq_nngp, deq_nngp_layers, dual_activation,
    dual_series_coefficients, fc_kernels, fc_kernels_monte_carlo, nngp_fc, ntk_fc,
)
from scipy.special import erf


def _inputs(n=6, d=5, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, d))


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_dual_activation_matches_monte_carlo(activation):
    rng = np.random.default_rng(0)
    cov = np.array([[1.3, 0.6], [0.6, 0.8]])
    z = rng.multivariate_normal(np.zeros(2), cov, size=400_000)
    if activation == "relu":
        phi, dphi = np.maximum(z, 0), (z > 0).astype(float)
    else:
        phi, dphi = erf(z), 2 / np.sqrt(np.pi) * np.exp(-(z**2))
    mc = [np.mean(phi[:, 0] * phi[:, 1]), np.mean(dphi[:, 0] * dphi[:, 1])]
    se = [np.std(phi[:, 0] * phi[:, 1]) / np.sqrt(len(z)), np.std(dphi[:, 0] * dphi[:, 1]) / np.sqrt(len(z))]
    exact = dual_activation(activation, 1.3, 0.8, 0.6)
    for e, m, s in zip(exact, mc, se):
        assert abs(float(e) - m) < 5 * s  # 5 standard errors of the Monte Carlo mean


def test_relu_dual_on_the_diagonal_and_at_zero_variance():
    kappa, kdot = dual_activation("relu", 2.0, 2.0, 2.0)
    assert np.isclose(kappa, 1.0, rtol=1e-6) and np.isclose(kdot, 0.5)  # E relu(u)^2 = q/2
    kappa, kdot = dual_activation("relu", 0.0, 1.0, 0.0)
    assert kappa == 0.0 and np.isfinite(kdot)


def test_depth_one_is_the_input_kernel_and_shapes():
    x1, x2 = _inputs(5), _inputs(3, seed=1)
    nngp, ntk = fc_kernels(x1, x2, depth=1, activation="relu", sigma_w=1.5, sigma_b=0.4)
    expected = 1.5**2 * x1 @ x2.T / 5 + 0.4**2
    np.testing.assert_allclose(nngp, expected, rtol=1e-5)
    np.testing.assert_allclose(ntk, expected, rtol=1e-5)
    assert nngp_fc(x1, x2, 3).shape == (5, 3) and ntk_fc(x1, None, 3).shape == (5, 5)


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_cross_kernel_is_a_block_of_the_joint_kernel(activation):
    x1, x2 = _inputs(4), _inputs(3, seed=2)
    joint = fc_kernels(jnp.concatenate([x1, x2]), None, 4, activation, 1.3, 0.2)
    cross = fc_kernels(x1, x2, 4, activation, 1.3, 0.2)
    for j, c in zip(joint, cross):
        np.testing.assert_allclose(j[:4, 4:], c, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(j, j.T, rtol=1e-5)


def test_linear_activation_closed_form():
    # deep linear network: Sigma^L = s^{2L} x.x'/d + b^2 sum_{j<L} s^{2j}; Theta^l = Sigma^l + s^2 Theta^{l-1}
    x = _inputs(4)
    s, b, depth = 0.9, 0.3, 4
    g = x @ x.T / x.shape[1]
    sig = [s**2 * g + b**2]
    th = [sig[0]]
    for _ in range(depth - 1):
        sig.append(s**2 * sig[-1] + b**2)
        th.append(sig[-1] + s**2 * th[-1])
    nngp, ntk = fc_kernels(x, None, depth, "linear", s, b)
    np.testing.assert_allclose(nngp, sig[-1], rtol=1e-5)
    np.testing.assert_allclose(ntk, th[-1], rtol=1e-5)
    np.testing.assert_allclose(nngp, s ** (2 * depth) * g + b**2 * sum(s ** (2 * j) for j in range(depth)), rtol=1e-5)


def test_float64_inputs_give_float64_kernels():
    with jax.enable_x64(True):  # the dtype follows the inputs
        x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2)))
        assert nngp_fc(x, None, 3).dtype == jnp.float64
        assert deq_nngp(x, None, 1.0, 1.0, 0.1)[0].dtype == jnp.float64


@pytest.mark.parametrize("activation,sigma_w,sigma_b", [("relu", 1.4, 0.3), ("erf", 1.2, 0.2)])
def test_finite_networks_converge_to_the_analytic_kernels(activation, sigma_w, sigma_b):
    # per network the empirical kernels fluctuate by O(1/sqrt(width)) around the analytic ones; the
    # constant is O(1) (about 1-3 at depth 3, ~1.3 for the 4-seed mean): allow 5/sqrt(width) = 0.16
    # for the 4-seed mean. A parameterization mismatch (e.g. a missing sigma_w) gives an O(1) error.
    width = 1024
    x = _inputs(6, 5)
    nngp, ntk = fc_kernels(x, None, 3, activation, sigma_w, sigma_b)
    e_nngp, e_ntk = fc_kernels_monte_carlo(jax.random.key(3), x, None, 3, width, activation, sigma_w, sigma_b, 4)
    tol = 5 / np.sqrt(width)
    for est, ref in ((e_nngp.mean(0), nngp), (e_ntk.mean(0), ntk)):
        assert np.linalg.norm(est - ref) / np.linalg.norm(ref) < tol


def test_deq_fixed_point_relu_diagonal_closed_form_and_equation():
    x = _inputs(5, 3)
    sw, su, sb = 1.1, 0.8, 0.5
    with jax.enable_x64(True):  # a tight fixed-point residual
        x = jnp.asarray(x, jnp.float64)
        k, info = deq_nngp(x, None, sw, su, sb, "relu", tol=1e-13, max_iter=2000)
        assert info.converged and info.residual <= 1e-13
        c = su**2 * jnp.sum(x * x, 1) / 3 + sb**2
        np.testing.assert_allclose(jnp.diag(k), c / (1 - sw**2 / 2), rtol=1e-10)  # q* = c/(1 - sw^2/2)
        q = jnp.diag(k)
        kappa, _ = dual_activation("relu", q[:, None], q[None, :], k)
        np.testing.assert_allclose(sw**2 * kappa + su**2 * x @ x.T / 3 + sb**2, k, rtol=1e-10)
        assert info.contraction == pytest.approx(sw**2 / 2)


def test_deq_layers_converge_geometrically_at_the_contraction_rate():
    with jax.enable_x64(True):  # the error must be followed far below float32 precision
        x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)))
        k, _ = deq_nngp(x, None, 1.0, 1.0, 0.2, tol=1e-14, max_iter=3000)
        layers = deq_nngp_layers(x, None, 30, 1.0, 1.0, 0.2)
        err = np.array([np.abs(layer - k).max() for layer in layers])
        ratio = err[11:25] / err[10:24]
        np.testing.assert_allclose(ratio, 0.5, atol=0.02)  # sigma_w^2/2: the diagonal map is linear


def test_deq_cross_kernel_and_nonconvergence():
    x1, x2 = _inputs(3, 4), _inputs(2, 4, seed=5)
    joint, _ = deq_nngp(jnp.concatenate([x1, x2]), None, 0.9, 1.0, 0.1, "erf", tol=1e-7)
    cross, info = deq_nngp(x1, x2, 0.9, 1.0, 0.1, "erf", tol=1e-7)
    np.testing.assert_allclose(joint[:3, 3:], cross, rtol=1e-4, atol=1e-6)
    assert info.diag1.shape == (3,) and info.diag2.shape == (2,)
    _, info = deq_nngp(x1, None, 1.6, 1.0, 0.1, "relu", max_iter=200)  # sigma_w^2 = 2.56 > 2
    assert not info.converged and deq_contraction("relu", 1.6) > 1


def test_min_eig_lower_bound_is_a_lower_bound():
    with jax.enable_x64(True):  # eigenvalues near 1e-5 need float64
        for seed, (n, d) in enumerate([(30, 2), (20, 5)]):
            x = jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)))
            k, _ = deq_nngp(x, None, 1.0, 1.0, 0.3, tol=1e-13, max_iter=2000)
            bound = deq_min_eig_lower_bound(k, 1.0)
            assert 0 < bound <= np.linalg.eigvalsh(np.asarray(k))[0]
        # two equal inputs: correlation 1, no positive bound (and lambda_min = 0)
        x = jnp.concatenate([x[:3], x[:1]])
        k, _ = deq_nngp(x, None, 1.0, 1.0, 0.3, tol=1e-13, max_iter=2000)
        assert deq_min_eig_lower_bound(k, 1.0) == 0.0


def test_series_coefficients_sum_to_the_kernel():
    rho = 0.37
    c = dual_series_coefficients("relu", 400)
    assert np.all(c >= 0)
    exact = (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / (2 * np.pi)
    assert np.isclose(np.polyval(c[::-1], rho), exact, rtol=1e-12)
    c = dual_series_coefficients("erf", 400)
    assert np.isclose(np.polyval(c[::-1], rho), np.arcsin(rho), rtol=1e-12)


def test_bad_arguments_raise():
    x = _inputs()
    with pytest.raises(ValueError, match="activation"):
        nngp_fc(x, None, 2, "tanh")
    with pytest.raises(ValueError, match="depth"):
        ntk_fc(x, None, 0)
    with pytest.raises(ValueError, match="expected"):
        nngp_fc(x, jnp.ones((2, 3)), 2)
    with pytest.raises(ValueError, match="max_iter"):
        deq_nngp(x, None, max_iter=0)


def test_relu_ntk_diagonal_is_accurate_in_float32():
    # With x2 omitted the diagonal has cos theta = 1 exactly; computed through the matmul it would sit
    # at 1 - eps, where arccos loses ~sqrt(eps): a 1e-4 relative error of the ReLU NTK in float32.
    from overparam.kernels.analytic import fc_kernels

    x = np.random.default_rng(1).normal(size=(256, 64)).astype(np.float32)  # a case where the matmul rounds low
    nngp32, ntk32 = fc_kernels(jnp.asarray(x), None, 3, "relu", 1.4, 0.1)
    with jax.enable_x64(True):  # the float64 reference
        nngp64, ntk64 = fc_kernels(jnp.asarray(x, jnp.float64), None, 3, "relu", 1.4, 0.1)
        for k32, k64 in ((nngp32, nngp64), (ntk32, ntk64)):
            rel = np.abs(np.diag(np.asarray(k32, np.float64)) - np.diag(np.asarray(k64))) / np.diag(np.asarray(k64))
            assert rel.max() < 3e-6, rel.max()
