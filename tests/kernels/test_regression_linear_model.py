"""Closed-form linear-model dynamics vs. explicit gradient descent on a linear model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.kernels.regression import linear_model_prediction


# float64 everywhere: exact agreement of two exact computations
pytestmark = pytest.mark.usefixtures("x64")


def _problem(n=6, m=4, p=20, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    J = jax.random.normal(k1, (n + m, p))  # features of a linear model f = J w
    w0 = jax.random.normal(k2, (p,)) * 0.1
    y = jax.random.normal(k3, (n,))
    return J[:n], J[n:], w0, y


def test_matches_explicit_gd_on_a_linear_model():
    Jtr, Jte, w0, y = _problem()
    n = Jtr.shape[0]
    ntk, ntk_te = Jtr @ Jtr.T, Jte @ Jtr.T
    lr = 0.9 * 2 * n / jnp.linalg.eigvalsh(ntk).max()
    w = w0
    for _ in range(37):
        w = w - lr * Jtr.T @ (Jtr @ w - y) / n  # gradient of 1/(2N)||Jw - y||^2
    f_tr, f_te = linear_model_prediction(ntk, ntk_te, Jtr @ w0, Jte @ w0, y, lr, num_steps=37)
    np.testing.assert_allclose(f_tr, Jtr @ w, rtol=1e-9)
    np.testing.assert_allclose(f_te, Jte @ w, rtol=1e-9)


def test_flow_limit_and_interpolation():
    Jtr, Jte, w0, y = _problem()
    ntk = Jtr @ Jtr.T
    f_tr, _ = linear_model_prediction(ntk, Jte @ Jtr.T, Jtr @ w0, Jte @ w0, y, 1.0, time=1e6)
    np.testing.assert_allclose(f_tr, y, atol=1e-8)  # p > n: the flow interpolates


def test_bad_shapes_and_arguments():
    Jtr, Jte, w0, y = _problem()
    ntk = Jtr @ Jtr.T
    with pytest.raises(ValueError, match="ntk_test_train has shape"):
        linear_model_prediction(ntk, Jte @ Jte.T, Jtr @ w0, Jte @ w0, y, 1.0, num_steps=1)
    with pytest.raises(ValueError, match="exactly one of"):
        linear_model_prediction(ntk, Jte @ Jtr.T, Jtr @ w0, Jte @ w0, y, 1.0)
