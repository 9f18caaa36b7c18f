"""Tests of overparam.curvature against dense eigendecompositions and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from overparam.curvature import (
    flat_hvp,
    hessian_full,
    hessian_spectral_norm,
    hessian_top_eigs,
    hvp,
    lanczos_top_eigs,
    model_hessian_spectral_norm,
    model_output_fn,
    top_eigs_subspace,
)
from overparam.models import as_function, flatten_params, MLPSpec

from _support import normal


# Lanczos eigenvalues are compared with dense eigh to ~1e-8; float32 would allow only ~1e-4.
pytestmark = pytest.mark.usefixtures("x64")


def small_regression():
    model = MLPSpec((3, 7, 5, 1), "tanh", "ntk", sigma_b=0.3).module(0)
    apply_fn, params = as_function(model)
    x = normal((12, 3), 1)
    y = jnp.sin(x[:, :1])
    return apply_fn, params, (lambda p: 0.5 * jnp.mean((apply_fn(p, x) - y) ** 2)), x


def test_hvp_of_known_quadratic():
    a = normal((6, 6))
    a = a + a.T
    params = {"u": jnp.ones(4), "v": jnp.ones(2)}
    loss = lambda p: 0.5 * jnp.concatenate([p["u"], p["v"]]) @ a @ jnp.concatenate([p["u"], p["v"]])
    np.testing.assert_allclose(hessian_full(loss, params), a, atol=1e-12)
    v = {"u": jnp.arange(4.0), "v": jnp.array([1.0, -1.0])}
    out = hvp(loss, params, v)
    np.testing.assert_allclose(jnp.concatenate([out["u"], out["v"]]), a @ jnp.array([0, 1, 2, 3, 1, -1.0]), atol=1e-12)


def test_hvp_matches_full_hessian_and_lanczos_matches_eigh():
    _, params, loss, _ = small_regression()
    hess = hessian_full(loss, params)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)
    vec, unflatten = flatten_params(params)
    v = normal(vec.shape, 2)
    np.testing.assert_allclose(flatten_params(jax.jit(hvp, static_argnums=0)(loss, params, unflatten(v)))[0], hess @ v, atol=1e-12)

    dense = np.linalg.eigvalsh(np.asarray(hess))
    top, vecs = hessian_top_eigs(loss, params, 3, jax.random.key(3), num_iters=60)
    np.testing.assert_allclose(top, dense[::-1][:3], rtol=1e-8)
    np.testing.assert_allclose(hess @ vecs, vecs * top, atol=1e-6)
    # Same loss_fn and num_iters: reuses the compiled Lanczos run.
    norm = hessian_spectral_norm(loss, params, jax.random.key(4), num_iters=60)
    np.testing.assert_allclose(norm, np.abs(dense).max(), rtol=1e-8)


def test_lanczos_degenerate_spectrum_and_which():
    # Repeated eigenvalues make the Krylov space invariant early (breakdown); the restart
    # must still find every eigenvalue, with the right multiplicity.
    eigs = jnp.array([5.0, 5.0, 5.0, 2.0, -7.0, -7.0, 0.0, 1.0])
    q = jnp.asarray(np.linalg.qr(np.asarray(normal((8, 8))))[0])
    a = q @ jnp.diag(eigs) @ q.T
    matvec = lambda v: a @ v
    values, _ = lanczos_top_eigs(matvec, 8, 8, jax.random.key(1), num_iters=8)
    np.testing.assert_allclose(values, jnp.sort(eigs)[::-1], atol=1e-10)
    smallest, _ = lanczos_top_eigs(matvec, 8, 2, jax.random.key(1), num_iters=8, which="smallest")
    np.testing.assert_allclose(smallest, [-7.0, -7.0], atol=1e-10)
    largest_abs, vecs = lanczos_top_eigs(matvec, 8, 1, jax.random.key(1), num_iters=8, which="magnitude")
    np.testing.assert_allclose(largest_abs, [-7.0], atol=1e-10)
    np.testing.assert_allclose(a @ vecs[:, 0], -7.0 * vecs[:, 0], atol=1e-9)


def test_output_hessian_of_two_layer_linear_network():
    # f = v^T W x / sqrt(d m) is bilinear: its Hessian is [[0, B], [B^T, 0]] with
    # B^T B = ||x||^2 / (d m) I, so ||d^2 f / d theta^2|| = ||x|| / sqrt(d m) exactly.
    d, m = 4, 30
    apply_fn, params = as_function(MLPSpec.two_layer(d, m, "linear").module(0))
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    norm = model_hessian_spectral_norm(apply_fn, params, x, jax.random.key(1), num_iters=20)
    np.testing.assert_allclose(norm, jnp.linalg.norm(x) / np.sqrt(d * m), rtol=1e-8)


def test_output_hessian_matches_dense():
    apply_fn, params, _, x = small_regression()
    dense = np.linalg.eigvalsh(np.asarray(hessian_full(model_output_fn(apply_fn, x[0]), params)))
    norm = model_hessian_spectral_norm(apply_fn, params, x[0], jax.random.key(1), num_iters=60)
    np.testing.assert_allclose(norm, np.abs(dense).max(), rtol=1e-8)


def test_errors():
    _, params, loss, x = small_regression()
    with pytest.raises(ValueError, match="max_params=10.*Lanczos"):
        hessian_full(loss, params, max_params=10)
    matvec, dim = flat_hvp(loss, params)
    with pytest.raises(ValueError, match="num_iters"):
        lanczos_top_eigs(matvec, dim, 5, jax.random.key(0), num_iters=3)
    with pytest.raises(ValueError, match="which"):
        lanczos_top_eigs(matvec, dim, 1, jax.random.key(0), which="biggest")
    with pytest.raises(ValueError, match=r"\(12, 3\)"):
        model_output_fn(lambda p, x: x, x)


def test_top_eigs_subspace():
    a = jax.random.normal(jax.random.key(0), (30, 30))
    k = a @ a.T / 30 + 3 * jnp.diag(jnp.arange(30.0) == 0) + 2 * jnp.diag(jnp.arange(30.0) == 1)
    top = jax.jit(top_eigs_subspace, static_argnums=2)
    evals, evecs = top(k, jax.random.normal(jax.random.key(1), (30, 2)), 60)
    ref_vals, ref_vecs = np.linalg.eigh(np.asarray(k))
    np.testing.assert_allclose(evals, ref_vals[::-1][:2], rtol=1e-4)
    assert abs(float(evecs[:, 0] @ ref_vecs[:, -1])) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match=r"v0 has shape \(29, 1\)"):
        top_eigs_subspace(k, jnp.ones((29, 1)))
    with pytest.raises(ValueError, match="square"):
        top_eigs_subspace(jnp.ones((3, 4)), jnp.ones((3, 1)))
