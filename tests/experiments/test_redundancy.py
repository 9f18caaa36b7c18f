"""Grouping neurons by activity correlation, and the MLP helpers of the redundancy experiment."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from overparam.experiments import redundancy as rd
from overparam.data import Dataset


def _clones(num_features=3, copies=(4, 2, 1), num_dead=2, noise=0.05, n=400, seed=0):
    """Activities of neurons that are noisy, rescaled, shifted copies of a few base features, plus dead ones."""
    rng = np.random.default_rng(seed)
    base = np.maximum(rng.normal(size=(n, num_features)), 0) + rng.normal(size=(n, num_features))
    cols, truth = [], []
    for f, k in enumerate(copies):
        for _ in range(k):
            cols.append(rng.uniform(0.5, 3) * base[:, f] + rng.normal() + noise * rng.normal(size=n))
            truth.append(f)
    cols += [np.zeros(n)] * num_dead
    truth += [-1] * num_dead
    return np.stack(cols, axis=1), np.array(truth)


def test_group_neurons_recovers_planted_clones_and_dead_neurons():
    acts, truth = _clones()
    labels = rd.group_neurons(acts, threshold=0.9)
    assert (labels[truth == -1] == -1).all()
    live = truth >= 0
    # same planted feature <=> same group (up to relabelling)
    same_truth = truth[live][:, None] == truth[live][None, :]
    same_label = labels[live][:, None] == labels[live][None, :]
    assert (same_truth == same_label).all()
    s = rd.summarize_groups(labels)
    assert (s.width, s.num_live, s.num_groups) == (9, 7, 3)
    assert s.mean_group_size == pytest.approx(7 / 3)
    assert s.frac_redundant == pytest.approx(6 / 7)  # the singleton feature has no copy


def test_independent_neurons_form_singletons():
    rng = np.random.default_rng(1)
    labels = rd.group_neurons(rng.normal(size=(500, 30)), threshold=0.5)
    s = rd.summarize_groups(labels)
    assert s.num_groups == 30 and s.frac_redundant == 0.0


def test_correlation_and_bad_input():
    acts, _ = _clones()
    corr, live = rd.activity_correlation(acts)
    assert corr.shape == (7, 7) and live.sum() == 7
    np.testing.assert_allclose(np.diag(corr), 1.0)
    np.testing.assert_allclose(corr[0, 1], np.corrcoef(acts[:, 0], acts[:, 1])[0, 1])
    with pytest.raises(ValueError, match="threshold"):
        rd.group_neurons(acts, threshold=1.0)
    with pytest.raises(ValueError, match="acts"):
        rd.group_neurons(np.ones(5))
    assert rd.summarize_groups(np.full(4, -1)).num_groups == 0


def test_mlp_training_and_last_hidden_activity():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(60, 5)), jnp.float32)
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    y = jnp.eye(3)[labels]
    data = Dataset(x, y, x[:10], y[:10])
    widths = rd.mlp_widths(5, 16, 24, 3)
    apply_fn, res = rd.train_mlp_weight_decay(jax.random.key(0), widths, data, [0.0, 1e-2], optax.adam(1e-2), 200, 50)
    assert res.records.shape == (2, 4)
    p0 = jax.tree.map(lambda a: a[0], res.params)
    assert float(jnp.mean(jnp.argmax(apply_fn(p0, x), 1) == labels)) > 0.9
    norms = [sum(float(jnp.sum(v[i] ** 2)) for v in jax.tree.leaves(res.params)) for i in range(2)]
    assert norms[1] < norms[0]  # weight decay shrinks the parameters
    acts = rd.last_hidden_activity(widths, p0, x)
    assert acts.shape == (60, 24) and float(acts.min()) >= 0.0
    # the readout of the last hidden layer reproduces the network output
    w_last, b_last = p0["layers"][2]["w"][...], p0["layers"][2]["b"][...]
    np.testing.assert_allclose(acts @ w_last + b_last, apply_fn(p0, x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="lams"):
        rd.train_mlp_weight_decay(jax.random.key(0), widths, data, [-1.0], optax.adam(1e-2), 10, 5)
