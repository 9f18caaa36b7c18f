"""Tests of overparam.models: each parameterization against a hand-written forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from overparam.models import as_function, flatten_params, MLP, MLPSpec, param_count

from _support import normal

WIDTHS = (3, 7, 5, 2)


def reference_forward(layers, x, parameterization, sigma_w, sigma_b, activation):
    """The module docstring's formulas, written out with numpy on the raw (w, b) arrays."""
    a = np.asarray(x, np.float64)
    for l, (w, b) in enumerate(layers):
        n_in, last = w.shape[0], l == len(layers) - 1
        if parameterization == "standard":
            h = a @ w + b
        else:
            fan = n_in if (parameterization == "mean_field" and last) else np.sqrt(n_in)
            h = sigma_w * a @ w / fan + sigma_b * b
        a = h if last else activation(h)
    return a


def raw_layers(model):
    return [(np.asarray(layer.w[...], np.float64), np.asarray(layer.b[...], np.float64)) for layer in model.layers]


@pytest.mark.parametrize("parameterization", ["ntk", "standard", "mean_field"])
@pytest.mark.parametrize(
    "activation, numpy_fn",
    [("relu", lambda h: np.maximum(h, 0)), ("tanh", np.tanh), ("quadratic", lambda h: h**2), ("linear", lambda h: h)],
)
def test_forward_matches_formulas(parameterization, activation, numpy_fn):
    model = MLPSpec(WIDTHS, activation, parameterization, sigma_w=1.3, sigma_b=0.4).module(0)
    x = normal((6, 3))
    expected = reference_forward(raw_layers(model), x, parameterization, 1.3, 0.4, numpy_fn)
    np.testing.assert_allclose(model(x), expected, rtol=2e-5, atol=2e-5)


def test_erf_and_callable_activation():
    from scipy.special import erf

    x = normal((4, 3))
    for activation, numpy_fn in [("erf", erf), (jnp.sin, np.sin)]:
        model = MLPSpec(WIDTHS, activation).module(2)
        expected = reference_forward(raw_layers(model), x, "ntk", 1.0, 0.0, numpy_fn)
        np.testing.assert_allclose(model(x), expected, rtol=2e-5, atol=2e-5)


def test_standard_init_scale():
    # The standard parameterization puts sigma_w / sqrt(n_in) into the weights themselves.
    model = MLPSpec((400, 300, 1), "relu", "standard", sigma_w=2.0, sigma_b=0.5).module(0)
    assert np.std(model.layers[0].w[...]) == pytest.approx(2.0 / np.sqrt(400), rel=0.02)
    assert np.std(model.layers[0].b[...]) == pytest.approx(0.5, rel=0.15)
    ntk = MLPSpec((400, 300, 1), "relu", "ntk", sigma_w=2.0).module(0)
    assert np.std(ntk.layers[0].w[...]) == pytest.approx(1.0, rel=0.02)


def test_linear_network_output_variance():
    # For a linear NTK-parameterized net, Var f(x) = sigma_w^(2L) ||x||^2 / d exactly.
    keys = jax.random.split(jax.random.key(0), 4000)
    apply_fn = MLPSpec((4, 16, 1), "linear", "ntk", sigma_w=1.5)
    params = apply_fn.init_ensemble(keys)
    x = jnp.array([[1.0, -2.0, 0.5, 3.0]])
    out = jax.vmap(apply_fn, (0, None))(params, x)[:, 0, 0]
    expected = 1.5**4 * float(jnp.sum(x**2)) / 4
    assert float(jnp.var(out)) == pytest.approx(expected, rel=0.1)


def test_two_layer_formula_and_count():
    d, m = 5, 11
    model = MLPSpec.two_layer(d, m, "relu").module(3)
    apply_fn, params = as_function(model)
    assert param_count(params) == m * (d + 1)
    w, v = model.layers[0].w[...], model.layers[1].w[...]
    x = normal((3, d))
    expected = np.maximum(np.asarray(x) @ np.asarray(w) / np.sqrt(d), 0) @ np.asarray(v) / np.sqrt(m)
    np.testing.assert_allclose(apply_fn(params, x), expected, rtol=1e-5, atol=1e-6)


