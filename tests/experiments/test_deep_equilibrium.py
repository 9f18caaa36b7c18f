"""The finite-width DEQ: its iteration, its per-layer kernels and their infinite-width limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from overparam.experiments.deep_equilibrium import DEQ, deq_iterate, deq_kernels_monte_carlo
from overparam.kernels.analytic import deq_nngp_layers


def test_iterate_matches_an_explicit_loop():
    model = DEQ(3, 16, "relu", 0.8, 1.1, 0.2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 3))
    z = jnp.zeros((4, 16))
    for _ in range(5):
        z = jax.nn.relu(0.8 * z @ model.w[...] / 4 + 1.1 * x @ model.u[...] / np.sqrt(3) + 0.2 * model.b[...])
    z5, _ = model.iterate(x, 5)
    np.testing.assert_allclose(z5, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model(x, 5), z @ model.v[...] / 4, rtol=1e-5, atol=1e-6)
    _, grams = deq_iterate(model.w[...], model.u[...], model.b[...], x, 5, 0.8, 1.1, 0.2, "relu",
                           record=lambda h, z_new, z_old: h @ h.T)
    assert grams.shape == (5, 4, 4)


def test_wide_deq_kernels_match_the_layerwise_nngp():
    # per network the Gram of n iid-ish units fluctuates by O(1/sqrt(n)); at n = 2048 with 2 seeds
    # averaged the relative error is ~0.03 (constant ~1.5); allow 5/sqrt(n) = 0.11 at every layer
    x = jax.random.normal(jax.random.key(2), (5, 3))
    grams, residuals = deq_kernels_monte_carlo(jax.random.key(3), x, 2048, 12, 1.0, 1.0, 0.3, "relu", 2)
    assert grams.shape == (2, 12, 5, 5) and residuals.shape == (2, 12)
    exact = deq_nngp_layers(x, None, 12, 1.0, 1.0, 0.3)
    err = jnp.linalg.norm(grams.mean(0) - exact, axis=(1, 2)) / jnp.linalg.norm(exact, axis=(1, 2))
    assert float(err.max()) < 5 / np.sqrt(2048)
    # the iteration converges, about a factor sigma_w sqrt(E phi'^2) = 1/sqrt(2) per layer
    assert float(residuals[:, -1].max()) < 0.1 * float(residuals[:, 1].min())


def test_bad_arguments_raise():
    model = DEQ(3, 8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="expected"):
        model(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="num_iters"):
        model.iterate(jnp.ones((2, 3)), 0)
    with pytest.raises(ValueError, match="width"):
        DEQ(3, 0, rngs=nnx.Rngs(0))
