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
