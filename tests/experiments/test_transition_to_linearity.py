"""Chapter 1's sweeps: Hessian norm at initialization, and a network trained next to its linearization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.curvature import hessian_full
from overparam.experiments.transition_to_linearity import hessian_norm_at_init, train_vs_linear
from overparam.models import MLPSpec

from _support import normal


def test_hessian_norm_matches_the_dense_hessian():
    # Small enough for the dense Hessian; Lanczos with as many iterations as parameters is exact.
    widths, keys, xs = (3, 5, 1), jax.random.split(jax.random.key(0), 2), normal((2, 3))
    with jax.enable_x64(True):  # compare to ~1e-6, below float32 Lanczos noise
        norms = hessian_norm_at_init(widths, "tanh", keys, xs, num_iters=20)
        apply_fn = MLPSpec(widths, "tanh", "ntk", use_bias=False)
        params = apply_fn.init_ensemble(keys)
        for s in range(2):
            p = jax.tree.map(lambda a: a[s], params)
            for m in range(2):
                h = hessian_full(lambda q: apply_fn(q, xs[m:m + 1])[0, 0], p)
                assert float(norms[s, m]) == pytest.approx(float(jnp.max(jnp.abs(jnp.linalg.eigvalsh(h)))), rel=1e-6)
    assert norms.shape == (2, 2)


def test_wide_network_trains_like_its_linearization_and_narrow_does_not():
    x, x_te = normal((8, 4), 1), normal((5, 4), 2)
    y = jnp.sin(x[:, :1])
    keys = jax.random.split(jax.random.key(3), 2)
    gaps, changes = {}, {}
    for m in (8, 2048):
        r = train_vs_linear((4, m, 1), "tanh", keys, x, y, x_te, num_steps=200)
        assert r.f_net_test.shape == (2, 5) and r.lr.shape == (2,) and not bool(jnp.any(r.diverged))
        moved = jnp.linalg.norm(r.f_lin_test - r.f_init_test)
        gaps[m] = float(jnp.linalg.norm(r.f_net_test - r.f_lin_test) / moved)
        changes[m] = float(jnp.mean(r.ntk_change))
    assert gaps[2048] < 0.05 < gaps[8]          # the linear model is exact only as m -> infinity
    assert changes[2048] < changes[8] / 5       # the kernel moves O(1/sqrt m) or faster


def test_train_vs_linear_rejects_wrong_target_shape():
    with pytest.raises(ValueError, match="y_train has shape"):
        train_vs_linear((4, 8, 1), "tanh", jax.random.split(jax.random.key(0), 1), normal((8, 4)),
                        jnp.zeros(8), normal((2, 4)))


def test_frozen_pattern_network_equals_relu_at_init_and_is_bilinear():
    from overparam.experiments.transition_to_linearity import frozen_pattern_apply
    spec = MLPSpec((4, 16, 1), "relu", "ntk", use_bias=False)
    p0 = spec.init(0)
    gated = frozen_pattern_apply(spec, p0)
    x = normal((6, 4), 1)
    np.testing.assert_allclose(np.asarray(gated(p0, x)), np.asarray(spec(p0, x)), rtol=1e-6)
    # No unit crosses a kink: along any straight line in parameters the output is exactly quadratic.
    p1 = jax.tree.map(lambda a: a + 0.7 * jnp.ones_like(a), p0)
    line = [gated(jax.tree.map(lambda a, b: a + t * (b - a), p0, p1), x) for t in (0.0, 1.0, 2.0, 3.0)]
    third_difference = line[3] - 3 * line[2] + 3 * line[1] - line[0]
    assert float(jnp.max(jnp.abs(third_difference))) < 1e-3
    with pytest.raises(ValueError, match="two-layer"):
        frozen_pattern_apply(MLPSpec((4, 8, 8, 1), "relu", use_bias=False), None)


def test_linear_model_distance_matches_explicit_linear_gd():
    from overparam.experiments.transition_to_linearity import linear_model_distance
    with jax.enable_x64(True):
        jac = jnp.asarray(np.random.default_rng(0).normal(size=(6, 40)))
        residual = jnp.asarray(np.random.default_rng(1).normal(size=6))
        ntk = jac @ jac.T
        lr, steps, n = 0.4 * 2 * 6 / float(jnp.linalg.eigvalsh(ntk)[-1]), 50, 6
        theta, target = jnp.zeros(40), residual   # linear model f = J theta fitted to the residual
        for _ in range(steps):
            theta = theta - lr * jac.T @ (jac @ theta - target) / n
        assert float(linear_model_distance(ntk, residual, lr, steps)) == pytest.approx(float(jnp.linalg.norm(theta)),
                                                                                          rel=1e-8)


def test_report_measures_distance_and_kink_crossings():
    x, x_te = normal((8, 4), 1), normal((5, 4), 2)
    y = jnp.sin(x[:, :1])
    keys = jax.random.split(jax.random.key(3), 2)
    r = train_vs_linear((4, 256, 1), "relu", keys, x, y, x_te, num_steps=100)
    frozen = train_vs_linear((4, 256, 1), "relu", keys, x, y, x_te, num_steps=100, frozen_pattern=True)
    assert r.param_distance.shape == r.flips_per_input.shape == (2,)
    assert bool(jnp.all(r.flips_per_input >= 0)) and bool(jnp.all(r.flips_per_input < 256))
    # wide: the network's displacement is close to the linear model's
    np.testing.assert_allclose(np.asarray(r.param_distance), np.asarray(r.param_distance_linear), rtol=0.2)
    # identical at init, so the linear model is the same for both
    np.testing.assert_allclose(np.asarray(frozen.f_lin_test), np.asarray(r.f_lin_test), rtol=1e-5, atol=1e-6)


def test_skip_bottleneck_hessian_norm_matches_the_dense_hessian():
    from overparam.experiments.transition_to_linearity import (hessian_norm_skip_bottleneck, skip_bottleneck_init,
                                                               skip_bottleneck_net)
    keys, xs = jax.random.split(jax.random.key(4), 2), normal((2, 3), 5)
    with jax.enable_x64(True):
        norms = hessian_norm_skip_bottleneck(3, 4, 2, 48, keys, xs)   # 48 parameters: Lanczos is exact
        for s in range(2):
            p = jax.tree.map(lambda a: a.astype(jnp.float64), skip_bottleneck_init(keys[s], 3, 4, 2))
            assert skip_bottleneck_net(p, xs).shape == (2, 1)
            for i in range(2):
                h = hessian_full(lambda q: skip_bottleneck_net(q, xs[i:i + 1])[0, 0], p)
                assert float(norms[s, i]) == pytest.approx(float(jnp.max(jnp.abs(jnp.linalg.eigvalsh(h)))), rel=1e-6)


def test_nonlinear_output_keeps_an_order_one_hessian_and_still_trains():
    from overparam.experiments.transition_to_linearity import nonlinear_output_sweep
    x, xh = normal((8, 4), 1), normal((2, 4), 2)
    y = jnp.sin(x[:, :1])
    keys = jax.random.split(jax.random.key(5), 2)
    hess_narrow, _ = nonlinear_output_sweep((4, 64, 1), 10, 20, keys, x, y, xh)
    hess_wide, ratio = nonlinear_output_sweep((4, 4096, 1), 200, 20, keys, x, y, xh)
    assert hess_wide.shape == (2, 2) and ratio.shape == (2,)
    assert float(hess_wide.mean()) > 0.5 * float(hess_narrow.mean())   # no 1/sqrt(m) decay (that would be 1/8)
    assert float(ratio.max()) < 0.05


def test_batch_size_bounds_memory_without_changing_the_results():
    # batch_size runs the seeds in sequence and a seed's Lanczos runs / kernel columns a few at a time;
    # the numbers are those of the all-at-once vmap, to float32 rounding.
    from overparam.experiments.transition_to_linearity import hessian_norm_skip_bottleneck, nonlinear_output_sweep
    x, x_te, xh = normal((8, 4), 1), normal((5, 4), 2), normal((3, 4), 3)
    y = jnp.sin(x[:, :1])
    keys = jax.random.split(jax.random.key(6), 3)
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)  # noqa: E731
    for batch_size in (1, 2):
        close(hessian_norm_at_init((4, 16, 1), "tanh", keys, xh, num_iters=10, batch_size=batch_size),
              hessian_norm_at_init((4, 16, 1), "tanh", keys, xh, num_iters=10))
        close(hessian_norm_skip_bottleneck(4, 8, 2, 10, keys, xh, batch_size=batch_size),
              hessian_norm_skip_bottleneck(4, 8, 2, 10, keys, xh))
        jax.tree.map(close, nonlinear_output_sweep((4, 32, 1), 20, 10, keys, x, y, xh, batch_size=batch_size),
                     nonlinear_output_sweep((4, 32, 1), 20, 10, keys, x, y, xh))
        for frozen in (False, True):
            jax.tree.map(close, train_vs_linear((4, 32, 1), "relu", keys, x, y, x_te, num_steps=20,
                                                frozen_pattern=frozen, batch_size=batch_size),
                         train_vs_linear((4, 32, 1), "relu", keys, x, y, x_te, num_steps=20, frozen_pattern=frozen))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            hessian_norm_at_init((4, 16, 1), "tanh", keys, xh, batch_size=bad)
