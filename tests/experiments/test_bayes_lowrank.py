import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import bayes_lowrank as bl
from overparam.experiments import tensorized as tt


def test_ece_and_bins():
    probs = jnp.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = jnp.array([0, 1, 0, 0])
    conf, acc, count = bl.reliability_bins(probs, labels, 10)
    assert float(count.sum()) == 4 and float(count[9]) == 2 and float(count[6]) == 2
    # bin 0.9: acc 0.5; bin 0.6: acc 1.0 -> ECE = 0.5*0.4 + 0.5*0.4
    assert abs(float(bl.expected_calibration_error(probs, labels)) - 0.4) < 1e-6
    with pytest.raises(ValueError):
        bl.reliability_bins(probs, labels[:3])


def test_entropy_and_kl():
    assert jnp.allclose(bl.predictive_entropy(jnp.array([[0.5, 0.5], [1.0, 0.0]])), jnp.array([np.log(2), 0.0]))
    mu, ls, ps = jnp.array([0.3]), jnp.log(jnp.array([0.5])), jnp.array([2.0])
    # Monte Carlo check of the closed-form Gaussian KL
    z = mu + jnp.exp(ls) * jax.random.normal(jax.random.key(0), (200_000,))
    logq = -0.5 * ((z - mu) / jnp.exp(ls)) ** 2 - ls
    logp = -0.5 * (z / ps) ** 2 - jnp.log(ps)
    assert abs(float(bl.gaussian_kl(mu, ls, ps)) - float(jnp.mean(logq - logp))) < 0.01


def test_prior_scales_switch_off_rank_slices_and_elbo_trains():
    p = tt.tt_mlp_init(jax.random.key(0), [(2, 2), (2, 4), (1, 3)], 3)
    q, base = bl.init_variational(p)
    q["log_tau"][0][0] = jnp.array([0.0, -30.0, 0.0])
    sd = bl.prior_std(q, base)
    assert float(sd[0]["cores"][0][..., 1].max()) < 1e-10 and float(sd[0]["cores"][1][1].max()) < 1e-10
    assert bl.effective_ranks(q) == [[2], [3]]
    x = jax.random.normal(jax.random.key(1), (40, 4))
    y = jax.nn.one_hot(jnp.argmax(x[:, :3], 1), 3)
    q0, base = bl.init_variational(p)
    q1, losses = bl.fit_variational(jax.random.key(2), q0, base, x, y, 1e-2, 200)
    assert float(losses[-20:].mean()) < float(losses[:20].mean())
    probs = bl.predictive_probs(jax.random.key(3), q1, x, 8)
    assert probs.shape == (40, 3) and jnp.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_rotate_images():
    x = jnp.arange(128.0).reshape(2, 64)
    r = bl.rotate_images(x)
    assert jnp.allclose(bl.rotate_images(bl.rotate_images(bl.rotate_images(r))), x)
    assert not jnp.allclose(r, x)


