"""Tests of overparam.experiments.sgd_spikes: spike detection, kernel top eigenpairs, the SGD trajectory recorder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.curvature import top_eigs_subspace
from overparam.experiments import sgd_spikes as spikes
from overparam.models import MLPSpec
from overparam.kernels.empirical import ntk_jacobian
from overparam.training import mse_loss, sgd_batch_indices, train_sgd, batch_loss


def test_detect_spikes_basic():
    loss = np.array([1.0, 0.5, 0.4, 0.3, 3.0, 9.0, 4.0, 1.0, 0.2, 0.25, 0.2])
    (sp,) = spikes.detect_spikes(loss, rise=5.0)
    assert (sp.start, sp.peak, sp.end, sp.complete) == (3, 5, 7, True)
    assert sp.height == pytest.approx(30.0)
    assert spikes.return_index(loss, sp) == 8
    # jitter below the floor is not a spike; a bigger rise factor misses it too
    assert spikes.detect_spikes(loss, rise=5.0, floor=10.0) == []
    assert spikes.detect_spikes(loss, rise=40.0) == []


def test_detect_spikes_incomplete_and_nonfinite():
    loss = np.array([1.0, 0.1, 5.0, 6.0])
    (sp,) = spikes.detect_spikes(loss, rise=2.0)
    assert not sp.complete and sp.peak == 3
    (sp2,) = spikes.detect_spikes(np.array([1.0, 0.1, 5.0, np.inf, 0.01]), rise=2.0)
    assert not sp2.complete
    assert spikes.count_spikes(np.stack([loss, loss]), 2.0).tolist() == [0, 0]
    assert spikes.count_spikes(np.stack([loss, loss]), 2.0, complete_only=False).tolist() == [1, 1]
    with pytest.raises(ValueError, match="rise=1.0"):
        spikes.detect_spikes(loss, rise=1.0)
    with pytest.raises(ValueError, match="one trajectory"):
        spikes.detect_spikes(np.ones((2, 3)))


def test_two_spikes_and_per_trajectory_floor():
    loss = np.array([1.0, 0.1, 1.0, 0.05, 0.04, 0.5, 0.03])
    assert len(spikes.detect_spikes(loss, rise=5.0)) == 2
    counts = spikes.count_spikes(np.stack([loss, loss]), 5.0, floor=np.array([0.0, 0.8]))
    assert counts.tolist() == [2, 1]


def test_projected_loss():
    a = jax.random.normal(jax.random.key(0), (30, 30))
    k = a @ a.T / 30 + 3 * jnp.diag(jnp.arange(30.0) == 0) + 2 * jnp.diag(jnp.arange(30.0) == 1)
    ref_vals, ref_vecs = np.linalg.eigh(np.asarray(k))
    r = jax.random.normal(jax.random.key(2), (30,))
    full = spikes.projected_loss(r, jnp.asarray(ref_vecs))
    assert float(full) == pytest.approx(float(jnp.sum(r**2) / 60), rel=1e-5)
    with pytest.raises(ValueError, match="rows"):
        spikes.projected_loss(r, jnp.ones((29, 1)))


def test_kernel_mean_diag_and_batch_thresholds():
    c, delta, n = 0.2, 0.8, 40
    k = c * np.ones((n, n)) + delta * np.eye(n)
    assert spikes.kernel_mean_diag(k) == pytest.approx((c, delta))
    lrs = spikes.batch_critical_lrs(k, 8, jax.random.key(0), 5)
    np.testing.assert_allclose(lrs, 2 / (c + delta / 8), rtol=1e-10)
    with pytest.raises(ValueError, match="batch_size=0"):
        spikes.batch_critical_lrs(k, 0, jax.random.key(0))


def _small_problem(seeds=2):
    d, n = 3, 16
    x = jax.random.normal(jax.random.key(5), (n, d))
    y = x[:, :1] * x[:, 1:2]
    widths = (d, 32, 1)
    apply_fn = MLPSpec(widths, "relu", "ntk")
    params = apply_fn.init_ensemble(jax.random.split(jax.random.key(6), seeds))
    return x, y, widths, apply_fn, params


def test_sgd_trajectories_match_train_sgd_kernel_and_survive_divergence():
    """Seed 0: same batches and updates as overparam.training.train_sgd, and the recorded kernel
    quantities are right; seed 1 (a huge learning rate) diverges without raising."""
    x, y, widths, apply_fn, params = _small_problem(2)
    keys = jax.random.split(jax.random.key(8), 2)
    lr, steps, b, n_p = 0.5, 6, 4, 8
    obs = lambda p: dict(norm=sum(jnp.sum(l**2) for l in jax.tree.leaves(p)))
    tr = spikes.sgd_trajectories(apply_fn, params, x, y, jnp.array([lr, 500.0]), keys, b, steps, x[:n_p], y[:n_p],
                                 k_top=2, observe=obs, kernel_fn=None)
    assert tr.train_loss.shape == (2, steps + 1) and tr.metrics["norm"].shape == (2, steps + 1)
    p0 = jax.tree.map(lambda a: a[0], params)
    ref = train_sgd(batch_loss(apply_fn), p0, x, y, b, lr, steps, keys[0])
    np.testing.assert_allclose(tr.train_loss[0, :-1], ref.losses, rtol=1e-4)
    np.testing.assert_allclose(tr.train_loss[0, -1], ref.final_loss, rtol=1e-4)
    np.testing.assert_allclose(tr.batch_loss[0], ref.step_losses, rtol=1e-4)
    # kernel records at the final params of seed 0 (power iteration vs exact eigh)
    p_end = jax.tree.map(lambda a: a[0], tr.params)
    idx = np.asarray(sgd_batch_indices(keys[0], x.shape[0], b, steps - 1))
    k_probe, k_batch, out = jax.jit(lambda q: (ntk_jacobian(apply_fn, q, x[:n_p]), ntk_jacobian(apply_fn, q, x[idx]),
                                               apply_fn(q, x[:n_p])))(p_end)
    vals, vecs = np.linalg.eigh(np.asarray(k_probe))
    assert float(tr.ntk_top[0, -1]) == pytest.approx(vals[-1] / n_p, rel=1e-3)
    r = np.asarray(out - y[:n_p])[:, 0]
    assert float(tr.probe_loss[0, -1]) == pytest.approx(float(np.sum(r**2) / (2 * n_p)), rel=1e-4)
    assert float(tr.top_loss[0, -1]) == pytest.approx(float(np.sum((vecs[:, -2:].T @ r) ** 2) / (2 * n_p)), rel=1e-2)
    assert float(tr.batch_top_after[0, -1]) == pytest.approx(np.linalg.eigvalsh(np.asarray(k_batch))[-1] / b, rel=1e-3)
    # seed 1 blew up but nothing raised
    assert float(tr.train_loss[1].max()) > 1e3 or not bool(jnp.all(jnp.isfinite(tr.train_loss[1])))
    stats = spikes.spike_statistics(tr, rise=2.0, metric=tr.metrics["norm"])
    assert stats.run.shape == stats.top_fraction.shape == stats.metric_gain.shape


def test_sgd_trajectory_rejects_bad_sizes():
    x, y, widths, apply_fn, params = _small_problem(1)
    p0 = jax.tree.map(lambda a: a[0], params)
    with pytest.raises(ValueError, match="k_top=0"):
        spikes.sgd_trajectory(apply_fn, p0, x, y, 0.1, jax.random.key(0), 4, 2, x[:6], y[:6], k_top=0)
    with pytest.raises(ValueError, match="batch_size=99"):
        spikes.sgd_trajectory(apply_fn, p0, x, y, 0.1, jax.random.key(0), 99, 2, x[:6], y[:6])


def _reference_trajectory(apply_fn, params0, x, y, lr, key, b, steps, x_probe, y_probe, k_top, observe,
                          power_iters=8):
    """What ``sgd_trajectory`` computes, one step at a time in Python (its definition, kept for the check).

    Plain SGD on the minibatch half-MSE over the batches of ``sgd_batch_indices``; before each update the
    probe kernel's top-k eigenvectors are refined by ``power_iters`` subspace iterations warm-started from
    the previous step (an exact eigh at t = 0), and the batch curvatures come from subspace iteration
    started at the constant vector. Nothing is frozen when the run diverges.
    """
    kernel = jax.jit(lambda p, xx: ntk_jacobian(apply_fn, p, xx))
    top = jax.jit(top_eigs_subspace, static_argnums=2)
    n_p = x_probe.shape[0]
    v = jnp.linalg.eigh(kernel(params0, x_probe))[1][:, ::-1][:, :k_top]
    params, rows, batch = params0, [], []

    def record(p, v):
        evals, evecs = top(kernel(p, x_probe), v, power_iters)
        r = apply_fn(p, x_probe) - y_probe
        return dict(train_loss=mse_loss(apply_fn(p, x), y), ntk_top=evals[0] / n_p, probe_loss=mse_loss(r, 0 * r),
                    top_loss=spikes.projected_loss(r[:, 0], evecs), metrics=observe(p)), evecs

    def batch_top(p, xb):
        return top(kernel(p, xb), jnp.ones((xb.shape[0], 1), xb.dtype), power_iters)[0][0] / xb.shape[0]

    for t in range(steps):
        rec, v = record(params, v)
        rows.append(rec)
        idx = sgd_batch_indices(key, x.shape[0], b, t)
        loss, grads = jax.value_and_grad(lambda p: mse_loss(apply_fn(p, x[idx]), y[idx]))(params)
        new = jax.tree.map(lambda p, g: p - lr * g, params, grads)
        batch.append((loss, batch_top(params, x[idx]), batch_top(new, x[idx])))
        params = new
    rows.append(record(params, v)[0])
    out = jax.tree.map(lambda *a: np.stack(a), *rows)
    loss, before, after = (np.array(c) for c in zip(*batch))
    return params, out, loss, before, after


def _assert_same_values(got, want, name, rtol=1e-6):
    """Finite where the reference is finite and equal there to float32 rounding; non-finite where it is not
    (an overflow may come out as inf in one evaluation order and as nan in another)."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        np.testing.assert_array_equal(np.isfinite(g), np.isfinite(w), err_msg=f"{name}: finite entries")
        np.testing.assert_allclose(g[np.isfinite(g)], w[np.isfinite(w)], rtol=rtol, err_msg=name)


