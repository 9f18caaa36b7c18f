"""Tests of overparam.experiments.agop: input gradients, AGOP, alignment, closed-form target AGOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments.agop import agop, agop_alignment, agop_from_jacobians, input_gradients, target_agop
from overparam.models import MLPSpec


def test_agop_of_linear_and_quadratic_functions():
    d = 4
    w = jnp.array([1.0, -2.0, 0.5, 0.0])
    x = jax.random.normal(jax.random.key(0), (100, d))
    linear = lambda p, z: (z @ p)[:, None]
    np.testing.assert_allclose(agop(linear, w, x), jnp.outer(w, w), rtol=1e-6)
    # f = (a.x)^2 / 2: grad = (a.x) a, AGOP = mean((a.x)^2) a a^T
    quad = lambda p, z: 0.5 * (z @ p)[:, None] ** 2
    expected = jnp.mean((x @ w) ** 2) * jnp.outer(w, w)
    np.testing.assert_allclose(agop(quad, w, x), expected, rtol=1e-5)


def test_input_gradients_of_network_match_finite_differences():
    apply_fn = MLPSpec((3, 16, 2), "tanh", "ntk")
    params = apply_fn.init_ensemble(jax.random.split(jax.random.key(1), 1))
    p = jax.tree.map(lambda a: a[0], params)
    x = jax.random.normal(jax.random.key(2), (5, 3))
    jac = input_gradients(apply_fn, p, x)
    assert jac.shape == (5, 2, 3)
    eps = 1e-3
    e0 = jnp.zeros(3).at[0].set(eps)
    fd = (apply_fn(p, x + e0) - apply_fn(p, x - e0)) / (2 * eps)
    np.testing.assert_allclose(jac[:, :, 0], fd, atol=2e-3)
    # multi-output AGOP sums over outputs
    g = agop_from_jacobians(jac)
    np.testing.assert_allclose(g, sum(agop_from_jacobians(jac[:, k]) for k in range(2)), rtol=1e-5)


def test_alignment_properties():
    a = jnp.diag(jnp.array([1.0, 1.0, 0.0]))
    assert float(agop_alignment(a, 3 * a)) == pytest.approx(1.0)
    assert float(agop_alignment(a, jnp.diag(jnp.array([0.0, 0.0, 1.0])))) == pytest.approx(0.0)
    assert float(agop_alignment(jnp.eye(3), a)) == pytest.approx(np.sqrt(2 / 3))
    with pytest.raises(ValueError, match="square"):
        agop_alignment(jnp.eye(3), jnp.eye(2))
    with pytest.raises(ValueError, match=r"expected \(N, d\)"):
        input_gradients(lambda p, z: z, None, jnp.ones(3))


def test_target_agop_numeric():
    g = target_agop("x1x2", 5)
    np.testing.assert_array_equal(g, np.diag([1.0, 1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(target_agop("hermite2", 3), np.diag([2.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="allowed"):
        target_agop("x1x3", 3)


def test_alignment_split_of_a_network():
    from overparam.experiments.agop import agop_and_mean_gradient, alignment_split
    m = MLPSpec((5, 32, 1), "relu", "ntk")
    p = m.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (200, 5))
    g, g_bar = agop_and_mean_gradient(m, p, x)
    jac = input_gradients(m, p, x)[:, 0, :]
    np.testing.assert_allclose(g_bar[0], jac.mean(0), rtol=1e-5)
    centered = jac - jac.mean(0)
    target = jnp.diag(jnp.array([1.0, 1.0, 0, 0, 0]))
    parts = alignment_split(g, g_bar, target)
    assert float(parts["align_centered"]) == pytest.approx(float(agop_alignment(centered.T @ centered / 200, target)), rel=1e-4)
    assert float(parts["align"]) == pytest.approx(float(agop_alignment(g, target)), rel=1e-6)
    assert 0 < float(parts["mean_share"]) < 1
