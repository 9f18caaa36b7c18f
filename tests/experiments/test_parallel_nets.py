"""Parallel networks and the ResNet variant: forward pass, rescaling symmetry, norms, sweep training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overparam.experiments import parallel_nets as pn
from overparam.derivations import weight_decay as wd
from overparam.derivations.symbolic import to_numeric


def _reference_block(layers, j, z):
    for w in layers[:-1]:
        z = np.maximum(z @ w[j], 0)
    return z @ layers[-1][j]


def _reference_parallel(params, x):
    xt = np.c_[np.asarray(x), np.ones((x.shape[0], 1))]
    layers = [np.asarray(w) for w in params["layers"]]
    return np.asarray(params["bias"]) + sum(_reference_block(layers, j, xt) for j in range(layers[0].shape[0]))


def _reference_resnet(params, x):
    h = np.c_[np.asarray(x), np.ones((x.shape[0], 1)), np.zeros((x.shape[0], 1))]
    layers = [np.asarray(w) for w in params["layers"]]
    for j in range(layers[0].shape[0]):
        h = h + _reference_block(layers, j, h)
    return np.asarray(params["bias"]) + h[:, -1:]


X = jnp.linspace(-1, 1, 9)[:, None]


def test_parallel_forward_matches_reference_and_shapes():
    p = pn.parallel_init(jax.random.key(0), num_subnets=5, width=3, depth=3)
    assert [w.shape for w in p["layers"]] == [(5, 2, 3), (5, 3, 3), (5, 3, 1)]
    np.testing.assert_allclose(pn.parallel_apply(p, X), _reference_parallel(p, X), rtol=1e-5, atol=1e-6)
    assert pn.subnet_outputs(p, X).shape == (5, 9, 1)
    np.testing.assert_allclose(pn.subnet_outputs(p, X).sum(0), pn.parallel_apply(p, X), rtol=1e-5, atol=1e-6)


def test_resnet_forward_matches_reference():
    p = pn.resnet_init(jax.random.key(1), num_blocks=6, width=4, depth=3)
    assert [w.shape for w in p["layers"]] == [(6, 3, 4), (6, 4, 4), (6, 4, 3)]
    np.testing.assert_allclose(pn.resnet_apply(p, X), _reference_resnet(p, X), rtol=1e-4, atol=1e-5)


def test_bad_sizes_and_inputs_raise():
    with pytest.raises(ValueError, match="depth"):
        pn.parallel_init(jax.random.key(0), 4, 3, 1)
    with pytest.raises(ValueError, match="width"):
        pn.parallel_init(jax.random.key(0), 4, 0, 3)
    p = pn.parallel_init(jax.random.key(0), 4, 3, 3)
    with pytest.raises(ValueError, match="features"):
        pn.parallel_apply(p, jnp.ones((5, 2)))
    with pytest.raises(ValueError, match="shape"):
        pn.parallel_apply(p, jnp.ones(5))
    with pytest.raises(ValueError, match="lams"):
        pn.train_weight_decay_sweep(pn.parallel_apply, p, X, X, jnp.array([-1.0]), optax.adam(1e-2), 10, 5)


def test_knots_init_places_first_layer_kinks_in_range():
    p = pn.parallel_init(jax.random.key(3), 50, 4, 3, knots=(-0.5, 0.25))
    w1 = np.asarray(p["layers"][0])
    kinks = -w1[:, 1, :] / w1[:, 0, :]
    assert kinks.min() >= -0.5 - 1e-6 and kinks.max() <= 0.25 + 1e-6


@pytest.mark.parametrize("architecture", ["parallel", "resnet"])
def test_rescaling_symmetry_and_rebalance(architecture):
    """Layer rescalings with prod alpha = 1 keep f; rebalancing reaches the AM-GM minimum of the penalty."""
    init, apply = (pn.parallel_init, pn.parallel_apply) if architecture == "parallel" else (pn.resnet_init, pn.resnet_apply)
    p = init(jax.random.key(2), 7, 4, 3)
    alpha = jnp.exp(jax.random.normal(jax.random.key(5), (7, 3)))
    alpha = alpha / jnp.prod(alpha, axis=1, keepdims=True) ** (1 / 3)
    q = {**p, "layers": tuple(w * alpha[:, l, None, None] for l, w in enumerate(p["layers"]))}
    np.testing.assert_allclose(apply(q, X), apply(p, X), rtol=1e-4, atol=1e-5)
    assert float(pn.l2_penalty(q)) != pytest.approx(float(pn.l2_penalty(p)))
    np.testing.assert_allclose(pn.subnet_scales(q), pn.subnet_scales(p), rtol=1e-5)
    b = pn.rebalance(q)
    np.testing.assert_allclose(apply(b, X), apply(p, X), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pn.balance_ratio(b), 1.0, rtol=1e-5)
    # the minimum over rescalings is the l^{2/L} penalty of the derivation
    r = wd.parallel_penalty(3, 7)
    f = to_numeric(r["penalty"], (r["lam"], *r["coefficients"]), backend="numpy")
    assert float(pn.l2_penalty(b)) == pytest.approx(f(1.0, *np.asarray(pn.subnet_scales(p), dtype=np.float64)), rel=1e-5)
    assert float(pn.l2_penalty(b)) <= float(pn.l2_penalty(p)) + 1e-6


def test_norms_active_and_balance_measures():
    p = pn.parallel_init(jax.random.key(4), 4, 3, 3)
    layers = list(p["layers"])
    layers[1] = layers[1].at[2].set(0.0)  # subnetwork 2 switched off
    p = {**p, "layers": tuple(layers)}
    norms = pn.layer_norms(p)
    assert norms.shape == (4, 3)
    np.testing.assert_allclose(norms[0, 0], jnp.linalg.norm(p["layers"][0][0]), rtol=1e-6)
    np.testing.assert_allclose(pn.subnet_scales(p), jnp.prod(norms, axis=1), rtol=1e-6)
    active = np.asarray(pn.active_subnets(p))
    assert active.tolist() == [True, True, False, True]
    assert pn.num_active(p) == 3
    assert float(pn.worst_active_balance(pn.rebalance(p))) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="rel_threshold"):
        pn.active_subnets(p, rel_threshold=0.0)


def test_doppler_and_spiky_data():
    x, y, xt, ft = pn.regression_data(jax.random.key(0), "doppler", 64, 0.1, num_test=50)
    assert x.shape == (64, 1) and y.shape == (64, 1) and xt.shape == (50, 1) and ft.shape == (50, 1)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert float(pn.doppler(jnp.array(0.0))) == 0.0 and float(pn.doppler(jnp.array(1.0))) == pytest.approx(0.0, abs=1e-6)
    _, y0, _, f0 = pn.regression_data(jax.random.key(0), "spiky", 64, 0.0, num_test=50)
    np.testing.assert_allclose(y0[:, 0], pn.spiky_wave((x[:, 0] + 1) / 2), atol=1e-6)
    assert float(pn.spiky_wave(jnp.array(0.2))) == pytest.approx(1.0 + 0.5 * np.sin(0.4 * np.pi), abs=1e-6)
    with pytest.raises(ValueError, match="target"):
        pn.regression_data(jax.random.key(0), "nope", 64, 0.1)


def test_weight_decay_sweep_trains_and_shrinks_norms():
    x, y, _, _ = pn.regression_data(jax.random.key(1), "spiky", 64, 0.05)
    p0 = pn.parallel_init(jax.random.key(2), 8, 3, 3, knots=(-1.0, 1.0))
    lams = jnp.array([0.0, 1e-3, 1e-1])
    res = pn.train_weight_decay_sweep(pn.parallel_apply, p0, x, y, lams, optax.adam(1e-2), 400, 100)
    assert res.records.shape == (3, 4, 8, 3)
    assert res.params["layers"][0].shape == (3, 8, 2, 3)
    assert not bool(res.diverged.any())
    mse0 = float(jnp.mean((pn.parallel_apply(p0, x) - y) ** 2))
    penalties = [float(pn.l2_penalty(jax.tree.map(lambda a: a[i], res.params))) for i in range(3)]
    assert penalties[2] < penalties[1] < penalties[0]
    fit = jax.tree.map(lambda a: a[0], res.params)
    assert float(jnp.mean((pn.parallel_apply(fit, x) - y) ** 2)) < 0.5 * mse0


@pytest.mark.parametrize("architecture", ["parallel", "resnet"])
def test_balance_certificate_identity_and_bound(architecture, x64):
    key = jax.random.key(3)
    x = jnp.linspace(-1, 1, 40, dtype=jnp.float64)[:, None]
    y = jnp.sin(3 * x)
    if architecture == "parallel":
        params, apply_fn = pn.parallel_init(key, 4, 3, 3, knots=(-1.0, 1.0)), pn.parallel_apply
    else:
        params, apply_fn = pn.resnet_init(key, 3, 3, 3), pn.resnet_apply
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    c = pn.balance_certificate(apply_fn, params, x, y, 1e-3)
    # the identity is exact: imbalance = (<G_l, W_l> - <G_{l+1}, W_{l+1}>) / (2 lam)
    np.testing.assert_allclose(np.asarray(c["imbalance"]), np.asarray(c["identity"]), rtol=1e-9, atol=1e-9)
    # and the certified bound holds for every block
    assert np.all(np.asarray(c["ratio"]) <= np.asarray(c["bound_ratio"]) * (1 + 1e-12))


def test_polish_lowers_the_gradient_and_certifies_balance(x64):
    key = jax.random.key(0)
    x = jnp.linspace(-1, 1, 32)[:, None]
    y = 0.5 * jnp.abs(x)
    p0 = pn.parallel_init(key, 3, 2, 2, knots=(-1.0, 1.0))
    batch = jax.tree.map(lambda a: a[None], p0)
    lam = 1e-2
    g0 = pn.polish_lbfgs(pn.parallel_apply, batch, x, y, jnp.array([lam]), num_steps=1)[1]
    polished, g = pn.polish_lbfgs(pn.parallel_apply, batch, x, y, jnp.array([lam]), num_steps=300)
    assert float(g[0]) < 1e-3 * float(g0[0])
    c = pn.balance_certificate(pn.parallel_apply, jax.tree.map(lambda a: a[0], polished),
                               jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64), lam)
    assert float(c["worst_ratio"]) <= float(c["worst_bound"]) < 1.01
