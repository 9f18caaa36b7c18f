"""Kernel regression, the NNGP posterior and the gradient-flow (NTK-GP) prediction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

from overparam.kernels.regression import gp_posterior, gradient_flow_prediction, kernel_regression
from overparam.kernels.regression import linear_model_prediction
from overparam.training import mse_loss


# float64 everywhere: exact identities between exact computations (solves, exponentials)
pytestmark = pytest.mark.usefixtures("x64")


def _problem(n=7, m=4, p=30, k=1, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n + m, p))
    kern = feats @ feats.T / p
    y = rng.normal(size=(n, k)) if k > 1 else rng.normal(size=n)
    return jnp.asarray(kern), jnp.asarray(feats), jnp.asarray(y)


def test_ridgeless_regression_interpolates_and_ridge_matches_a_solve():
    kern, _, y = _problem()
    ktt, kst = kern[:7, :7], kern[7:, :7]
    np.testing.assert_allclose(kernel_regression(ktt, ktt, y), y, atol=1e-9)
    pred = kernel_regression(ktt, kst, y, ridge=0.3)
    np.testing.assert_allclose(pred, kst @ np.linalg.solve(ktt + 0.3 * np.eye(7), y), rtol=1e-10)


def test_multi_output_is_columnwise():
    kern, _, y = _problem(k=3)
    ktt, kst = kern[:7, :7], kern[7:, :7]
    pred = gradient_flow_prediction(ktt, kst, y, t=2.0).mean
    for j in range(3):
        np.testing.assert_allclose(pred[:, j], gradient_flow_prediction(ktt, kst, y[:, j], t=2.0).mean, rtol=1e-12)


def test_flow_at_infinity_is_kernel_regression_and_interpolates():
    kern, _, y = _problem()
    ktt, kst = kern[:7, :7], kern[7:, :7]
    f0 = jnp.linspace(-1, 1, 7)
    pred = gradient_flow_prediction(ktt, kst, y)
    np.testing.assert_allclose(pred.mean, kernel_regression(ktt, kst, y), rtol=1e-9)
    pred = gradient_flow_prediction(ktt, kst, y, f0, jnp.zeros(4), t=jnp.inf)
    np.testing.assert_allclose(pred.mean_train, y, atol=1e-8)


def test_flow_matches_matrix_exponential_and_linear_dynamics_module():
    kern, _, y = _problem()
    ktt, kst = np.asarray(kern[:7, :7]), np.asarray(kern[7:, :7])
    f0, f0s, t, n = np.linspace(-1, 1, 7), np.linspace(0, 1, 4), 3.0, 7
    a = kst @ np.linalg.solve(ktt, np.eye(n) - expm(-t * ktt / n))
    pred = gradient_flow_prediction(ktt, kst, y, f0, f0s, t=t)
    np.testing.assert_allclose(pred.mean, f0s + a @ (np.asarray(y) - f0), rtol=1e-8)
    _, other = linear_model_prediction(jnp.asarray(ktt), jnp.asarray(kst), f0, f0s, y, lr=1.0, time=t)
    np.testing.assert_allclose(pred.mean, other, rtol=1e-8)


def test_discrete_steps_match_gradient_descent_on_a_linear_model():
    # f(w) = Phi w has tangent kernel Phi Phi^T; train_gd uses mse_loss = 1/(2N) sum (f - y)^2
    _, feats, y = _problem()
    phi_tr, phi_te = feats[:7], feats[7:]
    w0 = jnp.asarray(np.random.default_rng(3).normal(size=feats.shape[1])) * 0.1
    ntk = phi_tr @ phi_tr.T
    lr, steps = 0.5 * 7 / float(jnp.linalg.eigvalsh(ntk)[-1]), 40
    grad = jax.grad(lambda w: mse_loss((phi_tr @ w)[:, None], y[:, None]))
    w = w0
    for _ in range(steps):  # plain loop: training.train_gd's scan does not trace under x64
        w = w - lr * grad(w)
    pred = gradient_flow_prediction(ntk, phi_te @ phi_tr.T, y, phi_tr @ w0, phi_te @ w0, lr=lr, num_steps=steps)
    np.testing.assert_allclose(pred.mean, phi_te @ w, rtol=1e-9)
    np.testing.assert_allclose(pred.mean_train, phi_tr @ w, rtol=1e-9)
    # gradient flow at t = lr * steps is the small-lr limit: close, not equal, at this lr
    flow = gradient_flow_prediction(ntk, phi_te @ phi_tr.T, y, phi_tr @ w0, phi_te @ w0, t=lr * steps)
    assert np.max(np.abs(flow.mean - pred.mean)) < 0.2 * np.max(np.abs(pred.mean - phi_te @ w0))


def test_covariance_over_initializations():
    # f_t(x*) = f0(x*) + A (y - f0(X)) is linear in f0 ~ GP(0, K): cov = [I, -A] K_joint [I, -A]^T
    kern, _, y = _problem(seed=1)
    ntk = kern * 2.0 + 0.1
    ktt, kst = ntk[:7, :7], ntk[7:, :7]
    t, n = 5.0, 7
    a = np.asarray(kst) @ np.linalg.solve(np.asarray(ktt), np.eye(n) - expm(-t * np.asarray(ktt) / n))
    joint = np.asarray(kern)
    lin = np.hstack([-a, np.eye(4)])  # columns ordered (train, test) like ``joint``
    expected = lin @ joint @ lin.T
    pred = gradient_flow_prediction(ktt, kst, y, t=t, nngp_train_train=kern[:7, :7],
                                    nngp_test_train=kern[7:, :7], nngp_test_test=kern[7:, 7:])
    np.testing.assert_allclose(pred.cov, expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(pred.mean, a @ np.asarray(y), rtol=1e-8)
    # at t = infinity with Theta = K the prediction is the NNGP posterior mean and covariance
    pinf = gradient_flow_prediction(kern[:7, :7], kern[7:, :7], y, nngp_train_train=kern[:7, :7],
                                    nngp_test_train=kern[7:, :7], nngp_test_test=kern[7:, 7:])
    mean, cov = gp_posterior(kern[:7, :7], kern[7:, :7], kern[7:, 7:], y)
    np.testing.assert_allclose(pinf.mean, mean, rtol=1e-8)
    np.testing.assert_allclose(pinf.cov, cov, atol=1e-10)


def test_gp_posterior_has_zero_variance_at_training_points():
    kern, _, y = _problem()
    mean, cov = gp_posterior(kern[:7, :7], kern[:7, :7], kern[:7, :7], y)
    np.testing.assert_allclose(mean, y, atol=1e-8)
    np.testing.assert_allclose(cov, 0.0, atol=1e-8)
    _, cov = gp_posterior(kern[:7, :7], kern[7:, :7], kern[7:, 7:], y, noise=0.1)
    assert np.linalg.eigvalsh(np.asarray(cov)).min() > -1e-12


def test_bad_arguments_raise():
    kern, _, y = _problem()
    with pytest.raises(ValueError, match="k_train_train"):
        kernel_regression(kern[:7, :6], kern[7:, :7], y)
    with pytest.raises(ValueError, match="y_train"):
        kernel_regression(kern[:7, :7], kern[7:, :7], y[:5])
    with pytest.raises(ValueError, match="num_steps needs lr"):
        gradient_flow_prediction(kern[:7, :7], kern[7:, :7], y, num_steps=3)
    with pytest.raises(ValueError, match="all three"):
        gradient_flow_prediction(kern[:7, :7], kern[7:, :7], y, nngp_train_train=kern[:7, :7])