def test_sgd_trajectory_follows_the_step_by_step_definition():
    """The scan gives the trajectory of the plain Python loop above: a stable run to float32 rounding, and a
    diverging run (lr = 500) that is not frozen: it goes on with the same huge or non-finite values."""
    x, y, widths, apply_fn, params = _small_problem(2)
    keys = jax.random.split(jax.random.key(8), 2)
    steps, b, n_p = 6, 4, 8
    obs = lambda p: dict(norm=sum(jnp.sum(l**2) for l in jax.tree.leaves(p)))
    lrs = jnp.array([0.5, 500.0])
    tr = spikes.sgd_trajectories(apply_fn, params, x, y, lrs, keys, b, steps, x[:n_p], y[:n_p], k_top=2, observe=obs,
                                 kernel_fn=lambda p, xx: ntk_jacobian(apply_fn, p, xx))
    for s in range(2):
        p0 = jax.tree.map(lambda a: a[s], params)
        p_ref, rec, loss, before, after = _reference_trajectory(apply_fn, p0, x, y, lrs[s], keys[s], b, steps,
                                                                x[:n_p], y[:n_p], 2, obs)
        got = dict(train_loss=tr.train_loss[s], ntk_top=tr.ntk_top[s], probe_loss=tr.probe_loss[s],
                   top_loss=tr.top_loss[s], norm=tr.metrics["norm"][s], batch_loss=tr.batch_loss[s],
                   top_before=tr.batch_top_before[s], top_after=tr.batch_top_after[s])
        want = dict(train_loss=rec["train_loss"], ntk_top=rec["ntk_top"], probe_loss=rec["probe_loss"],
                    top_loss=rec["top_loss"], norm=rec["metrics"]["norm"], batch_loss=loss, top_before=before,
                    top_after=after)
        got["params"] = jax.tree.leaves(jax.tree.map(lambda a: a[s], tr.params))
        want["params"] = jax.tree.leaves(p_ref)
        # The diverging run multiplies its values by up to ~1e7 a step: float32 rounding differences between
        # the scan and the loop (XLA may order a reduction differently from one compilation to the next,
        # measured 1.06e-6 relative at a loss of 1e29) grow with it, so it is held to 1e-5, the stable run to 1e-6.
        for name in got:
            _assert_same_values(got[name], want[name], name, rtol=1e-6 if s == 0 else 1e-5)
    # the diverging run went far past the loop's default divergence threshold (1e6) and kept its values
    assert float(np.nanmax(np.where(np.isfinite(tr.train_loss[1]), tr.train_loss[1], np.nan))) > 1e6 \
        or not np.all(np.isfinite(tr.train_loss[1]))


