"""Tests for overparam.experiments.binary_weights: stochastic rounding, the straight-through network, the quasi-network NTK.

The analytic kernel is float64 NumPy; the Monte Carlo checks of it use float32 JAX samples
with tolerances of several standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import binary_weights as bn
from overparam.experiments.spiky_smooth import relu_duals, relu_ntk_dot
from overparam.kernels.analytic import mlp_kernels
from overparam.kernels.empirical import ntk, ntk_layerwise
from overparam.kernels.spectra import well_spread_points
from overparam.models import MLPSpec
from overparam.training import mse_loss


def test_stochastic_round_is_unbiased_and_binary():
    w = jnp.array([-1.0, -0.5, 0.0, 0.3, 1.0])
    draws = jax.vmap(lambda k: bn.stochastic_round(k, w))(jax.random.split(jax.random.key(0), 20000))
    assert set(np.unique(np.asarray(draws)).tolist()) <= {-1.0, 1.0}
    np.testing.assert_allclose(draws.mean(0), w, atol=0.02)  # std <= 1/sqrt(20000)
    np.testing.assert_allclose(draws.var(0), 1 - w**2, atol=0.02)


def test_binary_ntk_reduces_to_relu_ntk_and_matches_its_taylor_series():
    t = np.linspace(-1, 1, 21)
    np.testing.assert_allclose(bn.binary_ntk_dot(t, 1.0), relu_ntk_dot(t), atol=1e-12)
    for beta in (0.0, 1.0):
        coeffs = bn.binary_ntk_taylor(1 / 3, 300, beta)
        assert np.all(coeffs >= 0)
        np.testing.assert_allclose(np.polyval(coeffs[::-1], t), bn.binary_ntk_dot(t, 1 / 3, beta), atol=1e-13)
    with pytest.raises(ValueError, match="q="):
        bn.binary_ntk_dot(t, 1.5)


def _embedded_pairs(dim):
    x = well_spread_points(5, 3)
    r = np.asarray(bn.random_embedding(jax.random.key(1), 3, dim))
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-5)
    return x, jnp.asarray(x @ r.T, jnp.float32)


def test_rounding_noise_shrinks_the_correlation_to_q_rho():
    """Independent roundings for x and x' (the quasi network): E relu(Qx) relu(Q'x') = K1(q rho)."""
    dim, m = 256, 20_000
    x, xe = _embedded_pairs(dim)
    key_w, key_1, key_2 = jax.random.split(jax.random.key(2), 3)
    w = jax.random.uniform(key_w, (dim, m), minval=-1.0, maxval=1.0)  # q = 1/3
    h1 = xe @ bn.stochastic_round(key_1, w)  # (5, m): draw Q for the first argument
    h2 = xe @ bn.stochastic_round(key_2, w)  # an independent draw Q' for the second
    rho = np.clip(x @ x.T, -1, 1)
    k1, k0 = relu_duals(rho / 3)
    emp_k1 = np.asarray(jax.nn.relu(h1) @ jax.nn.relu(h2).T) / m
    emp_k0 = np.asarray((h1 > 0).astype(jnp.float32) @ (h2 > 0).astype(jnp.float32).T) / m
    np.testing.assert_allclose(emp_k1, k1, atol=0.015)  # MC std ~ 0.5/sqrt(20000) + CLT error O(1/dim)
    np.testing.assert_allclose(emp_k0, k0, atol=0.015)
    # the same draw for both arguments sees the full correlation rho (a vanilla-like kernel)
    shared = np.asarray(jax.nn.relu(h1) @ jax.nn.relu(h1).T) / m
    np.testing.assert_allclose(shared, relu_duals(rho)[0], atol=0.015)
    assert np.max(np.abs(shared - emp_k1)) > 0.1


def test_straight_through_gradient_is_the_gradient_at_the_rounded_weights():
    key = jax.random.key(3)
    params = bn.binary_net_init(jax.random.key(4), 8, 6, binary=True)
    x = jnp.asarray(well_spread_points(4, 3) @ np.asarray(bn.random_embedding(key, 3, 8)).T, jnp.float32)
    q = bn.stochastic_round(key, params["w"])
    g_ste = jax.jit(jax.grad(lambda p: bn.binary_net_apply(p, x, key, binary=True).sum()))(params)
    g_at_q = jax.jit(jax.grad(lambda p: bn.binary_net_apply(p, x).sum()))({"w": q, "v": params["v"]})
    np.testing.assert_allclose(g_ste["w"], g_at_q["w"], atol=1e-6)
    np.testing.assert_allclose(g_ste["v"], g_at_q["v"], atol=1e-6)
    np.testing.assert_allclose(bn.binary_net_apply(params, x, key, binary=True),
                               bn.binary_net_apply({"w": q, "v": params["v"]}, x), atol=1e-6)
    with pytest.raises(ValueError, match="key"):
        bn.binary_net_apply(params, x, binary=True)


def test_init_is_zero_function_and_validates():
    params = bn.binary_net_init(jax.random.key(0), 5, 10, binary=False)
    assert params["w"].shape == (5, 10) and params["v"].shape == (10, 1)
    x = jnp.asarray(well_spread_points(7, 3) @ np.eye(3, 5), jnp.float32)
    assert bn.binary_net_apply(params, x).shape == (7, 1)
    np.testing.assert_allclose(bn.binary_net_apply(params, x), 0.0, atol=1e-6)
    pb = bn.binary_net_init(jax.random.key(0), 5, 10, binary=True, latent_bound=0.5)
    assert float(jnp.max(jnp.abs(pb["w"]))) <= 0.5
    with pytest.raises(ValueError, match="even"):
        bn.binary_net_init(jax.random.key(0), 5, 7, binary=False)


