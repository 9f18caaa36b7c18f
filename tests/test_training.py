"""Tests of overparam.training on linear regression, where every quantity has a closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overparam.models import MLPSpec
from overparam.training import (
    TrainResult,
    batch_loss,
    full_batch_loss,
    max_stable_lr,
    minibatches,
    mse_loss,
    run_loop,
    sgd_batch_indices,
    train_gd,
    train_optax,
    train_sgd,
)

N, D = 16, 4
_RNG = np.random.default_rng(0)  # numpy data: no JAX PRNG kernels to compile
X = jnp.asarray(_RNG.normal(size=(N, D)), jnp.float32)
Y = X @ jnp.arange(1.0, D + 1)[:, None] + 0.1 * jnp.asarray(_RNG.normal(size=(N, 1)), jnp.float32)


def linear(params, x):
    return x @ params["w"]


PARAMS0 = {"w": jnp.zeros((D, 1))}
LOSS = full_batch_loss(linear, X, Y)
BATCH_LOSS = batch_loss(linear)


def test_mse_loss_normalization():
    pred, y = jnp.array([[1.0, 2.0], [3.0, 5.0]]), jnp.array([[0.0, 2.0], [1.0, 1.0]])
    assert float(mse_loss(pred, y)) == pytest.approx((1 + 0 + 4 + 16) / (2 * 2))
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 1\)"):
        mse_loss(pred, y[:, :1])


def test_gd_matches_hand_written_updates():
    lr, steps = 0.05, 7
    w = np.zeros((D, 1))
    x, y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    losses = []
    for _ in range(steps):
        losses.append(0.5 * np.sum((x @ w - y) ** 2) / N)
        w = w - lr * x.T @ (x @ w - y) / N  # gradient of 1/(2N) ||Xw - y||^2
    result = train_gd(LOSS, PARAMS0, lr, steps)
    np.testing.assert_allclose(result.params["w"], w, rtol=1e-5)
    np.testing.assert_allclose(result.losses, losses, rtol=1e-5)
    np.testing.assert_allclose(result.final_loss, 0.5 * np.sum((x @ w - y) ** 2) / N, rtol=1e-5)
    assert not result.diverged and result.diverged_step == -1


def test_stability_threshold_and_vmap_over_learning_rates():
    # For this loss GD on a linear model is stable iff lr < 2N / lambda_max(X X^T).
    threshold = max_stable_lr(X @ X.T)
    np.testing.assert_allclose(threshold, 2 / np.linalg.eigvalsh(np.asarray(X.T @ X) / N)[-1], rtol=1e-5)
    traces = []

    def counted_loss(params):
        traces.append(1)  # runs once per trace, not per step
        return LOSS(params)

    run = jax.jit(jax.vmap(lambda lr: train_gd(counted_loss, PARAMS0, lr, 400, record_every=20)))
    result = run(threshold * jnp.array([0.5, 0.97, 1.05]))
    assert isinstance(result, TrainResult) and result.losses.shape == (3, 20)
    np.testing.assert_array_equal(result.diverged, [False, False, True])
    assert result.diverged_step[2] > 0 and np.all(result.diverged_step[:2] == -1)
    assert np.all(np.isfinite(result.params["w"]))
    np.testing.assert_array_equal(result.steps[0], 20 * np.arange(20))
    w_star = np.linalg.lstsq(X, Y, rcond=None)[0]
    minimum = 0.5 * np.sum((X @ w_star - Y) ** 2) / N
    np.testing.assert_allclose(result.final_loss[:2], minimum, rtol=1e-3)
    after = result.steps[2] >= result.diverged_step[2]
    assert np.all(np.isinf(result.losses[2][after])) and np.all(np.isfinite(result.losses[2][~after]))
    assert np.isinf(result.final_loss[2])
    traced = len(traces)
    run(threshold * jnp.array([0.1, 0.2, 3.0]))
    assert len(traces) == traced  # new learning rates, no new compile


def test_vmap_over_seeds_matches_single_runs():
    keys = jax.random.split(jax.random.key(3), 3)
    apply_fn = MLPSpec((D, 8, 1), "tanh")
    params0 = apply_fn.init_ensemble(keys)
    loss = full_batch_loss(apply_fn, X, Y)
    batched = jax.vmap(lambda p: train_gd(loss, p, 0.1, 20, record_every=5))(params0)
    single = train_gd(loss, jax.tree.map(lambda p: p[1], params0), 0.1, 20, record_every=5)
    np.testing.assert_allclose(batched.losses[1], single.losses, rtol=1e-5)
    assert not np.allclose(batched.losses[0], batched.losses[1])


def test_divergence_freezes_params_without_nan():
    result = train_gd(LOSS, PARAMS0, 100.0, 30, divergence_threshold=1e4, observe=lambda p: p["w"][:, 0])
    assert result.diverged and 0 < result.diverged_step < 30
    assert np.all(np.isfinite(result.params["w"]))
    t = int(result.diverged_step)
    # The params stay at theta_t, the first iterate whose loss crossed the threshold.
    np.testing.assert_allclose(result.records[t:], np.broadcast_to(result.records[t], result.records[t:].shape))
    assert float(LOSS({"w": result.records[t][:, None]})) > 1e4 >= float(result.losses[t - 1])
    assert np.all(np.isinf(result.step_losses[t:]))


def test_callback_and_record_every_consistent():
    every = train_gd(LOSS, PARAMS0, 0.05, 20, observe=lambda p: p["w"].sum())
    sparse = train_gd(LOSS, PARAMS0, 0.05, 20, record_every=5, observe=lambda p: p["w"].sum())
    np.testing.assert_allclose(sparse.losses, every.losses[::5], rtol=1e-6)
    np.testing.assert_allclose(sparse.records, every.records[::5], rtol=1e-6)
    np.testing.assert_allclose(every.step_losses, every.losses, rtol=1e-6)
    np.testing.assert_allclose(every.records[0], 0.0)
    with pytest.raises(ValueError, match="num_steps=20.*record_every=3"):
        train_gd(LOSS, PARAMS0, 0.05, 20, record_every=3)


def test_optax_sgd_equals_gd():
    gd = train_gd(LOSS, PARAMS0, 0.05, 10)
    opt = train_optax(LOSS, PARAMS0, optax.sgd(0.05), 10)
    np.testing.assert_allclose(opt.losses, gd.losses, rtol=1e-6)
    adam = train_optax(LOSS, PARAMS0, optax.adam(0.1), 10)
    assert adam.final_loss < adam.losses[0]


def test_sgd_deterministic_and_full_batch_equals_gd():
    run = lambda key, batch_size: train_sgd(BATCH_LOSS, PARAMS0, X, Y, batch_size, 0.05, 12, key, record_every=4)
    a, b, c = run(jax.random.key(5), 4), run(jax.random.key(5), 4), run(jax.random.key(6), 4)
    np.testing.assert_array_equal(a.step_losses, b.step_losses)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert not np.allclose(a.step_losses, c.step_losses)
    assert a.step_losses.shape == (12,) and a.losses.shape == (3,)
    np.testing.assert_allclose(a.losses[0], LOSS(PARAMS0), rtol=1e-6)
    # With batch_size = N each batch is the whole set (permuted), so SGD is GD.
    full = run(jax.random.key(5), N)
    np.testing.assert_allclose(full.losses, train_gd(LOSS, PARAMS0, 0.05, 12, record_every=4).losses, rtol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        train_sgd(BATCH_LOSS, PARAMS0, X, Y, 4, 0.05, 12, jax.random.key(0), optimizer=optax.sgd(0.1))


def test_batches_without_replacement_within_an_epoch():
    key = jax.random.key(0)
    epoch = np.concatenate([sgd_batch_indices(key, 10, 3, t) for t in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 batches of 3, no repeats, one example left out
    next_epoch = np.concatenate([sgd_batch_indices(key, 10, 3, t) for t in range(3, 6)])
    assert not np.array_equal(epoch, next_epoch)
    with pytest.raises(ValueError, match="batch_size=11"):
        sgd_batch_indices(key, 10, 11, 0)


def test_train_gd_runs_in_float64():
    # Derivation checks train in double precision; the step counter must not clash with int32 state.
    import jax
    import jax.numpy as jnp

    from overparam.training import train_gd

    with jax.enable_x64(True):
        w0 = jnp.array([1.0, -2.0])
        res = train_gd(lambda w: 0.5 * jnp.sum(w**2), w0, 0.5, 4)
        assert res.params.dtype == jnp.float64
        assert jnp.allclose(res.params, w0 * 0.5**4)


def _plain_loop(step, params, num_steps):
    """Reference for run_loop: a Python loop, one eager step at a time (no scan, no jit)."""
    out = []
    for t in range(num_steps):
        params, rec = step(params, t)
        out.append(rec)
    return params, out


def test_run_loop_with_data_traced_and_jit_of_new_data_reuses_the_compilation():
    traces = []

    def loss(params, x, y):
        traces.append(1)
        return mse_loss(linear(params, x), y)

    a = train_gd(loss, PARAMS0, 0.05, 10, data=(X, Y))
    b = train_gd(loss, PARAMS0, 0.05, 10, data=(2 * X, Y))
    np.testing.assert_allclose(a.losses, train_gd(LOSS, PARAMS0, 0.05, 10).losses, rtol=1e-6)
    assert not np.allclose(a.losses, b.losses)
    num_traces = len(traces)
    train_gd(loss, PARAMS0, 0.05, 10, data=(3 * X, Y))
    assert len(traces) == num_traces  # same shapes, same static loss: no new trace


def test_run_loop_constraint_keys_and_on_step_match_a_plain_loop():
    # Projected SGD with a per-step random perturbation (the binary-weight networks' pattern):
    # the step's key comes from batches(data, t), the projection is the constraint.
    key, lr = jax.random.key(3), 0.2

    def loss(params, x, y, k):
        noise = 0.1 * jax.random.normal(k, params["w"].shape)
        return mse_loss(linear({"w": params["w"] + noise}, x), y)

    clip = lambda p: {"w": jnp.clip(p["w"], -1.0, 1.0)}
    batches = lambda data, t: (data[0], data[1], jax.random.fold_in(key, t))
    moved = lambda p, q, *batch: jnp.sum(jnp.abs(q["w"] - p["w"]))
    run = jax.jit(lambda p0, x, y: run_loop(loss, p0, optax.sgd(lr), 6, data=(x, y), batches=batches,
                                            constraint=clip, on_step=moved))
    result = run(PARAMS0, X, Y)

    def step(p, t):
        value, g = jax.value_and_grad(loss)(p, X, Y, jax.random.fold_in(key, t))
        q = clip({"w": p["w"] - lr * g["w"]})
        return q, (value, jnp.sum(jnp.abs(q["w"] - p["w"])))

    params, recs = _plain_loop(step, PARAMS0, 6)
    np.testing.assert_allclose(result.params["w"], params["w"], rtol=1e-6)
    np.testing.assert_allclose(result.step_losses, [r[0] for r in recs], rtol=1e-6)
    np.testing.assert_allclose(result.step_records, [r[1] for r in recs], rtol=1e-6)
    assert float(jnp.max(jnp.abs(result.params["w"]))) <= 1.0


def test_run_loop_grad_fn_and_a_stateful_observer():
    # A preconditioned direction (here: the exact Newton step of the quadratic loss) replaces the gradient.
    hess = X.T @ X / N

    def newton(params):
        value, g = jax.value_and_grad(LOSS)(params)
        return value, {"w": jnp.linalg.solve(hess, g["w"])}

    count = lambda p, state: (state, state + 1)  # records how often it was called, in order
    result = jax.jit(lambda p0: run_loop(LOSS, p0, optax.sgd(1.0), 4, grad_fn=newton, observe=count,
                                         observer_state0=jnp.array(0), record_every=2))(PARAMS0)
    w_star = np.linalg.lstsq(X, Y, rcond=None)[0]
    np.testing.assert_allclose(result.params["w"], w_star, rtol=1e-3, atol=1e-4)  # one Newton step solves it
    np.testing.assert_array_equal(result.records, [0, 1])
    assert int(result.observer_state) == 2


def test_run_loop_traced_horizon_and_no_divergence_check():
    run = jax.jit(lambda p0, n: run_loop(LOSS, p0, optax.sgd(0.05), n, record_every=None))
    for n in (3, 7):  # one compilation for every horizon
        expected = train_gd(LOSS, PARAMS0, 0.05, n)
        got = run(PARAMS0, n)
        np.testing.assert_allclose(got.params["w"], expected.params["w"], rtol=1e-6)
        np.testing.assert_allclose(got.final_loss, expected.final_loss, rtol=1e-6)
    assert run._cache_size() == 1
    # Without a divergence check an unstable run is recorded as it is, non-finite values included.
    wild = jax.jit(lambda p0: run_loop(LOSS, p0, optax.sgd(100.0), 40, divergence_threshold=None))(PARAMS0)
    assert not bool(wild.diverged) and not np.all(np.isfinite(wild.step_losses))
    with pytest.raises(ValueError, match="record_every=None"):
        run_loop(LOSS, PARAMS0, optax.sgd(0.1), 3, record_every=None, observe=lambda p: p)


def test_minibatches_are_the_sgd_batches():
    key = jax.random.key(1)
    drawn_each_step, drawn_once = minibatches(key, 3), minibatches(key, 3, N, 20)
    for t in (0, 4, 5, 19):  # N = 16, batch 3: 5 batches per epoch, steps 0..19 cover 4 epochs
        idx = sgd_batch_indices(key, N, 3, t)
        for batches in (drawn_each_step, drawn_once):
            xb, yb = jax.jit(batches)((X, Y), t)
            np.testing.assert_array_equal(xb, X[idx])
            np.testing.assert_array_equal(yb, Y[idx])
