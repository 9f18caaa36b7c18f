"""Fisher information via the dual Gram; normalization layers; the width scaling at small sizes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from overparam.experiments import fisher
from overparam.models import NORMALIZATIONS, batch_standardize, layer_standardize, as_function, MLPSpec
from overparam.kernels.empirical import ntk_layerwise

NET = (5, 7, 6, 2)


@pytest.fixture
def setup():
    params = MLPSpec(NET, "relu", "standard", math.sqrt(2.0), 0.0, use_bias=False).init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, NET[0]))
    return params, x


def test_plain_network_is_the_library_mlp(setup):
    params, x = setup
    model = MLPSpec(NET, "relu", "standard", math.sqrt(2.0), 0.0, use_bias=False).module(0)
    apply_fn, p = as_function(model)
    a = np.asarray(x)
    for l, layer in enumerate(model.layers):  # standard parameterization: h = a @ w, ReLU between layers
        a = a @ np.asarray(layer.w[...])
        a = a if l == len(model.layers) - 1 else np.maximum(a, 0)
    np.testing.assert_allclose(fisher.normalized_mlp(NET, "none")(p, x), a, rtol=1e-5, atol=1e-5)
    # and the Gram is the library's NTK (trace-averaged over the K outputs there) / N
    gram = fisher.fisher_gram(fisher.normalized_mlp(NET, "none"), p, x)
    k = NET[-1]
    blocks = gram.reshape(6, k, 6, k)
    avg = jnp.einsum("nkmk->nm", blocks) / k
    np.testing.assert_allclose(avg * 6, ntk_layerwise(model.spec, nnx.state(model, nnx.Param), x), rtol=1e-4, atol=1e-4)


def test_normalizations_statistics(setup):
    params, x = setup
    h = jax.random.normal(jax.random.key(2), (8, 5)) * 3 + 1
    b = batch_standardize(h)
    np.testing.assert_allclose(b.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose((b**2).mean(0), 1, atol=1e-4)
    ln = layer_standardize(h)
    np.testing.assert_allclose(ln.mean(1), 0, atol=1e-5)
    out = fisher.normalized_mlp(NET, "bn_last")(params, x)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
    out = fisher.normalized_mlp(NET, "center_last")(params, x)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_gram_paths_agree(setup, norm):
    """fisher_setup's shortcut (per-example Jacobian + output map) equals the whole-batch Jacobian."""
    params, x = setup
    apply_fn, per_example, output_map = fisher.fisher_setup(NET, norm)
    fast = fisher.fisher_gram(apply_fn, params, x, per_example, output_map)
    reference = fisher.fisher_gram(fisher.normalized_mlp(NET, norm), params, x, per_example=False)
    np.testing.assert_allclose(fast, reference, rtol=1e-4, atol=1e-5)


def test_per_example_is_wrong_for_batch_norm(setup):
    """Guard: per-example Jacobians of a batch-coupled network are not its Jacobian."""
    params, x = setup
    apply_fn = fisher.normalized_mlp(NET, "bn_middle")
    coupled = fisher.fisher_gram(apply_fn, params, x, per_example=False)
    alone = fisher.fisher_gram(apply_fn, params, x, per_example=True)  # a batch of one: zero variance
    assert np.abs(coupled - alone).max() > 0.1 * np.abs(coupled).max()


def test_dual_gram_spectrum_equals_fisher(setup):
    """lambda_max and the mean eigenvalue from the (NK, NK) Gram equal those of the (P, P) Fisher."""
    params, x = setup
    with jax.enable_x64(True):  # the P x P eigendecomposition is compared to 1e-10
        params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
        x = x.astype(jnp.float64)
        apply_fn = fisher.normalized_mlp(NET, "bn_last")
        vec, unflatten = ravel_pytree(params)
        jac = jax.jacrev(lambda v: apply_fn(unflatten(v), x).reshape(-1))(vec)
        fim = jac.T @ jac / x.shape[0]
        top, mean = fisher.fisher_eig_stats(apply_fn, params, x, per_example=False)
        eig = np.linalg.eigvalsh(np.asarray(fim))
        np.testing.assert_allclose(top, eig[-1], rtol=1e-10)
        np.testing.assert_allclose(mean, eig.mean(), rtol=1e-10)


