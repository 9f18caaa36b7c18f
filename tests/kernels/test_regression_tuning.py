"""Kernel ridge tuning: the RBF kernel, centred ridge predictions against direct solves, the grid search."""

import jax
import numpy as np
import pytest

from overparam.kernels import regression as kr



def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(-1, 1, size=(n, 1)), axis=0)
    y = np.sin(4 * x) + 0.1 * rng.normal(size=(n, 1))
    return x, y


def _rbf64(x1, x2=None, bandwidth=1.0):
    with jax.enable_x64(True):
        return np.asarray(kr.rbf_kernel(np.asarray(x1, np.float64), None if x2 is None else np.asarray(x2, np.float64), bandwidth))


def test_rbf_kernel_formula_and_psd():
    x, _ = _data()
    k = _rbf64(x, bandwidth=0.3)
    assert k.shape == (40, 40) and k.dtype == np.float64
    assert k[3, 7] == pytest.approx(np.exp(-((x[3, 0] - x[7, 0]) ** 2) / (2 * 0.09)))
    np.testing.assert_allclose(np.diag(k), 1.0)
    assert np.linalg.eigvalsh(k).min() > -1e-10
    with pytest.raises(ValueError, match="bandwidth"):
        kr.rbf_kernel(x, bandwidth=0.0)
    with pytest.raises(ValueError, match="shape"):
        kr.rbf_kernel(x, np.ones((3, 2)))


def test_krr_predict_equals_direct_centred_solve():
    x, y = _data()
    x_eval = np.linspace(-1, 1, 17)[:, None]
    k, k_eval = _rbf64(x, bandwidth=0.3), _rbf64(x_eval, x, bandwidth=0.3)
    eps = np.array([1e-6, 1e-3, 1e-1])
    path = kr.krr_predict(k, k_eval, y, eps)
    assert path.shape == (3, 17, 1)
    ybar, scale = y.mean(), np.trace(k) / len(y)
    for r, e in enumerate(eps):
        direct = ybar + k_eval @ np.linalg.solve(k + e * scale * np.eye(len(y)), y - ybar)
        np.testing.assert_allclose(path[r], direct, rtol=1e-6, atol=1e-8)


def test_krr_predict_agrees_with_shared_kernel_regression():
    """The one-eigendecomposition path gives the shared ``kernel_regression`` estimator (float64)."""
    from overparam.kernels.regression import kernel_regression

    x, y = _data()
    x_eval = np.linspace(-1, 1, 11)[:, None]
    k, k_eval = _rbf64(x, bandwidth=0.2), _rbf64(x_eval, x, bandwidth=0.2)
    (path,) = kr.krr_predict(k, k_eval, y, [1e-3])
    ridge = 1e-3 * np.trace(k) / len(y)
    with jax.enable_x64(True):
        shared = y.mean() + np.asarray(kernel_regression(k, k_eval, y - y.mean(), ridge))
    np.testing.assert_allclose(path, shared, rtol=1e-8, atol=1e-10)


def test_krr_limits_interpolation_and_mean():
    x, y = _data()
    k = _rbf64(x, bandwidth=0.01)  # well conditioned: points ~0.05 apart
    tiny, huge = kr.krr_predict(k, k, y[:, 0], [1e-12, 1e8])
    np.testing.assert_allclose(tiny, y, atol=1e-3)  # interpolates the training data
    np.testing.assert_allclose(huge, y.mean(), atol=1e-6)  # shrinks to the training mean


def test_krr_predict_rejects_bad_input():
    x, y = _data()
    k = _rbf64(x)
    with pytest.raises(ValueError, match="rel_ridges"):
        kr.krr_predict(k, k, y, [0.0])
    with pytest.raises(ValueError, match="shapes"):
        kr.krr_predict(k, k[:, :5], y, [1.0])


def test_tune_krr_finds_grid_minimum():
    x, y = _data(60)
    x_eval = np.linspace(-1, 1, 101)[:, None]
    f_eval = np.sin(4 * x_eval)
    grid = [dict(bandwidth=h) for h in (0.03, 0.3, 3.0)]
    eps = np.logspace(-8, 0, 9)
    fit = kr.tune_krr(kr.rbf_kernel, grid, x, y, x_eval, f_eval, eps)
    assert fit.mse.shape == (3, 9)
    i, j = np.unravel_index(np.argmin(fit.mse), fit.mse.shape)
    assert fit.best_params == grid[i] and fit.best_rel_ridge == eps[j] and fit.best_mse == fit.mse[i, j]
    assert fit.best_params == dict(bandwidth=0.3)  # sin(4x) is smooth on the scale 0.3
    np.testing.assert_allclose(np.mean((fit.prediction - f_eval) ** 2), fit.best_mse)
    with pytest.raises(ValueError, match="params_grid"):
        kr.tune_krr(kr.rbf_kernel, [], x, y, x_eval, f_eval, eps)
