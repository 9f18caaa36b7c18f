"""Tests for overparam.experiments.spiky_smooth: ReLU and spiky-smooth NTKs, and the benign-overfitting helpers.

Kernels are float64 NumPy; the finite-width comparisons run the float32 network of
``overparam.models`` and use tolerances of a few Monte Carlo standard errors (~1/sqrt(width)).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import spiky_smooth as act
from overparam.kernels.analytic import mlp_kernels, ntk_fc
from overparam.kernels.empirical import ntk_layerwise
from overparam.kernels.spectra import well_spread_points


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_relu_ntk_dot_matches_kernels_analytic(beta):
    x = well_spread_points(7, 3)
    d = x.shape[1]
    with jax.enable_x64(True):
        # ntk_fc also gives the output layer a bias (its + beta^2) and does not normalize the variance
        ref = (np.asarray(ntk_fc(np.sqrt(d) * x, depth=2, sigma_w=1.0, sigma_b=beta)) - beta**2) / (1 + beta**2)
    # atol: arccos near t = +-1 turns rounding of t (1e-16) into ~1e-8
    np.testing.assert_allclose(act.relu_ntk_dot(np.clip(x @ x.T, -1, 1), beta), ref, atol=1e-7)


def test_relu_taylor_coefficients_sum_to_the_kernels():
    k1c, k0c = act.relu_taylor_coefficients(3000)
    assert np.all(k1c >= 0) and np.all(k0c >= 0)
    rho = np.linspace(-0.9, 0.9, 13)
    k1, k0 = act.relu_duals(rho)
    np.testing.assert_allclose(np.polyval(k1c[::-1], rho), k1, atol=1e-12)
    np.testing.assert_allclose(np.polyval(k0c[::-1], rho), k0, atol=1e-12)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_relu_ntk_dot_is_the_analytic_kernel_of_the_spiky_net_spec(x64, beta):
    """The module's input/bias convention is the MLPSpec's: same network, same closed-form NTK."""
    x = well_spread_points(7, 3)
    inputs = act.spiky_net_inputs(x, beta)
    assert inputs.shape == (7, 4)
    np.testing.assert_allclose(np.linalg.norm(inputs, axis=1), 2.0, rtol=1e-12)  # sqrt(d + 1)
    spec = act.spiky_net_spec(3, 16)
    assert spec.widths == (4, 16, 1) and spec.activation == "relu" and not spec.use_bias
    nngp, theta = mlp_kernels(spec, inputs)
    t = np.clip(x @ x.T, -1, 1)
    # atol: arccos near t = +-1 turns rounding of t (1e-16) into ~1e-8
    np.testing.assert_allclose(np.asarray(theta), act.relu_ntk_dot(t, beta), atol=1e-7)
    np.testing.assert_allclose(np.asarray(nngp), act.relu_duals(act.bias_correlation(t, beta))[0], atol=1e-7)
    with pytest.raises(ValueError, match="closed-form"):
        mlp_kernels(act.spiky_net_spec(3, 16, 0.8, 2.0), inputs)  # the spiky kernel is this module's own


def test_spiky_net_spec_is_hashed_by_value_and_validates():
    spec = act.spiky_net_spec(2, 8, 0.5, 3.0)
    assert spec == act.spiky_net_spec(2, 8, 0.5, 3.0) and hash(spec) == hash(act.spiky_net_spec(2, 8, 0.5, 3.0))
    assert spec != act.spiky_net_spec(2, 8, 0.5, 4.0)
    u = jnp.linspace(-1, 1, 5)
    np.testing.assert_array_equal(spec.activation_fn(u), act.spiky_smooth_activation(u, 0.5, 3.0))
    x = well_spread_points(5, 2)
    assert spec(spec.init(0), jnp.asarray(act.spiky_net_inputs(x, 1.0), jnp.float32)).shape == (5, 1)
    with pytest.raises(ValueError, match="frequency"):
        act.SpikySmooth(1.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        act.spiky_net_inputs(x, -1.0)
    with pytest.raises(ValueError, match="expected"):
        act.spiky_net_inputs(x[0], 1.0)


def _finite_width_ntk(a, b, x, beta, width, seed):
    """Empirical NTK of ``spiky_net_spec`` (width hidden units) on ``spiky_net_inputs(x, beta)``, float32."""
    spec = act.spiky_net_spec(x.shape[1], width, a, b)
    return np.asarray(ntk_layerwise(spec, spec.init(seed), jnp.asarray(act.spiky_net_inputs(x, beta), jnp.float32)))


def test_spiky_smooth_ntk_matches_a_wide_network():
    """At b = 2 the cross terms 2 a rho e^{-b^2/2} are ~0.2: the closed form must include them."""
    a, b, beta, width = 0.8, 2.0, 1.0, 40_000
    x = well_spread_points(6, 2)
    emp = np.mean([_finite_width_ntk(a, b, x, beta, width, s) for s in range(3)], axis=0)
    ana = act.spiky_smooth_ntk_dot(np.clip(x @ x.T, -1, 1), a, b, beta)
    np.testing.assert_allclose(emp, ana, atol=0.02)  # MC std ~ 1/sqrt(3 * 40000) x O(1)
    without_cross = ana - 2 * a * act.bias_correlation(np.clip(x @ x.T, -1, 1), beta) * np.exp(-b**2 / 2)
    assert np.max(np.abs(emp - without_cross)) > 0.05  # the cross terms are visible at this b


def test_spike_is_narrow_high_and_finite():
    a = np.sqrt(2.0)
    for b in (50.0, 1e6):
        assert np.isclose(act.spike_height(a, b), a**2 / 2 * (1 + 1 / b**2), rtol=1e-12)
    rho = np.array([1.0, 1 - 1e-3, 0.9, 0.0])
    spike = act.spike_ntk_dot(rho, a, 100.0)
    assert np.all(np.isfinite(spike))
    assert spike[0] > 0.99 and spike[1] < 1e-4 and abs(spike[3]) < 1e-300
    np.testing.assert_allclose(act.spiky_smooth_ntk_dot(rho, a, 100.0) - act.relu_ntk_dot(rho), spike)


def test_spiky_smooth_activation_is_relu_plus_small_wiggle():
    u = jnp.linspace(-2, 2, 101)
    a, b = 1.0, 1e3
    diff = act.spiky_smooth_activation(u, a, b) - jax.nn.relu(u)
    assert float(jnp.max(jnp.abs(diff))) <= a / b + 1e-6
    slope = jax.vmap(jax.grad(lambda v: act.spiky_smooth_activation(v, a, b)))(u) - (u > 0)
    assert float(jnp.max(jnp.abs(slope))) > 0.5 * a  # the derivative fluctuates by O(a)
    with pytest.raises(ValueError, match="frequency"):
        act.spiky_smooth_activation(u, 1.0, 0.0)
    with pytest.raises(ValueError, match="beta"):
        act.bias_correlation(0.3, -1.0)


def test_kernel_fit_interpolates_only_without_ridge():
    x, y, xt, ft = act.sample_circle_task(jax.random.key(0), 40, 50, noise=0.5)
    kern = lambda t: act.relu_ntk_dot(t, 1.0)  # noqa: E731
    from overparam.kernels.spectra import dot_kernel_matrix

    k, kt = dot_kernel_matrix(kern, x), dot_kernel_matrix(kern, xt, x)
    _, resid0, _ = act.kernel_fit(k, kt, y, ft)
    _, resid1, _ = act.kernel_fit(k, kt, y, ft, ridge=1.0)
    assert resid0 < 1e-8 and resid1 > 0.05


def test_interpolation_curves_shapes_and_spiky_equals_krr():
    out = act.interpolation_curves(jax.random.key(1), [32, 64], 2, noise=0.5, n_test=200,
                                   amplitude=np.sqrt(2.0), frequency_of_n=lambda n: n**2)
    for name in ("relu", "spiky", "krr", "spiky_residual", "spiky_vs_krr"):
        assert out[name].shape == (2, 2) and np.all(np.isfinite(out[name]))
    assert np.all(out["spiky_residual"] < 1e-8)
    assert np.all(out["spiky_vs_krr"] < 0.2)  # the spikes cover a vanishing part of the circle


def test_spiky_gram_keeps_the_spike_at_huge_frequency():
    """b = 1e8: 1 - x.x' from the dot product is off by ~1e-16, i.e. by e^{+-1} in the spike."""
    x = well_spread_points(9, 2)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    a, b = np.sqrt(2.0), 1e8
    gram = act.spiky_smooth_gram(x, x, a, b, beta=1.0)
    relu = act.relu_ntk_dot(np.clip(x @ x.T, -1, 1), 1.0)
    np.testing.assert_allclose(np.diag(gram - relu), act.spike_height(a, b), rtol=1e-12)
    off = (gram - relu)[~np.eye(9, dtype=bool)]
    assert np.max(np.abs(off)) < 1e-300
    xs = np.array([[1.0, 0.0], [np.cos(1e-8), np.sin(1e-8)]])  # 1e-8 apart: b |x - x'| = 1
    g = act.spiky_part(xs, xs, a, b, beta=1.0)
    np.testing.assert_allclose(g[0, 1] / g[0, 0], np.exp(-(b * 1e-8) ** 2 / 4), rtol=1e-6)
