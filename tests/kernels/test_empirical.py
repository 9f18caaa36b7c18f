"""Tests of overparam.kernels.empirical: three implementations against each other and a hand-written two-layer NTK."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from overparam.models import as_function, MLPSpec
from overparam.kernels.empirical import nngp_empirical, nngp_monte_carlo, ntk_jacobian, ntk_layerwise, ntk_vjp_jvp


# float64 everywhere: The implementations must agree to ~1e-10; in float32 their different summation orders would differ by ~1e-6 and hide real errors.
pytestmark = pytest.mark.usefixtures("x64")


def inputs(n1=5, n2=4, d=3):
    # numpy draws: no PRNG kernel to compile per shape.
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.normal(size=(n1, d))), jnp.asarray(rng.normal(size=(n2, d)))


def all_three(model, x1, x2):
    apply_fn, params = as_function(model)

    @jax.jit
    def kernels(params, x1, x2):
        return (
            ntk_jacobian(apply_fn, params, x1, x2),
            ntk_vjp_jvp(apply_fn, params, x1, x2),
            ntk_layerwise(model.spec, params, x1, x2),
        )

    return kernels(params, x1, x2)


CASES = [
    # (widths, activation, parameterization, sigma_b, use_bias). With the other tests below
    # (callable and quadratic activations) every parameterization, depths 1 to 3 hidden
    # layers, biases with and without effect, no biases, and 1 or 2 outputs are covered.
    ((3, 6, 1), "relu", "ntk", 0.0, True),
    ((3, 6, 5, 4, 2), "tanh", "standard", 0.3, True),
    ((3, 6, 5, 1), "erf", "mean_field", 0.2, False),
]


@pytest.mark.parametrize("widths, activation, parameterization, sigma_b, use_bias", CASES)
def test_three_implementations_agree(widths, activation, parameterization, sigma_b, use_bias):
    model = MLPSpec(widths, activation, parameterization, 1.4, sigma_b, use_bias=use_bias).module(0)
    jac, generic, layerwise = all_three(model, *inputs())
    assert jac.shape == (5, 4)
    scale = np.abs(jac).max()
    np.testing.assert_allclose(generic, jac, atol=1e-10 * scale)
    np.testing.assert_allclose(layerwise, jac, atol=1e-10 * scale)


def test_symmetric_psd_and_default_x2():
    model = MLPSpec((3, 8, 8, 1), jnp.sin, "ntk", sigma_b=1.0).module(3)
    apply_fn, params = as_function(model)
    x = inputs(7)[0]
    kernel, layerwise = jax.jit(lambda p: (ntk_vjp_jvp(apply_fn, p, x), ntk_layerwise(model.spec, p, x)))(params)
    np.testing.assert_allclose(kernel, kernel.T, atol=1e-12)
    assert np.linalg.eigvalsh(kernel).min() > -1e-10 * np.abs(kernel).max()
    np.testing.assert_allclose(layerwise, kernel, atol=1e-10)


def test_two_layer_closed_form():
    # Theta(x, x') = (1/m) sum_r [relu(w_r.x/sqrt d) relu(w_r.x'/sqrt d) + v_r^2 1[w_r.x>0] 1[w_r.x'>0] x.x'/d]
    d, m = 3, 9
    model = MLPSpec.two_layer(d, m, "relu").module(5)
    w, v = np.asarray(model.layers[0].w[...]), np.asarray(model.layers[1].w[...])[:, 0]
    x1, x2 = (np.asarray(x) for x in inputs(d=d))
    h1, h2 = x1 @ w / np.sqrt(d), x2 @ w / np.sqrt(d)
    expected = (np.maximum(h1, 0) @ np.maximum(h2, 0).T + ((h1 > 0) * v**2) @ (h2 > 0).T * (x1 @ x2.T) / d) / m
    for kernel in all_three(model, jnp.asarray(x1), jnp.asarray(x2)):
        np.testing.assert_allclose(kernel, expected, rtol=1e-10)


def test_per_layer_sum_trained_params_and_batches():
    model = MLPSpec((3, 6, 5, 2), "quadratic", "standard", sigma_b=0.1).module(6)
    apply_fn, params = as_function(model)
    moved = jax.tree.map(lambda p: p + 0.3, params)
    x1, x2 = inputs()

    @jax.jit
    def kernels(p):
        layers = ntk_layerwise(model.spec, p, x1, x2, per_layer=True)
        return layers, ntk_vjp_jvp(apply_fn, p, x1, x2, batch_size=3), ntk_layerwise(model.spec, nnx.state(model, nnx.Param), x1, x2)

    layers, batched, at_init = kernels(moved)
    assert layers.shape == (3, 5, 4)
    np.testing.assert_allclose(layers.sum(0), batched, atol=1e-10)
    # The kernel was evaluated at the moved params, not the model's own.
    assert not np.allclose(batched, at_init, atol=1e-3)


def test_nngp_linear_network():
    # A linear NTK-parameterized net has E[f(x) f(x')] = sigma_w^4 x.x'/d exactly.
    keys = jax.random.split(jax.random.key(0), 3000)
    apply_fn = MLPSpec((3, 8, 2), "linear", "ntk", sigma_w=1.2)
    params = apply_fn.init_ensemble(keys)
    x1, x2 = inputs()
    estimate = jax.jit(lambda p: nngp_monte_carlo(apply_fn, p, x1, x2))(params)
    np.testing.assert_allclose(estimate, 1.2**4 * (x1 @ x2.T) / 3, atol=0.1)


def test_nngp_empirical_formula_and_shapes():
    outputs = np.random.default_rng(0).normal(size=(4, 3, 2))
    expected = sum(outputs[s] @ outputs[s].T for s in range(4)) / 8
    np.testing.assert_allclose(nngp_empirical(outputs), expected, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(4, 3, 2\).*\(4, 3\)"):
        nngp_empirical(outputs, outputs[:, :, 0])