def test_tempered_elbo_scales_only_the_prior_terms():
    p = tt.tt_mlp_init(jax.random.key(0), [(2, 2), (2, 4), (1, 3)], 2)
    q, base = bl.init_variational(p, init_log_sigma=-1.0)
    x = jax.random.normal(jax.random.key(1), (10, 4))
    y = jax.nn.one_hot(jnp.arange(10) % 3, 3)
    k = jax.random.key(2)
    full, half, tiny = (float(bl.negative_elbo(q, k, x, y, base, lam)) for lam in (1.0, 0.5, 1e-6))
    # L(lam) = nll + lam * prior_terms: linear in lam with the same reparameterized sample
    assert abs((full - tiny) - 2 * (half - tiny)) < 1e-4 * max(1.0, abs(full))
    kl = float(bl.gaussian_kl(q["mu"], q["log_sigma"], bl.prior_std(q, base)))
    hyper = sum(float(jnp.sum(bl.half_cauchy_logpdf(jnp.exp(t)))) for t in jax.tree.leaves(q["log_tau"]))
    assert abs((full - tiny) - (kl - hyper) / 10) < 1e-3 * max(1.0, abs(full - tiny))
    with pytest.raises(ValueError, match="kl_weight"):
        bl.fit_variational(k, q, base, x, y, 1e-2, 5, kl_weight=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        bl.fit_variational(k, q, base, x, y, 1e-2, 0)


def test_colder_posterior_is_narrower():
    p = tt.tt_mlp_init(jax.random.key(0), [(2, 2), (2, 4), (1, 3)], 2)
    x = jax.random.normal(jax.random.key(1), (40, 4))
    y = jax.nn.one_hot(jnp.argmax(x[:, :3], 1), 3)
    q0, base = bl.init_variational(p)
    sig = {}
    for lam in (1.0, 0.1):
        q, _ = bl.fit_variational(jax.random.key(2), q0, base, x, y, 1e-2, 300, kl_weight=lam)
        sig[lam] = float(jnp.mean(jnp.concatenate([jnp.exp(a).ravel() for a in jax.tree.leaves(q["log_sigma"])])))
    assert sig[0.1] < sig[1.0]


def test_prune_rank_slices_removes_unused_slices_exactly():
    p = tt.tt_mlp_init(jax.random.key(0), [(2, 2, 2), (2, 4, 2), (1, 1, 3)], 3)
    q, _ = bl.init_variational(p)
    # switch off slice 1 of bond 0 in layer 0: tiny scale, zero means in both cores it touches
    q["log_tau"][0][0] = jnp.array([0.0, -10.0, 0.0])
    q["mu"][0]["cores"][0] = q["mu"][0]["cores"][0].at[..., 1].set(0.0)
    q["mu"][0]["cores"][1] = q["mu"][0]["cores"][1].at[1].set(0.0)
    qp = bl.prune_rank_slices(q, threshold=0.1)
    assert [c.shape for c in qp["mu"][0]["cores"]] == [(1, 2, 2, 2), (2, 2, 4, 3), (3, 2, 2, 1)]
    assert [c.shape for c in qp["log_sigma"][0]["cores"]] == [(1, 2, 2, 2), (2, 2, 4, 3), (3, 2, 2, 1)]
    assert bl.effective_ranks(qp) == [[2, 3], [3, 3]]
    assert tt.tt_mlp_counts(qp["mu"])[0] == tt.tt_mlp_counts(q["mu"])[0] - (1 * 2 * 2 * 1 + 1 * 2 * 4 * 3)
    x = jax.random.normal(jax.random.key(1), (5, 8))
    assert jnp.allclose(tt.tt_mlp_apply(qp["mu"], x), tt.tt_mlp_apply(q["mu"], x), atol=1e-5)
    assert bl.predictive_probs(jax.random.key(2), qp, x, 3).shape == (5, 3)
    with pytest.raises(ValueError, match="threshold"):
        bl.prune_rank_slices(q, threshold=1.5)


def test_predictive_nll():
    probs = jnp.array([[0.5, 0.5], [0.25, 0.75]])
    assert abs(float(bl.predictive_nll(probs, jnp.array([0, 1]))) - 0.5 * (np.log(2) + np.log(4 / 3))) < 1e-6
    with pytest.raises(ValueError):
        bl.predictive_nll(probs, jnp.array([0]))


def test_fit_variational_matches_a_step_by_step_reference():
    import optax

    p = tt.tt_mlp_init(jax.random.key(0), [(2, 2), (2, 4), (1, 3)], 2)
    q0, base = bl.init_variational(p, init_log_sigma=-2.0)
    x = jax.random.normal(jax.random.key(1), (20, 4))
    y = jax.nn.one_hot(jnp.argmax(x[:, :3], 1), 3)
    key, lr, num_steps, lam = jax.random.key(2), 1e-2, 15, 0.5
    # step t uses the t-th of jax.random.split(key, num_steps) for its reparameterized sample
    keys = jax.random.split(key, num_steps)
    opt = optax.adam(optax.cosine_decay_schedule(lr, num_steps, alpha=0.01))
    base_arr = jax.tree.map(jnp.asarray, base)

    @jax.jit
    def step(q, state, k):
        value, g = jax.value_and_grad(bl.negative_elbo)(q, k, x, y, base_arr, jnp.float32(lam))
        updates, state = opt.update(g, state, q)
        return optax.apply_updates(q, updates), state, value

    q, state, want_losses = q0, opt.init(q0), []
    for t in range(num_steps):
        q, state, value = step(q, state, keys[t])
        want_losses.append(value)
    got, losses = bl.fit_variational(key, q0, base, x, y, lr, num_steps, kl_weight=lam)
    assert losses.shape == (num_steps,)
    np.testing.assert_allclose(losses, jnp.stack(want_losses), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(q)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(got["mu"][0]["cores"][0], q0["mu"][0]["cores"][0])


def test_bootstrap_ece_difference():
    key = jax.random.key(0)
    p = jax.nn.softmax(3.0 * jax.random.normal(key, (400, 5)))
    labels = jax.random.randint(jax.random.key(1), (400,), 0, 5)
    d, se = bl.bootstrap_ece_difference(jax.random.key(2), p, p, labels, 50)
    assert float(d) == 0.0 and float(se) == 0.0  # a model against itself: no difference in any resample
    q = jnp.full_like(p, 0.2)  # uniform predictions: confidence 0.2, accuracy ~0.2
    d, se = bl.bootstrap_ece_difference(jax.random.key(2), p, q, labels, 100)
    assert abs(float(d) - float(bl.expected_calibration_error(p, labels) - bl.expected_calibration_error(q, labels))) < 1e-6
    assert 0.0 < float(se) < 0.1
    with pytest.raises(ValueError, match="probs_a"):
        bl.bootstrap_ece_difference(key, p, p[:10], labels)