def _random_kernel(n, seed=0):
    a = np.random.default_rng(seed).normal(size=(n, n + 3))
    return a @ a.T / (n + 3) + 0.4


def test_second_moment_map_matches_monte_carlo_linear_sgd():
    """E[r' r'^T] over uniformly drawn batches, by enumeration of all batches, equals the map."""
    import itertools
    n, b, lr = 6, 2, 0.7
    k = _random_kernel(n)
    s = np.cov(np.random.default_rng(1).normal(size=(n, 20)))
    ref = np.zeros((n, n))
    subsets = list(itertools.combinations(range(n), b))
    for sub in subsets:
        d = np.zeros((n, n)); d[list(sub), list(sub)] = 1.0
        a = np.eye(n) - lr / b * k @ d
        ref += a @ s @ a.T / len(subsets)
    np.testing.assert_allclose(spikes.ms_second_moment_map(k, lr, b)(s), ref, rtol=1e-10, atol=1e-12)


def test_ms_critical_lr_is_where_the_second_moment_stops_contracting():
    n = 6
    k = _random_kernel(n, 3)

    def radius(lr, b):
        t = spikes.ms_second_moment_map(k, lr, b)
        basis = np.eye(n * n)
        mat = np.stack([t(e.reshape(n, n)).ravel() for e in basis], axis=1)
        return np.max(np.abs(np.linalg.eigvals(mat)))

    for b in (1, 2, 3, n):
        eta = spikes.ms_critical_lr(k, b)
        assert radius(eta, b) == pytest.approx(1.0, abs=1e-6)
        assert radius(0.97 * eta, b) < 1 < radius(1.03 * eta, b)
    assert spikes.ms_critical_lr(k, n) == pytest.approx(2 * n / np.linalg.eigvalsh(k)[-1], rel=1e-6)  # power iteration to 1e-7
    assert spikes.ms_critical_lr(k, 1) < spikes.ms_critical_lr(k, 3) < spikes.ms_critical_lr(k, n)
    with pytest.raises(ValueError, match="batch_size"):
        spikes.ms_critical_lr(k, n + 1)


