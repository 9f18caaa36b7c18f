"""The benchmark scripts' helpers: analytic FLOP counts (checked against XLA's own count), compile counting."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import (count_compilations, forward_flops, fraction_of_peak, gradient_flops, hvp_flops,  # noqa: E402
                    weight_count, xla_flops)
from hessian_bench import lanczos_flops  # noqa: E402
from ntk_bench import ntk_jacobian_flops, ntk_layerwise_flops, ntk_vjp_jvp_flops  # noqa: E402
from overparam.curvature import hvp  # noqa: E402
from overparam.models import as_function, MLPSpec, param_count  # noqa: E402
from overparam.kernels.empirical import ntk_jacobian, ntk_layerwise, ntk_vjp_jvp  # noqa: E402
from overparam.training import full_batch_loss  # noqa: E402
from peers_bench import parse_shape  # noqa: E402

WIDTHS, N = (16, 128, 128, 1), 32


@pytest.fixture(scope="module")
def net():
    model = MLPSpec(WIDTHS, "relu", "ntk", sigma_b=0.1).module(0)
    apply_fn, params = as_function(model)
    x = jax.random.normal(jax.random.key(1), (N, WIDTHS[0]))
    return model, apply_fn, params, x


def test_weight_count():
    assert weight_count((3, 4, 2)) == (3 * 4 + 4 * 2, 12)
    with pytest.raises(ValueError, match="widths"):
        weight_count((3,))


def _check(analytic, jitted, *args):
    measured = xla_flops(jitted, *args)
    if measured is None:
        pytest.skip("XLA cost analysis unavailable on this backend")
    # the analytic counts are matrix products only; XLA adds the elementwise ops (a few %)
    assert 0.9 * measured <= analytic <= 1.02 * measured, (analytic, measured)


def test_ntk_flop_counts_match_xla(net):
    model, apply_fn, params, x = net
    _check(ntk_layerwise_flops(WIDTHS, N), jax.jit(lambda p, x: ntk_layerwise(model.spec, p, x)), params, x)
    _check(ntk_jacobian_flops(WIDTHS, N, param_count(params)), jax.jit(lambda p, x: ntk_jacobian(apply_fn, p, x)),
           params, x)
    _check(ntk_vjp_jvp_flops(WIDTHS, N), jax.jit(lambda p, x: ntk_vjp_jvp(apply_fn, p, x)), params, x)


def test_training_and_curvature_flop_counts_match_xla(net):
    _, apply_fn, params, x = net
    loss = full_batch_loss(apply_fn, x, jnp.zeros((N, 1)))
    _check(forward_flops(WIDTHS, N), jax.jit(apply_fn), params, x)
    _check(gradient_flops(WIDTHS, N), jax.jit(jax.grad(loss)), params)
    # hvp_flops is for smooth activations (relu's phi'' = 0 lets XLA drop one product)
    apply_fn, params = as_function(MLPSpec(WIDTHS, "tanh", "ntk", sigma_b=0.1).module(0))
    loss = full_batch_loss(apply_fn, x, jnp.zeros((N, 1)))
    tangent = jax.tree.map(lambda a: 0.5 * a + 1.0, params)  # not params itself: XLA would share the products
    _check(hvp_flops(WIDTHS, N), jax.jit(lambda p, v: hvp(loss, p, v)), params, tangent)
    assert lanczos_flops(WIDTHS, N, 100, num_iters=10) == 10 * (hvp_flops(WIDTHS, N) + 8 * 11 * 100)


def test_fraction_of_peak():
    assert fraction_of_peak(2e9, 1.0, 4.0) == pytest.approx(0.5)
    assert fraction_of_peak(2e9, None, 4.0) is None


def test_count_compilations_sees_one_compile_per_shape():
    fn = jax.jit(lambda a, lr: a * lr)
    a4, a8 = jnp.ones(4), jnp.ones(8)
    lr1, lr2 = jnp.asarray(0.1), jnp.asarray(0.2)
    with count_compilations() as first:
        fn(a4, lr1).block_until_ready()
    with count_compilations() as again:
        fn(a4, lr2).block_until_ready()
    with count_compilations() as new_shape:
        fn(a8, lr1).block_until_ready()
    assert (first["n"], again["n"], new_shape["n"]) == (1, 0, 1)


def test_parse_shape():
    assert parse_shape("1024x256") == (1024, 256)
    with pytest.raises(Exception, match="WIDTHxN"):
        parse_shape("1024")
