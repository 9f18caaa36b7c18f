"""Tests of overparam.data: shapes, determinism, and the formats of the offline data sets."""

import pickle
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from overparam.data import (
    CIFAR10_FILES,
    Dataset,
    gaussian_inputs,
    load_cifar10,
    load_digits_data,
    load_mnist1d_data,
    low_rank_polynomial,
    sphere_inputs,
    split_dataset,
    teacher_targets,
)
from overparam.models import MLPSpec


def test_inputs():
    key = jax.random.key(0)
    assert gaussian_inputs(key, 5, 3).shape == (5, 3)
    np.testing.assert_allclose(jnp.linalg.norm(sphere_inputs(key, 6, 9), axis=1), 3.0, rtol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(sphere_inputs(key, 6, 9, radius=1.0), axis=1), 1.0, rtol=1e-6)


def test_teacher_is_the_documented_network():
    key, x = jax.random.key(1), gaussian_inputs(jax.random.key(2), 7, 3)
    teacher = MLPSpec((3, 5, 2), "erf").module(jax.random.split(key)[0])
    np.testing.assert_allclose(teacher_targets(key, x, (3, 5, 2), "erf"), teacher(x), rtol=1e-5, atol=1e-6)
    noisy = teacher_targets(key, x, (3, 5, 2), "erf", noise=0.5)
    assert noisy.shape == (7, 2) and 0.1 < float(jnp.std(noisy - teacher(x))) < 1.0
    with pytest.raises(ValueError, match=r"\(7, 3\).*\(N, 4\)"):
        teacher_targets(key, x, (4, 5, 1))


def test_low_rank_polynomials():
    x = gaussian_inputs(jax.random.key(0), 20000, 4)
    np.testing.assert_allclose(low_rank_polynomial(x, "x1x2")[:, 0], x[:, 0] * x[:, 1])
    for kind in ("linear", "hermite2", "hermite3", "x1x2", "x1x2x3"):
        y = low_rank_polynomial(x, kind)
        assert y.shape == (20000, 1)
        assert abs(float(y.mean())) < 0.05 and float(y.var()) == pytest.approx(1.0, abs=0.1)
    with pytest.raises(ValueError, match="kind='x1x4'.*allowed"):
        low_rank_polynomial(x, "x1x4")
    with pytest.raises(ValueError, match=r"\(20000, 2\).*d >= 3"):
        low_rank_polynomial(x[:, :2], "x1x2x3")


def test_dataset_shapes_and_split():
    x, y = jnp.arange(20.0).reshape(10, 2), jnp.arange(10.0)[:, None]
    data = split_dataset(jax.random.key(0), x, y, 6, 3)
    assert (data.n_train, data.n_test) == (6, 3)
    np.testing.assert_array_equal(data.x_train[:, 0] / 2, data.y_train[:, 0])  # rows stay paired
    assert not set(data.y_train[:, 0].tolist()) & set(data.y_test[:, 0].tolist())
    with pytest.raises(ValueError, match=r"x_train has shape \(10, 2\).*y_train has shape \(9, 1\)"):
        Dataset(x, y[:9], x, y)
    with pytest.raises(ValueError, match="n_train=8, n_test=3"):
        split_dataset(jax.random.key(0), x, y, 8, 3)


def test_digits():
    data = load_digits_data(200, 100, seed=0)
    assert data.x_train.shape == (200, 64) and data.y_test.shape == (100, 10)
    np.testing.assert_allclose(data.y_train.sum(1), 1.0)
    np.testing.assert_allclose(data.x_train.mean(0), 0.0, atol=1e-5)  # standardized on train
    two = load_digits_data(50, 20, seed=1, classes=[3, 8])
    assert two.y_train.shape == (50, 1) and set(np.unique(two.y_train).tolist()) == {-1.0, 1.0}
    again = load_digits_data(50, 20, seed=1, classes=[3, 8])
    np.testing.assert_array_equal(two.x_test, again.x_test)
    with pytest.raises(ValueError, match="n_train=2000"):
        load_digits_data(2000, 10)
    with pytest.raises(ValueError, match="classes"):
        load_digits_data(10, 10, classes=[3, 3])


def test_mnist1d_generated_locally_and_global_rng_untouched():
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(), random.random())
    np.random.seed(123)
    random.seed(123)
    data = load_mnist1d_data(40, 20, seed=3)
    assert (np.random.rand(), random.random()) == expected
    assert data.x_train.shape == (40, 40) and data.y_train.shape == (40, 10)
    np.testing.assert_array_equal(data.x_train, load_mnist1d_data(40, 20, seed=3).x_train)


def test_cifar10_reader(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path)
    assert str(tmp_path) in str(info.value) and "data_batch_1" in str(info.value) and "test_batch" in str(info.value)
    # Fake batches in the python-pickle format: rows are 3 x 32 x 32 planes (R, G, B).
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": list(rng.integers(0, 10, 4))}, handle)
    data = load_cifar10(tmp_path)
    assert data.x_train.shape == (20, 32, 32, 3) and data.y_test.shape == (4, 10)
    with open(tmp_path / "test_batch", "rb") as handle:
        raw = pickle.load(handle)
    row, col, channel = 5, 17, 2
    assert float(data.x_test[1, row, col, channel]) == pytest.approx(raw[b"data"][1, channel * 1024 + row * 32 + col] / 255)
    np.testing.assert_array_equal(np.argmax(data.y_test, 1), raw[b"labels"])
    assert load_cifar10(tmp_path, n_train=6, flatten=True).x_train.shape == (6, 3072)