def test_training_fits_and_matches_the_kernel_prediction():
    x, y, xt, yt = bn.sample_sphere_tasks(jax.random.key(5), 2, 24, 40, noise=0.3)
    r = np.asarray(bn.random_embedding(jax.random.key(6), 3, 16))
    kw = dict(width=1024, lr=2.0, num_steps=40)
    real = bn.binary_net_gaps(jax.random.split(jax.random.key(7), 2), x @ r.T, y, xt @ r.T, yt, binary=False, **kw)
    assert real.losses.shape == (2, 40) and np.all(real.losses[:, -1] < real.losses[:, 0])
    ref = [bn.kernel_gd_errors(relu_ntk_dot, x[s], y[s], xt[s], yt[s], 2.0, 40) for s in range(2)]
    np.testing.assert_allclose(real.train_mse, [r_[0] for r_ in ref], atol=0.01)  # width 1024: kernel ~5% off
    binary = bn.binary_net_gaps(jax.random.split(jax.random.key(8), 2), x @ r.T, y, xt @ r.T, yt, binary=True,
                                num_draws=32, **kw)
    assert np.all(np.isfinite(binary.gap)) and np.all(binary.losses[:, -10:].mean(1) < binary.losses[:, 0])
    with pytest.raises(ValueError, match="expected"):
        bn.binary_net_gaps(jax.random.split(jax.random.key(8), 3), x, y, xt, yt, binary=False, **kw)


def _step_by_step(params, x, y, lr, key, binary, num_steps):
    """The GD loop written out in Python: loss and gradient with the draw fold_in(key, t), step, clip."""
    losses = []
    for t in range(num_steps):
        k = jax.random.fold_in(key, t)
        loss, g = jax.value_and_grad(lambda p: mse_loss(bn.binary_net_apply(p, x, k, binary=binary), y))(params)
        params = jax.tree.map(lambda p, gp: p - lr * gp, params, g)
        if binary:
            params = {"w": jnp.clip(params["w"], -1.0, 1.0), "v": params["v"]}
        losses.append(loss)
    return params, jnp.stack(losses)


@pytest.mark.parametrize("binary", [False, True])
def test_train_binary_net_follows_the_step_by_step_reference(binary):
    x, y, _, _ = bn.sample_sphere_tasks(jax.random.key(9), 1, 12, 1, noise=0.3)
    r = np.asarray(bn.random_embedding(jax.random.key(10), 3, 8))
    x, y = jnp.asarray(x[0] @ r.T, jnp.float32), jnp.asarray(y[0, :, None], jnp.float32)
    params0 = bn.binary_net_init(jax.random.key(11), 8, 16, binary)
    key, lr = jax.random.key(12), jnp.float32(1.5)
    params, losses = bn.train_binary_net(params0, x, y, lr, key, binary=binary, num_steps=15)
    ref_params, ref_losses = _step_by_step(params0, x, y, lr, key, binary, 15)
    assert losses.shape == (15,) and float(losses[-1]) < float(losses[0])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    for name in ("w", "v"):
        np.testing.assert_allclose(params[name], ref_params[name], rtol=1e-6, atol=1e-7)
    if binary:
        assert float(jnp.max(jnp.abs(params["w"]))) <= 1.0
        assert float(jnp.max(jnp.abs(params["w"] - params0["w"]))) > 0.0  # the latent weights did move


def test_real_network_is_the_two_layer_mlp_spec_and_has_its_kernel(x64):
    """binary_net_apply(binary=False) on unit-norm x is MLPSpec.two_layer(D, m) on sqrt(D) x; NTK = binary_ntk_dot(q=1)."""
    dim, width = 8, 6
    x, xe = _embedded_pairs(dim)
    xe = jnp.asarray(xe, jnp.float64)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), bn.binary_net_init(jax.random.key(13), dim, width, binary=False))
    params = {"w": params["w"], "v": params["v"] + 0.1}  # away from the antisymmetric init: f != 0
    spec = MLPSpec.two_layer(dim, width)
    layers = {"layers": [{"w": params["w"]}, {"w": params["v"]}]}
    np.testing.assert_allclose(bn.binary_net_apply(params, xe), spec(layers, np.sqrt(dim) * xe), rtol=1e-12)
    # the same finite-width tangent kernel (the sqrt(D) rescaling of the inputs changes no gradient)
    np.testing.assert_allclose(ntk(bn.binary_net_apply, params, xe), ntk_layerwise(spec, layers, np.sqrt(dim) * xe),
                               rtol=1e-10, atol=1e-12)
    # and the same infinite-width NTK: kernels.analytic from the spec is binary_ntk_dot at q = 1 (no rounding noise)
    _, theta = mlp_kernels(spec, np.sqrt(dim) * xe)
    t = np.clip(x @ x.T, -1, 1)
    np.testing.assert_allclose(np.asarray(theta), bn.binary_ntk_dot(t, 1.0), atol=1e-7)  # arccos at t ~ 1: ~1e-8