def test_as_function_and_param_count():
    model = MLPSpec(WIDTHS, "tanh").module(0)
    apply_fn, params = as_function(model)
    x = normal((6, 3))
    np.testing.assert_array_equal(apply_fn(params, x), model(x))
    assert param_count(params) == sum(a * b + b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
    # Pure: other params give another function; the model itself is untouched.
    doubled = jax.tree.map(lambda p: 2 * p, params)
    assert not np.allclose(apply_fn(doubled, x), model(x))
    grads = jax.grad(lambda p: jnp.sum(apply_fn(p, x)))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_flatten_roundtrip():
    _, params = as_function(MLPSpec(WIDTHS).module(0))
    vec, unflatten = flatten_params(params)
    assert vec.shape == (param_count(params),)
    for a, b in zip(jax.tree.leaves(unflatten(vec)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_ensemble_matches_single_models():
    keys = jax.random.split(jax.random.key(7), 3)
    apply_fn = MLPSpec(WIDTHS, "erf", "standard", 1.1, 0.2)
    params = apply_fn.init_ensemble(keys)
    x = normal((4, 3))
    outs = jax.vmap(apply_fn, (0, None))(params, x)
    for s in range(3):
        model = MLPSpec(WIDTHS, "erf", "standard", 1.1, 0.2).module(keys[s])
        np.testing.assert_allclose(outs[s], model(x), rtol=1e-6, atol=1e-6)
        single = MLPSpec(WIDTHS, "erf", "standard", 1.1, 0.2).init(keys[s])
        np.testing.assert_allclose(apply_fn(single, x), model(x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(outs[0], outs[1])


def test_no_bias():
    model = MLPSpec(WIDTHS, use_bias=False).module(0)
    _, params = as_function(model)
    assert param_count(params) == sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(activation="gelu"), ["activation", "gelu", "relu"]),
        (dict(parameterization="muP"), ["parameterization", "muP", "mean_field"]),
        (dict(widths=(3,)), ["widths", "(3,)"]),
    ],
)
def test_bad_arguments(kwargs, words):
    args = dict(widths=WIDTHS) | kwargs
    with pytest.raises(ValueError) as info:
        MLPSpec(**args).module(0)
    assert all(w in str(info.value) for w in words)


def test_bad_input_shape():
    model = MLPSpec(WIDTHS).module(0)
    with pytest.raises(ValueError, match=r"\(6, 4\).*\(N, 3\)"):
        model(jnp.ones((6, 4)))


def test_spec_is_a_value_and_its_pure_forward_is_the_module():
    a, b = MLPSpec(WIDTHS, "tanh", "standard", 1.2, 0.3), MLPSpec(list(WIDTHS), "tanh", "standard", 1.2, 0.3)
    assert a == b and hash(a) == hash(b) and a != a.replace(sigma_w=1.0)
    model = a.module(jax.random.key(4))
    params = a.init(jax.random.key(4))
    x = normal((5, 3))
    np.testing.assert_array_equal(a(params, x), model(x))
    acts, pre = a.trace(params, x)
    assert [t.shape for t in acts] == [(5, 3), (5, 7), (5, 5)] and [t.shape for t in pre] == [(5, 7), (5, 5), (5, 2)]
    assert a.num_params == param_count(params) and a.num_layers == 3 and (a.d_in, a.d_out) == (3, 2)
    # Equal specs share one compilation when passed as a static argument.
    run = jax.jit(lambda spec, p, x: spec(p, x), static_argnums=0)
    run(a, params, x)
    run(b, params, x)
    assert run._cache_size() == 1


@pytest.mark.parametrize("normalization", ["bn_last", "center_last", "bn_middle", "ln_middle"])
def test_normalizations(normalization):
    spec = MLPSpec(WIDTHS, "relu", "standard", use_bias=False, normalization=normalization)
    params = spec.init(jax.random.key(0))
    x = normal((16, 3))
    out = np.asarray(spec(params, x))
    plain = np.asarray(spec.replace(normalization="none")(params, x))
    if normalization in ("bn_last", "center_last"):
        np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
        expected = plain - plain.mean(0)
        if normalization == "bn_last":
            expected = expected / np.sqrt((expected**2).mean(0) + 1e-5)
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    else:  # hidden normalization changes the function itself
        assert not np.allclose(out, plain)
        hidden = np.asarray(spec.trace(params, x)[0][1])  # the activated, normalized first hidden layer
        h = np.asarray(spec.trace(params, x)[1][0])
        axis = 0 if normalization == "bn_middle" else 1
        z = (h - h.mean(axis, keepdims=True)) / np.sqrt(((h - h.mean(axis, keepdims=True)) ** 2).mean(axis, keepdims=True) + 1e-5)
        np.testing.assert_allclose(hidden, np.maximum(z, 0), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="normalization='batch'"):
        MLPSpec(WIDTHS, normalization="batch")
