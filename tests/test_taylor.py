"""Tests of overparam.taylor against explicit gradients and Hessians of the flattened network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from overparam.models import as_function, flatten_params, MLPSpec
from overparam.taylor import linearize, quadratize

from _support import normal


# float64 everywhere: Derivative identities are checked to ~1e-10; float32 rounding (~1e-6) would hide errors.
pytestmark = pytest.mark.usefixtures("x64")


def setup(activation="tanh", seed=0):
    model = MLPSpec((3, 6, 5, 1), activation, "ntk", sigma_b=0.3).module(seed)
    apply_fn, params0 = as_function(model)
    vec0, unflatten = flatten_params(params0)
    x = normal((4, 3), 1)
    direction = normal(vec0.shape, 2)
    return apply_fn, params0, vec0, unflatten, x, direction


def test_equal_to_network_at_params0():
    apply_fn, params0, _, _, x, _ = setup()
    evaluate = jax.jit(lambda p, x: [fn(p, x) for fn in (apply_fn, linearize(apply_fn, p), quadratize(apply_fn, p))])
    network, lin, quad = evaluate(params0, x)
    np.testing.assert_allclose(lin, network, atol=1e-14)
    np.testing.assert_allclose(quad, network, atol=1e-14)


def test_against_explicit_gradient_and_hessian():
    apply_fn, params0, vec0, unflatten, x, direction = setup()
    f_lin, f_quad = linearize(apply_fn, params0), quadratize(apply_fn, params0)
    dp = 0.3 * direction
    params = unflatten(vec0 + dp)

    @jax.jit
    def explicit_taylor(xn):
        scalar = lambda v: apply_fn(unflatten(v), xn[None])[0, 0]
        grad, hess = jax.grad(scalar)(vec0), jax.hessian(scalar)(vec0)
        first = scalar(vec0) + grad @ dp
        return first, first + 0.5 * dp @ hess @ dp

    expected_lin, expected_quad = jax.vmap(explicit_taylor)(x)
    np.testing.assert_allclose(jax.jit(f_lin)(params, x)[:, 0], expected_lin, rtol=1e-10)
    np.testing.assert_allclose(jax.jit(f_quad)(params, x)[:, 0], expected_quad, rtol=1e-10)
    # The point is far enough that the three models differ.
    assert not np.allclose(f_lin(params, x), apply_fn(params, x), atol=1e-4)


def test_derivatives_match_network_at_params0():
    apply_fn, params0, vec0, unflatten, x, direction = setup("erf")

    @jax.jit
    def derivatives():
        # First and second derivative in t of fn(params0 + t v) at t = 0, for the three models.
        out = []
        for fn in (apply_fn, linearize(apply_fn, params0), quadratize(apply_fn, params0)):
            g = lambda t: fn(unflatten(vec0 + t * direction), x)
            first = lambda t: jax.jvp(g, (t,), (1.0,))[1]
            out.append((first(0.0), jax.jvp(first, (0.0,), (1.0,))[1]))
        return out

    network, lin, quad = derivatives()
    np.testing.assert_allclose(lin[0], network[0], rtol=1e-10)
    np.testing.assert_allclose(quad[0], network[0], rtol=1e-10)
    np.testing.assert_allclose(quad[1], network[1], rtol=1e-10)
    np.testing.assert_allclose(lin[1], 0.0, atol=1e-12)


def test_linear_model_is_affine_and_quadratic_model_is_quadratic():
    apply_fn, params0, vec0, unflatten, x, direction = setup()
    other = normal(vec0.shape, 5)
    f_lin, f_quad = jax.jit(linearize(apply_fn, params0)), jax.jit(quadratize(apply_fn, params0))
    at = lambda fn, v: fn(unflatten(vec0 + v), x)
    f0 = apply_fn(params0, x)
    combo = at(f_lin, 2.0 * direction - 3.0 * other) - f0
    np.testing.assert_allclose(combo, 2.0 * (at(f_lin, direction) - f0) - 3.0 * (at(f_lin, other) - f0), atol=1e-12)
    # g(t) = f_quad(params0 + t v) is a parabola: fit three points, predict a fourth.
    g = [at(f_quad, t * direction) for t in (0.0, 1.0, 2.0, 5.0)]
    a1 = (4 * g[1] - g[2] - 3 * g[0]) / 2
    a2 = (g[2] - 2 * g[1] + g[0]) / 2
    np.testing.assert_allclose(g[3], g[0] + 5 * a1 + 25 * a2, atol=1e-10)


def test_exact_for_models_of_that_order():
    # A two-layer linear network is bilinear (quadratic) in its parameters: f_quad == f everywhere.
    apply_fn, params0 = as_function(MLPSpec.two_layer(4, 6, "linear").module(0))
    vec0, unflatten = flatten_params(params0)
    params = unflatten(vec0 + normal(vec0.shape, 3))
    x = normal((5, 4), 1)
    f_lin = linearize(apply_fn, params0)

    @jax.jit
    def pairs(params, x):
        # The linearization of the linearization (around any point) is itself.
        return (quadratize(apply_fn, params0)(params, x), apply_fn(params, x)), (
            linearize(f_lin, params)(params0, x), f_lin(params0, x))

    for a, b in pairs(params, x):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_gradients_of_linear_model_are_frozen():
    apply_fn, params0, vec0, unflatten, x, direction = setup()
    f_lin = jax.jit(linearize(apply_fn, params0))
    grad_at = lambda fn, v: flatten_params(jax.jit(jax.grad(lambda p: jnp.sum(fn(p, x))))(unflatten(v)))[0]
    np.testing.assert_allclose(grad_at(f_lin, vec0 + direction), grad_at(apply_fn, vec0), rtol=1e-10)
