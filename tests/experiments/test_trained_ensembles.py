"""Tests of overparam.experiments.trained_ensembles: settings of the ensemble runs, and the kernel regime."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.kernels.regression import gradient_flow_prediction, kernel_regression
from overparam.experiments.trained_ensembles import (ensemble_mean_gap_ratio, ensemble_mean_gap_ratio_null_sd,
                                                     ensemble_mean_sq_gaps, gp_draws, mean_sq_z_null_sd,
                                                     ridge_fit_distance, standardized_residuals, train_mlp_ensemble)


def test_train_mlp_ensemble_settings_and_the_kernel_regime():
    # float32 here is fine: the comparisons are loose (finite width), and float64 doubles the time
    with jax.enable_x64(False):
        from overparam.kernels.analytic import ntk_fc
        from overparam.kernels.regression import gradient_flow_prediction

        rng = np.random.default_rng(0)
        x, xt = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32), jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
        y = jnp.asarray(rng.normal(size=(8, 1)), jnp.float32)
        theta = ntk_fc(jnp.concatenate([x, xt]), None, 2, "relu", 1.4, 0.1)
        lr = 8 / float(jnp.linalg.eigvalsh(theta[:8, :8])[-1])
        run = train_mlp_ensemble(jax.random.key(0), x, y, xt, 2, 4096, [0.0, 0.0, lr], 100, "relu", 1.4, 0.1, 2,
                                 weight_decay=[0.0, 1.0, 0.0], centered=[False, True, False])
        assert run.f_test.shape == (3, 2, 5, 1) and run.f0_train.shape == (2, 8, 1)
        np.testing.assert_allclose(run.f_test[0], run.f0_test, atol=1e-6)  # lr = 0: nothing moves
        np.testing.assert_allclose(run.f_test[1], 0.0, atol=1e-6)  # a centred net starts at zero
        assert not bool(run.diverged.any())
        # width 4096: the trained net is within O(1/sqrt(n)) of the NTK prediction from its own f0
        for s in range(2):
            pred = gradient_flow_prediction(theta[:8, :8], theta[8:, :8], y, run.f0_train[s], run.f0_test[s],
                                            t=lr * 100).mean
            moved = np.linalg.norm(pred - run.f0_test[s])
            assert np.linalg.norm(run.f_test[2, s] - pred) < 5 / np.sqrt(4096) * moved + 1e-3
    with pytest.raises(ValueError, match="depth"):
        train_mlp_ensemble(jax.random.key(0), x, y, xt, 1, 16, [0.1], 2)


def _correlated_gaussian(m=6, k=2):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(m, m))
    cov = a @ a.T / m + 0.5 * np.eye(m)
    return rng.normal(size=(m, k)), cov


def test_calibration_statistics_against_draws_of_the_predicted_gaussian():
    """Isserlis' Var(mean z^2) and the 1/k ensembling law, checked on draws from the Gaussian itself."""
    mean, cov = _correlated_gaussian()
    draws = gp_draws(jax.random.key(3), mean, cov, num_nets=16, num_draws=4000)  # (4000, 16, 6, 2)
    assert draws.shape == (4000, 16, 6, 2)
    np.testing.assert_allclose(draws.reshape(-1, 6, 2).mean(0), mean, atol=0.03)
    z2 = np.array([np.mean(standardized_residuals(d, mean, cov) ** 2) for d in draws])
    assert abs(z2.mean() - 1.0) < 4 * z2.std() / np.sqrt(len(z2))
    np.testing.assert_allclose(z2.std(), mean_sq_z_null_sd(cov, 16, num_outputs=2), rtol=0.06)
    # a wrong variance (cov / 2) doubles z^2
    assert abs(np.mean(standardized_residuals(draws[0], mean, cov / 2) ** 2) - 2 * z2[0]) < 1e-9
    gaps = np.mean([ensemble_mean_sq_gaps(d, mean, [1, 2, 4]) for d in draws[:1000]], axis=0)
    np.testing.assert_allclose(gaps, np.trace(cov) / 6 / np.array([1, 2, 4]), rtol=0.05)
    with pytest.raises(ValueError, match="ensemble size"):
        ensemble_mean_sq_gaps(draws[0], mean, [32])
    with pytest.raises(ValueError, match="expected"):
        standardized_residuals(draws[0], mean[:3], cov)


def test_whole_ensemble_gap_ratio_null_and_a_shifted_mean():
    """The ratio's mean 1 and standard deviation on draws of the Gaussian; a shifted mean adds S ||shift||^2 / (K tr C)."""
    mean, cov = _correlated_gaussian()
    draws = gp_draws(jax.random.key(5), mean, cov, num_nets=16, num_draws=4000)
    ratios = np.array([ensemble_mean_gap_ratio(d, mean, cov) for d in draws])
    assert abs(ratios.mean() - 1.0) < 4 * ratios.std() / np.sqrt(len(ratios))
    np.testing.assert_allclose(ratios.std(), ensemble_mean_gap_ratio_null_sd(cov, num_outputs=2), rtol=0.06)
    shift = np.full_like(mean, 0.1)
    shifted = np.array([ensemble_mean_gap_ratio(d, mean + shift, cov) for d in draws[:2000]])
    predicted = 1 + 16 * np.sum(shift**2) / (2 * np.trace(cov))
    assert abs(shifted.mean() - predicted) < 4 * shifted.std() / np.sqrt(len(shifted))


def test_ridge_fit_distance_of_the_flow_and_its_arguments():
    """The flow itself is within 0.2036 ||y|| of ridge 1/t; with ridge 0 limits the distance is the flow's residual."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 20))
    theta, y = a @ a.T / 20, rng.normal(size=(8, 1))
    times = np.geomspace(0.5, 200.0, 6)
    flow = np.stack([np.asarray(gradient_flow_prediction(theta, theta, y, t=t).mean) for t in times])[:, None]
    d = ridge_fit_distance(flow, theta, y, times)
    assert d.shape == (6, 1) and d.max() <= 0.2036322 and d.max() > 0.05
    assert ridge_fit_distance(flow, theta, y, times, 10.0).max() > d.max()
    # a network that has not moved is ||ridge fit|| / ||y|| away
    zero = np.zeros_like(flow)
    np.testing.assert_allclose(ridge_fit_distance(zero[:1], theta, y, times[:1])[0, 0],
                               np.linalg.norm(kernel_regression(theta, theta, y, ridge=8 / times[0])) / np.linalg.norm(y))
    with pytest.raises(ValueError, match="positive"):
        ridge_fit_distance(flow, theta, y, -times)
    with pytest.raises(ValueError, match="expected"):
        ridge_fit_distance(flow[:3], theta, y, times)