def test_centering_removes_the_constant_mode(setup):
    params, x = setup
    apply_fn, per_example, output_map = fisher.fisher_setup(NET[:-1] + (1,), "center_last")
    p1 = MLPSpec(NET[:-1] + (1,), "relu", "standard", math.sqrt(2.0), 0.0, use_bias=False).init(jax.random.key(0))
    gram = fisher.fisher_gram(apply_fn, p1, x, per_example, output_map)
    np.testing.assert_allclose(gram @ jnp.ones(6), 0, atol=1e-4)
    plain = fisher.fisher_gram(fisher.normalized_mlp(NET[:-1] + (1,), "none"), p1, x)
    center = jnp.eye(6) - jnp.ones((6, 6)) / 6
    np.testing.assert_allclose(gram, center @ plain @ center, rtol=1e-4, atol=1e-4)


def test_width_sweep_shapes_and_pathological_sharpness():
    """Small but telling: lambda_max grows with width without normalization, much less with BN last."""
    key = jax.random.key(0)
    widths = [16, 64]
    top, mean = fisher.fisher_width_sweep(key, widths, "none", num_seeds=2, sample_ratio=0.5)
    assert top.shape == (2, 2) and mean.shape == (2, 2)
    assert top[1].mean() / top[0].mean() > 2.5      # ~ 4 (slope 1) minus finite-size offset
    assert mean[1].mean() < mean[0].mean()          # mean eigenvalue ~ 1/M
    top_bn, _ = fisher.fisher_width_sweep(key, widths, "bn_last", num_seeds=2, sample_ratio=0.5)
    assert top_bn[1].mean() / top_bn[0].mean() < 2.0


def test_bad_arguments(setup):
    params, x = setup
    with pytest.raises(ValueError, match="norm"):
        fisher.normalized_mlp(NET, "group_norm")
    with pytest.raises(ValueError, match="depth"):
        fisher.fisher_width_sweep(jax.random.key(0), [8], "none", depth=1)
    with pytest.raises(ValueError, match="expected"):
        fisher.normalized_mlp(NET, "none")(params, x[:, :3])


def test_width_stats_bulk_centring_and_parameterizations():
    """bulk = (tr G - lambda_max)/(N - 1); with d = M the NTK-parameterized Gram is the standard one times 2/M."""
    widths = [8, 16]
    std = fisher.fisher_width_stats(jax.random.key(0), widths, "none", num_seeds=2, num_examples=5)
    ntk = fisher.fisher_width_stats(jax.random.key(0), widths, "none", num_seeds=2, num_examples=5,
                                    parameterization="ntk")
    assert std["lam_max"].shape == (2, 2) and list(std["num_examples"]) == [5, 5]
    np.testing.assert_allclose(std["bulk"], (std["trace"] - std["lam_max"]) / 4, rtol=1e-6)
    for k in ("lam_max", "bulk", "lam_max_centered"):
        np.testing.assert_allclose(ntk[k] * np.array(widths)[:, None] / 2, std[k], rtol=1e-4)
    assert np.all(std["lam_max_centered"] < std["lam_max"])
    centred = fisher.fisher_width_stats(jax.random.key(0), widths, "center_last", num_seeds=2, num_examples=5)
    np.testing.assert_allclose(centred["lam_max"], std["lam_max_centered"], rtol=1e-4)
    with pytest.raises(ValueError, match="num_examples"):
        fisher.fisher_width_stats(jax.random.key(0), widths, "none", num_examples=1)


def test_fisher_predictions():
    mom = fisher.relu_fisher_moments(3, 1.0)
    pred = fisher.fisher_predictions(mom, np.array([64.0]), 16, "standard")
    np.testing.assert_allclose(pred["lam_max"], 64 * (3 + 15 * mom["kappa2"]) / 16)
    np.testing.assert_allclose(pred["centered"], pred["bulk"])                    # d -> oo
    ntk = fisher.fisher_predictions(mom, np.array([64.0]), 16, "ntk", input_dim=64)
    assert ntk["centered"] > ntk["bulk"]
    np.testing.assert_allclose(ntk["lam_max"] / ntk["bulk"], pred["lam_max"] / pred["bulk"])  # same outlier/bulk
    with pytest.raises(ValueError, match="parameterization"):
        fisher.fisher_predictions(mom, 8, 4, "mean_field")
    with pytest.raises(ValueError, match="depth"):
        fisher.relu_fisher_moments(1)
