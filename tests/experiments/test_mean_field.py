"""Mean-field two-layer networks: the padded student equals the library's mean_field MLP, the
N-scaled SGD step moves each particle by O(eta) whatever N, runs are reproducible, and the
discrepancy bookkeeping pairs the right runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import mean_field as mf
from overparam.models import MLPSpec

D, WIDTH, BATCH = 4, 32, 16  # one padded shape for every test: the compilations are shared


@pytest.fixture(scope="module")
def teacher():
    return mf.teacher_init(jax.random.key(0), D, 2)


def test_padded_student_equals_the_unpadded_network():
    keys = jax.random.split(jax.random.key(1), 2)
    N, width = 3, WIDTH
    padded = mf.student_init(keys, D, N, width)
    x = jax.random.normal(jax.random.key(2), (5, D))
    # the same live particles in an exact width-N mean_field MLP
    apply_n = MLPSpec((D, N, 1), "tanh", "mean_field", use_bias=False)
    small = apply_n.init_ensemble(keys)
    small["layers"][0]["w"][...] = padded["layers"][0]["w"][...][:, :, :N]
    small["layers"][1]["w"][...] = padded["layers"][1]["w"][...][:, :N, :]
    p0, s0 = jax.tree.map(lambda a: a[0], padded), jax.tree.map(lambda a: a[0], small)
    assert mf.student_apply(p0, x, N).shape == (5, 1)
    np.testing.assert_allclose(mf.student_apply(p0, x, N), apply_n(s0, x), rtol=1e-5, atol=1e-6)
    assert mf.particles(p0, N).shape == (N, D + 1)
    assert np.all(mf.particles(p0)[N:] == 0)
    # f = (1/N) sum_k v_k tanh(w_k . x / sqrt d)
    P = mf.particles(p0, N)
    manual = jnp.tanh(x @ P[:, :D].T / jnp.sqrt(D)) @ P[:, D] / N
    np.testing.assert_allclose(mf.student_apply(p0, x, N)[:, 0], manual, rtol=1e-5, atol=1e-6)
    # the padded network itself is the width-`width` mean-field MLP, rescaled by width / N
    np.testing.assert_allclose(mf.student_spec(D, width)(p0, x) * (width / N), mf.student_apply(p0, x, N), rtol=1e-6)


def _one_step_move(teacher, N, width=WIDTH, eta=0.05):
    keys = jax.random.split(jax.random.key(3), 1)
    p0 = jax.tree.map(lambda a: a[0], mf.student_init(keys, D, N, width))
    p1 = mf.online_sgd(p0, teacher, jax.random.key(4), eta, N, 1, batch_size=BATCH)
    moved = mf.particles(p1, N) - mf.particles(p0, N)
    return p0, p1, np.sqrt(np.mean(np.sum(np.asarray(moved) ** 2, axis=1)))


def test_mean_field_step_moves_particles_by_order_eta(teacher):
    small = _one_step_move(teacher, 4)[2]
    large = _one_step_move(teacher, 32)[2]
    assert 0.3 < small / large < 3  # independent of N (a plain step lr*grad would differ by 8x)
    p0, p1, _ = _one_step_move(teacher, 8)
    assert np.all(mf.particles(p1)[8:] == 0)  # padded slots stay empty


def test_online_sgd_learns_and_is_reproducible(teacher):
    x = jax.random.normal(jax.random.key(5), (256, D))
    y = mf.teacher_apply(teacher, x)
    assert y.shape == (256, 1)
    keys = jax.random.split(jax.random.key(6), 1)
    N = 24
    p0 = jax.tree.map(lambda a: a[0], mf.student_init(keys, D, N, WIDTH))
    run = lambda k: mf.online_sgd(p0, teacher, k, 0.2, N, 200, batch_size=BATCH)
    p1, p2 = run(jax.random.key(7)), run(jax.random.key(7))
    risk = lambda p: float(0.5 * jnp.mean((mf.student_apply(p, x, N) - y) ** 2))
    assert risk(p1) < 0.5 * risk(p0)
    np.testing.assert_array_equal(mf.particles(p1), mf.particles(p2))


def test_discrepancy_pairs(teacher):
    x = jax.random.normal(jax.random.key(8), (64, D))
    res = mf.discrepancy_experiment(jax.random.key(9), teacher, x, N=8, eta=0.1, horizon=1.0, batch_size=BATCH,
                                    num_groups=2, width=WIDTH)
    assert res.num_steps == 10 and res.independent.shape == (4,) and res.risk.shape == (8,)
    assert np.all(res.same_init > 0) and np.all(res.same_data > 0)
    # after a single step, runs sharing an init differ only by one minibatch: far closer than two inits
    zero = mf.discrepancy_experiment(jax.random.key(9), teacher, x, N=8, eta=0.1, horizon=0.1, batch_size=BATCH,
                                     num_groups=2, width=WIDTH)
    assert np.all(zero.same_init < zero.same_data)


def test_step_size_regimes_and_errors():
    np.testing.assert_allclose(mf.step_size(0.2, [16, 64], 16, 0.0), [0.2, 0.2])
    np.testing.assert_allclose(mf.step_size(0.2, [16, 64], 16, 1.0), [0.2, 0.05])
    assert mf.rms([3.0, 4.0]) == pytest.approx(np.sqrt(12.5))
    with pytest.raises(ValueError, match="kappa"):
        mf.step_size(0.2, 16, 16, -1.0)
    with pytest.raises(ValueError, match="width"):
        mf.student_init(jax.random.split(jax.random.key(0), 1), D, 8, 4)
    with pytest.raises(ValueError, match="no step"):
        mf.discrepancy_experiment(jax.random.key(0), None, jnp.ones((2, D)), 4, 1.0, 0.1, 2, 1)


def _online_sgd_reference(teacher, params0, data_key, eta, N, num_steps):
    """Online SGD step by step in Python: x_n from fold_in(data_key, n), theta <- theta - eta N grad L_B."""
    loss = lambda p, x, y: 0.5 * jnp.sum((mf.student_apply(p, x, N) - y) ** 2) / x.shape[0]

    @jax.jit
    def step(p, n, eta, N):
        x = jax.random.normal(jax.random.fold_in(data_key, n), (BATCH, D))
        g = jax.grad(loss)(p, x, mf.teacher_apply(teacher, x))
        return jax.tree.map(lambda a, b: a - eta * N * b, p, g)

    p = params0
    for n in range(num_steps):
        p = step(p, jnp.int32(n), jnp.float32(eta), jnp.int32(N))
    return p


def test_online_sgd_matches_a_step_by_step_reference(teacher):
    N, eta, num_steps = 12, 0.1, 7
    p0 = jax.tree.map(lambda a: a[0], mf.student_init(jax.random.split(jax.random.key(10), 1), D, N, WIDTH))
    k = jax.random.key(11)
    got = mf.online_sgd(p0, teacher, k, eta, N, num_steps, batch_size=BATCH)
    want = _online_sgd_reference(teacher, p0, k, eta, N, num_steps)
    np.testing.assert_allclose(mf.particles(got), mf.particles(want), rtol=1e-6, atol=1e-7)
    assert not np.allclose(mf.particles(got), mf.particles(p0))  # the steps moved the particles


def test_first_layer_sgd_trains_w_only_and_ignores_empty_slots(teacher):
    keys = jax.random.split(jax.random.key(10), 1)
    N = 8
    p0 = jax.tree.map(lambda a: a[0], mf.student_init(keys, D, N, WIDTH))
    w0, v = p0["layers"][0]["w"][...], p0["layers"][1]["w"][...]
    w1 = mf.first_layer_sgd(w0, v, teacher, jax.random.key(11), 0.2, N, 50, batch_size=BATCH)
    assert w1.shape == (D, WIDTH)
    np.testing.assert_array_equal(w1[:, N:], 0.0)          # empty slots get no gradient
    x = jax.random.normal(jax.random.key(12), (256, D))
    y = mf.teacher_apply(teacher, x)
    risk = lambda w: float(0.5 * jnp.mean((jnp.tanh(x @ w / jnp.sqrt(D)) @ v / N - y) ** 2))
    assert risk(w1) < 0.8 * risk(w0)
    # one step equals the hand-written mean-field step w_k -= eta N grad_{w_k} L_B on the same minibatch
    w_one = mf.first_layer_sgd(w0, v, teacher, jax.random.key(11), 0.2, N, 1, batch_size=BATCH)
    xb = jax.random.normal(jax.random.fold_in(jax.random.key(11), 0), (BATCH, D))
    loss = lambda w: 0.5 * jnp.mean((jnp.tanh(xb @ w / jnp.sqrt(D)) @ v / N - mf.teacher_apply(teacher, xb)) ** 2)
    np.testing.assert_allclose(w_one, w0 - 0.2 * N * jax.grad(loss)(w0), rtol=1e-5, atol=1e-6)


def test_coupling_distance_vanishes_when_the_system_is_the_reference(teacher):
    res = mf.coupling_experiment(jax.random.key(13), teacher, D, [8, WIDTH], WIDTH, 0.2, 2.0, BATCH, 2)
    assert res.coupled.shape == (2, 2) and res.uncoupled.shape == (2, 2) and res.num_steps == 10
    np.testing.assert_allclose(res.coupled[:, 1], 0.0, atol=1e-6)   # N = n_ref: the same system
    assert np.all(res.coupled[:, 0] > 0)
    assert np.all(res.uncoupled > 10 * res.coupled[:, :1])        # without the coupling: O(1) apart


def test_field_difference_variance_is_sigma2_times_1_over_n_minus_1_over_nref():
    """The prediction behind the coupling rate: Var(f_N - f_ref) = sigma^2 (1/N - 1/n_ref) at t = 0."""
    rng = np.random.default_rng(0)
    N, n_ref, reps = 16, 64, 20_000
    x = rng.standard_normal(D)
    w = rng.standard_normal((reps, n_ref, D))
    v = rng.standard_normal((reps, n_ref))
    terms = v * np.tanh(w @ x / np.sqrt(D))                      # (reps, n_ref) i.i.d. per row
    diff = terms[:, :N].mean(1) - terms.mean(1)
    predicted = terms.var() * (1 / N - 1 / n_ref)
    assert abs(diff.var() / predicted - 1) < 0.05               # ~ 4 standard errors of a variance over 2e4 draws
