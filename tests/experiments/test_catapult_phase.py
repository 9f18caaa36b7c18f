"""The catapult module: uv model and exact map, phase classification, learning-rate sweeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import catapult_phase as C
from overparam.kernels.empirical import ntk_top_eigenvalue, ntk_vjp_jvp
from overparam.taylor import linearize
from overparam.training import max_stable_lr


def test_uv_apply_and_kernel_shapes_and_errors():
    p = C.uv_init(jax.random.key(0), 5)
    assert p["u"].shape == (5,) and p["v"].shape == (5,)
    x = jnp.array([[1.0], [2.0]])
    f = C.uv_apply(p, x)
    assert f.shape == (2, 1)
    np.testing.assert_allclose(f[1, 0], 2 * f[0, 0], rtol=1e-6)
    with pytest.raises(ValueError, match="x has shape"):
        C.uv_apply(p, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="m=0"):
        C.uv_init(jax.random.key(0), 0)
    # the closed-form kernel is the empirical one of the library (one example)
    x1 = jnp.array([[1.3]])
    assert float(C.uv_kernel(p, x1)) == pytest.approx(float(ntk_top_eigenvalue(C.uv_apply, p, x1)), rel=1e-5)


def test_uv_map_run_matches_gd_on_the_parameters():
    # float32 (train_gd): through a catapult (a0 = 3) rounding differences grow, so 40 steps, rtol 1e-3
    m, xv, yv, a0 = 32, 1.0, 1.0, 3.0
    p = C.uv_init(jax.random.key(1), m)
    x, y = jnp.array([[xv]]), jnp.array([[yv]])
    lam0 = C.uv_kernel(p, x)
    r0 = C.uv_apply(p, x)[0, 0] - yv
    losses, lams = C.uv_map_run(r0, lam0, a0 / lam0, xv, yv, float(m), 40)
    sweep = C.gd_lr_sweep(C.uv_apply, p, x, y, jnp.array([a0 / lam0]), 40, kernel_every=1)
    np.testing.assert_allclose(sweep.losses[0], losses, rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(sweep.kernels[0], lams[:-1], rtol=1e-3)
    assert sweep.phases()[0] == C.CATAPULT
    assert np.max(losses) > 2 * losses[0]
    assert a0 / lam0 * sweep.kernel_final[0] < 2.0


def test_uv_map_run_freezes_on_divergence():
    losses, lams = C.uv_map_run(2.0, 2.0, 3.0, 1.0, 1.0, 10.0, 200)  # a0 = 6: diverges
    assert losses.shape == (201,) and lams.shape == (201,)
    assert np.isinf(losses[-1]) and np.isnan(lams[-1])
    assert C.classify_losses(losses) == C.DIVERGED


def test_classify_phase_cases():
    t = jnp.arange(20.0)
    mono = jnp.exp(-t)
    cat = jnp.exp(-t) + 5 * jnp.exp(-((t - 5) ** 2))
    up = 1 + t
    nan = mono.at[3].set(jnp.nan)
    codes = C.classify_losses(jnp.stack([mono, cat, up, nan]))
    np.testing.assert_array_equal(codes, [C.MONOTONE, C.CATAPULT, C.DIVERGED, C.DIVERGED])
    # a 5% bump is below the default rise of 10%
    assert C.classify_losses(mono.at[1].set(1.05)) == C.MONOTONE
    assert C.classify_losses(mono.at[1].set(1.05), rise=1.01) == C.CATAPULT
    with pytest.raises(ValueError, match="rise"):
        C.classify_phase(1.0, 1.0, 1.0, rise=0.5)


N_SEEDS = 2000  # shared by the next two tests so that they share one compilation of the sampler


def test_uv_initial_state_has_the_distribution_of_uv_init():
    m = 6
    r0, lam0, _ = C.uv_initial_state(jax.random.key(2), [m], N_SEEDS, x=1.0, y=0.0)
    r0, lam0 = np.asarray(r0[0]), np.asarray(lam0[0])
    params = jax.jit(jax.vmap(lambda k: C.uv_init(k, m)))(jax.random.split(jax.random.key(3), N_SEEDS))
    x1 = jnp.ones((1, 1))
    r_ref = np.asarray(jax.vmap(lambda p: C.uv_apply(p, x1)[0, 0])(params))
    lam_ref = np.asarray(jax.vmap(lambda p: C.uv_kernel(p, x1))(params))
    # f0 = u.v/sqrt(m): mean 0, var 1; lambda0 = (|u|^2 + |v|^2)/m: mean 2, var 4/m. Means: standard
    # error of the difference sqrt(2 var/n), allow 5 of them; variances: relative standard error
    # sqrt((2 + kurtosis excess)/n) < 0.05, allow 4 of them (0.2).
    for a, b, mean, var in ((r0, r_ref, 0.0, 1.0), (lam0, lam_ref, 2.0, 4.0 / m)):
        assert abs(a.mean() - b.mean()) < 5 * np.sqrt(2 * var / N_SEEDS)
        assert abs(a.mean() - mean) < 5 * np.sqrt(var / N_SEEDS)
        assert a.var() == pytest.approx(var, rel=0.2) and b.var() == pytest.approx(var, rel=0.2)
    U1, V1, P1 = C.uv_init_invariants(jax.random.key(3), 1)  # m = 1: u, v parallel
    assert float(P1**2) == pytest.approx(float(U1 * V1), rel=1e-5)


def test_uv_phase_sweep_recovers_the_three_regimes_at_large_width():
    a0s = np.array([1.5, 3.0, 4.5])
    sw = C.uv_phase_sweep(jax.random.key(0), [2048], a0s, num_seeds=N_SEEDS, num_steps=400)
    assert sw.phases.shape == (1, N_SEEDS, 3)
    np.testing.assert_array_equal(sw.phases[0], np.tile([C.MONOTONE, C.CATAPULT, C.DIVERGED], (N_SEEDS, 1)))
    assert np.all(sw.final_a[0, :, 1] < 2.0)  # catapult ends below the stability edge
    assert np.all(sw.peak_ratio[0, :, 1] > 1.1)
    assert C.misclassified_fraction(a0s, sw.phases, window=(0.5, 1.5)) == 0.0


def test_misclassified_fraction_and_max_converging_multiple():
    a0s = np.array([1.7, 2.3, 3.7, 4.3])
    phases = np.array([[[0, 1, 1, 2], [1, 1, 1, 1]]])
    np.testing.assert_allclose(C.misclassified_fraction(a0s, phases), [2 / 8])
    with pytest.raises(ValueError, match="window"):
        C.misclassified_fraction(np.array([3.0]), phases[..., :1])
    cs = np.array([0.5, 1.5, 1.0, 2.0])
    assert C.max_converging_multiple(cs, np.array([0, 2, 1, 1])) == 1.0
    assert C.max_converging_multiple(cs, np.array([0, 1, 1, 1])) == 2.0
    assert np.isnan(C.max_converging_multiple(cs, np.array([2, 2, 2, 2])))


def test_linear_model_sweep_threshold_and_constant_kernel():
    key = jax.random.key(4)
    x = jax.random.normal(key, (6, 3))
    y = jnp.sin(x[:, :1])
    w0 = {"w": jax.random.normal(jax.random.fold_in(key, 1), (3, 8)), "v": jax.random.normal(key, (8, 1))}

    def net(p, x):
        return jnp.tanh(x @ p["w"] / jnp.sqrt(3.0)) @ p["v"] / jnp.sqrt(8.0)

    lin = linearize(net, w0)
    lam0 = float(ntk_top_eigenvalue(lin, w0, x))
    # the loss-normalized kernel is 2 / (the training module's stability threshold)
    assert 2 / lam0 == pytest.approx(float(max_stable_lr(ntk_vjp_jvp(net, w0, x))), rel=1e-4)
    sw = C.gd_lr_sweep(lin, w0, x, y, jnp.array([0.9, 1.1]) * 2 / lam0, 300, kernel_every=150)
    np.testing.assert_array_equal(sw.phases(), [C.MONOTONE, C.DIVERGED])
    assert sw.kernels.shape == (2, 2)
    np.testing.assert_allclose(sw.kernels[0], lam0, rtol=1e-4)  # a linear model's kernel never moves
    assert np.isnan(sw.kernel_final[1])
    with pytest.raises(ValueError, match="kernel_every"):
        C.gd_lr_sweep(lin, w0, x, y, jnp.array([0.1]), 10, kernel_every=3)


def test_init_lr_sweep_batches_inits_and_builds_taylor_models():
    from overparam.models import MLPSpec

    keys = jax.random.split(jax.random.key(5), 2)
    apply_fn = MLPSpec((3, 16, 1), "relu", "ntk", use_bias=False)
    params = apply_fn.init_ensemble(keys)
    x = jax.random.normal(jax.random.key(6), (5, 3))
    y = x[:, :1] * x[:, 1:2]
    a0s = jnp.array([1.0, 3.0])
    # order=1 (cheapest to compile) exercises the same path as the NQM: a Taylor model built around
    # each (traced) init inside the vmapped function
    sw = C.init_lr_sweep(apply_fn, params, x, y, a0s, 20, order=1, x_test=x, y_test=y)
    assert sw.losses.shape == (2, 2, 21) and sw.test_loss.shape == (2, 2) and sw.kernels.shape == (2, 2, 0)
    lam0 = [float(ntk_top_eigenvalue(apply_fn, jax.tree.map(lambda a: a[s], params), x)) for s in range(2)]
    np.testing.assert_allclose(sw.lam0, lam0, rtol=1e-5)
    p0 = jax.tree.map(lambda a: a[1], params)
    single = C.gd_lr_sweep(apply_fn, p0, x, y, a0s / lam0[1], 20, order=1, x_test=x, y_test=y)
    np.testing.assert_array_equal(single.phases(), [C.MONOTONE, C.DIVERGED])  # linear: a0 = 3 > 2
    np.testing.assert_allclose(sw.losses[1], single.losses, rtol=1e-4)
    # on the training set the test loss is the final training loss (for converged runs)
    ok = np.isfinite(single.losses[:, -1])
    np.testing.assert_allclose(single.test_loss[ok], single.losses[ok, -1], rtol=1e-4)
    with pytest.raises(ValueError, match="order"):
        C.init_lr_sweep(apply_fn, params, x, y, a0s, 20, order=3)


# ------------------------------------------- bias-free two-layer ReLU nets: flips and the NQM gap

def _relu_net(d=3, m=16, seed=0):
    from overparam.models import MLPSpec

    spec = MLPSpec.two_layer(d, m, "relu", "ntk")
    return spec, spec.init(jax.random.key(seed))


@pytest.mark.usefixtures("x64")
def test_relu_nqm_gap_is_the_flipped_unit_sum_and_zero_without_flips():
    from overparam.taylor import quadratize

    spec, p0 = _relu_net()
    p1 = spec.init(jax.random.key(1))
    x = jax.random.normal(jax.random.key(2), (9, 3))
    nqm = quadratize(spec, p0)
    far = jax.tree.map(lambda a, b: a + 0.5 * (b - a), p0, p1)
    gap = spec(far, x) - nqm(far, x)
    np.testing.assert_allclose(C.relu_nqm_gap(p0, far, x), gap, atol=1e-12)
    flips = np.asarray(C.relu_flips(p0, far, x))
    assert flips.shape == (9,) and flips.sum() > 0
    assert np.all(np.abs(np.asarray(gap)[flips == 0]) < 1e-12)     # no flip on an input: no gap there
    assert np.all(np.abs(np.asarray(gap)[flips > 0]) > 0)
    # a tiny perturbation flips nothing: network and NQM agree exactly
    near = jax.tree.map(lambda a, b: a + 1e-6 * (b - a), p0, p1)
    assert int(C.relu_flips(p0, near, x).sum()) == 0
    np.testing.assert_allclose(spec(near, x), nqm(near, x), atol=1e-13)


@pytest.mark.usefixtures("x64")
def test_network_and_nqm_trajectories_coincide_until_the_first_flip():
    from overparam.taylor import quadratize
    from overparam.training import full_batch_loss, mse_loss, train_gd

    spec, p0 = _relu_net(d=3, m=8)
    x = jax.random.normal(jax.random.key(3), (1, 3))
    y = jnp.ones((1, 1))
    flips_of = lambda p: C.relu_flips(p0, p, x).sum()
    runs = {name: train_gd(full_batch_loss(f, x, y, mse_loss), p0, 0.5, 40, observe=flips_of)
            for name, f in (("net", spec), ("nqm", quadratize(spec, p0)))}
    flips = np.asarray(runs["net"].records)
    first = int(np.argmax(flips > 0)) if (flips > 0).any() else flips.size
    assert first >= 2, "the test needs a few steps before the first flip"
    np.testing.assert_allclose(runs["net"].step_losses[:first], runs["nqm"].step_losses[:first], rtol=1e-12)


def test_param_distance_batches_and_relu_errors():
    spec, p0 = _relu_net()
    p1 = jax.tree.map(lambda a: a + 1.0, p0)
    n = spec.num_params
    assert float(C.param_distance(p0, p1)) == pytest.approx(np.sqrt(n), rel=1e-6)
    batched = jax.tree.map(lambda a: jnp.stack([a, a + 2.0]), p0)
    np.testing.assert_allclose(C.param_distance(p0, batched, batch_ndim=1), [0.0, 2 * np.sqrt(n)], rtol=1e-6)
    three = {"layers": [p0["layers"][0]] * 3}
    with pytest.raises(ValueError, match="two-layer"):
        C.relu_flips(three, three, jnp.ones((1, 3)))


def test_uv_upper_boundary_exact_at_y0_and_moves_at_y1():
    grid = np.arange(3.505, 4.02, 0.01)            # avoids a0 = 4 itself (a fixed point of 4 - a: diverges)
    b0 = C.uv_upper_boundary(grid, [16, 256], 1.0, 2.0, y=0.0, num_steps=500)
    np.testing.assert_allclose(b0, 4.005, atol=1e-9)           # first grid point above 4: exact boundary
    b1 = C.uv_upper_boundary(grid, [16, 256], -1.0, 2.0, y=1.0, num_steps=500)
    assert b1[0] < 3.9 < b1[1] <= 4.0                          # shifted below 4, less at the larger width
    # at m = 64 the map diverges at isolated a0 inside the catapult range; "contiguous" skips them
    fine = np.arange(3.0, 4.0 + 1e-9, 0.00025)
    first, edge = (C.uv_upper_boundary(fine, [64], -1.0, 2.0, y=1.0, edge=e)[0] for e in ("first", "contiguous"))
    assert first < 3.1 and edge == pytest.approx(3.9395, abs=1e-6)
    r0s, lam0s = np.array([-1.0, -1.0]), np.array([2.0, 2.0])      # per-entry initial states
    np.testing.assert_allclose(C.uv_upper_boundary(fine, [64, 64], r0s, lam0s, y=1.0, edge="contiguous"), edge)
    with pytest.raises(ValueError, match="edge"):
        C.uv_upper_boundary(grid, [16], 1.0, 2.0, edge="last")
    with pytest.raises(ValueError, match="sorted"):
        C.uv_upper_boundary(grid[::-1], [16], 1.0, 2.0)
    with pytest.raises(ValueError, match="lam0"):
        C.uv_upper_boundary(grid, [16], 1.0, 0.0)


def test_digits_on_sphere_centered_and_raw():
    a = C.digits_on_sphere(40, 30, seed=1)
    b = C.digits_on_sphere(40, 30, seed=1, centered=False)
    for ds in (a, b):
        assert ds.x_train.shape == (40, 64) and ds.y_test.shape == (30, 1)
        np.testing.assert_allclose(jnp.linalg.norm(ds.x_test, axis=1), 8.0, rtol=1e-5)
    np.testing.assert_array_equal(a.y_train, b.y_train)            # same split
    assert float(jnp.min(b.x_train)) >= 0.0 > float(jnp.min(a.x_train))
    assert set(np.unique(np.asarray(a.y_train)).tolist()) == {-1.0, 1.0}
    with pytest.raises(ValueError, match="all-zero row"):
        C.to_sphere(jnp.zeros((2, 3)))