def test_spike_free_mask_and_control_windows():
    loss = np.array([[1.0, 0.5, 0.4, 0.3, 3.0, 9.0, 4.0, 1.0, 0.2, 0.19, 0.18, 0.17, 0.16, 0.15, 0.14, 0.13, 0.12]])
    free = spikes.spike_free_mask(loss, rise=5.0)
    # the spike starts at 3, peaks at 5, ends at 7; the loss is back below 0.3 at step 8
    assert free[0].tolist() == [True] * 3 + [False] * 6 + [True] * 8
    metric = np.arange(loss.shape[1], dtype=float)[None] ** 2

    class Trace:
        train_loss = loss
        top_loss = np.ones_like(loss)
        probe_loss = np.ones_like(loss)
        ntk_top = np.ones_like(loss)

    st = spikes.spike_statistics(Trace, 5.0, floor=0.0, metric=metric)
    assert st.metric_gain.tolist() == [64.0 - 9.0]
    # span 5: spike-free windows [s, s + 5] exist for s = 9, 10, 11; s = 9 has the loss nearest 0.3
    ctrl = spikes.control_window_gains(loss, metric, st, 5.0, floor=0.0)
    assert ctrl.tolist() == [14.0**2 - 9.0**2]
    # no room for a control window: NaN
    short = spikes.control_window_gains(loss[:, :14], metric[:, :14], st, 5.0, floor=0.0)
    assert np.isnan(short[0])


def test_sgd_losses_match_the_trajectory_recorder():
    x, y, widths, apply_fn, params = _small_problem(2)
    keys = jax.random.split(jax.random.key(8), 2)
    lr, steps, b = 0.5, 6, 4
    losses, p_end = spikes.sgd_losses(apply_fn, params, x, y, lr, keys, b, steps)
    tr = spikes.sgd_trajectories(apply_fn, params, x, y, lr, keys, b, steps, x[:8], y[:8])
    np.testing.assert_allclose(losses, tr.train_loss, rtol=1e-5)
    for a, c in zip(jax.tree.leaves(p_end), jax.tree.leaves(tr.params)):
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)
