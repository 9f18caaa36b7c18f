"""Weight-decay derivations (chapter 06), each checked numerically.

float64 NumPy throughout: the checks compare minima and thresholds to ~1e-8 relative.
"""

import numpy as np
import pytest
import sympy as sp
from scipy.optimize import minimize, minimize_scalar

from overparam.derivations import weight_decay as wd
from overparam.derivations.symbolic import to_numeric


def test_relu_is_positively_homogeneous():
    assert wd.relu_homogeneity_residuals() == (0, 0)
    rng = np.random.default_rng(0)
    z, c = rng.normal(size=100), rng.uniform(0.1, 5, size=100)
    np.testing.assert_allclose(np.maximum(c * z, 0), c * np.maximum(z, 0))


def test_two_layer_rescaling_minimum_is_2ab_at_balance():
    r = wd.two_layer_rescaling()
    a, b, alpha = r["symbols"]
    assert sp.simplify(r["minimum"] - 2 * a * b) == 0
    obj = to_numeric(r["objective"], (a, b, alpha), backend="numpy")
    for av, bv in [(0.3, 2.0), (5.0, 0.1), (1.0, 1.0)]:
        num = minimize_scalar(lambda s: obj(av, bv, np.exp(s)), bounds=(-10, 10), method="bounded",
                              options=dict(xatol=1e-12))
        assert num.fun == pytest.approx(2 * av * bv, rel=1e-8)
        alpha_star = float(r["alpha_star"].subs({a: av, b: bv}))
        assert alpha_star * av == pytest.approx(bv / alpha_star)  # balanced layer norms


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_depth_rescaling_minimum_matches_amgm_and_numerics(depth):
    r = wd.depth_rescaling_minimum(depth)
    bound, norms = wd.amgm_bound(depth)
    assert sp.simplify(r["minimum"] - bound) == 0
    for rescaled in r["rescaled_norms"]:
        assert sp.simplify(rescaled - r["balanced_norm"]) == 0
    rng = np.random.default_rng(depth)
    n = rng.uniform(0.2, 4.0, size=depth)
    f_bound = to_numeric(bound, norms, backend="numpy")

    def penalty(log_alpha):  # alpha_L fixed by prod alpha = 1
        la = np.append(log_alpha, -log_alpha.sum())
        return np.sum((np.exp(la) * n) ** 2)

    num = minimize(penalty, np.zeros(depth - 1), method="BFGS", options=dict(gtol=1e-12))
    assert num.fun == pytest.approx(f_bound(*n), rel=1e-7)
    # any other rescaling costs more (AM-GM)
    for _ in range(20):
        assert penalty(rng.normal(size=depth - 1)) >= f_bound(*n) * (1 - 1e-12)


def test_amgm_rejects_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        wd.amgm_bound(0)
    with pytest.raises(ValueError, match="num_subnets"):
        wd.parallel_penalty(3, 0)


def test_imbalance_decays_like_exp_minus_4_lambda_t_under_gradient_descent():
    """Small-step GD on mse + lam ||W||^2 of a depth-3 subnetwork: D_t follows D_0 exp(-4 lam t)."""
    r = wd.imbalance_flow()
    t_sym, lam_sym, d0_sym = r["symbols"]
    rng = np.random.default_rng(1)
    x = np.c_[rng.uniform(-1, 1, size=(20, 1)), np.ones((20, 1))]
    y = np.sin(3 * x[:, 0])
    w1, w2, w3 = 1.5 * rng.normal(size=(2, 3)), 0.5 * rng.normal(size=(3, 3)), 0.3 * rng.normal(size=(3, 1))
    lam, lr, steps = 0.5, 1e-4, 5000

    def grads(w1, w2, w3):
        h1 = x @ w1; a1 = np.maximum(h1, 0); h2 = a1 @ w2; a2 = np.maximum(h2, 0); f = (a2 @ w3)[:, 0]
        r_ = (f - y)[:, None] / len(y)
        g3 = a2.T @ r_; d2 = (r_ @ w3.T) * (h2 > 0); g2 = a1.T @ d2; d1 = (d2 @ w2.T) * (h1 > 0); g1 = x.T @ d1
        return g1 + 2 * lam * w1, g2 + 2 * lam * w2, g3 + 2 * lam * w3

    d0 = np.sum(w1**2) - np.sum(w2**2)
    for _ in range(steps):
        g = grads(w1, w2, w3)
        w1, w2, w3 = w1 - lr * g[0], w2 - lr * g[1], w3 - lr * g[2]
    predicted = float(r["solution"].subs({t_sym: lr * steps, lam_sym: lam, d0_sym: d0}))
    measured = np.sum(w1**2) - np.sum(w2**2)
    assert measured == pytest.approx(predicted, rel=2e-3)  # O(lr) discretization error
    assert abs(measured) < 0.5 * abs(d0)  # it did decay


def test_parallel_penalty_is_lp_quasinorm_and_split_cost():
    r = wd.parallel_penalty(3, 2)
    assert r["p"] == sp.Rational(2, 3)
    c1, c2 = r["coefficients"]
    assert sp.simplify(r["penalty"] - 3 * r["lam"] * (c1 ** sp.Rational(2, 3) + c2 ** sp.Rational(2, 3))) == 0
    s = wd.split_cost()
    k, c, p = s["symbols"]
    cost = to_numeric(s["cost"], (k, c, p), backend="numpy")
    # spreading one coefficient over more subnetworks: dearer for p < 1, neutral at p = 1, cheaper for p > 1
    assert cost(4.0, 2.0, 2 / 3) > cost(1.0, 2.0, 2 / 3)
    assert cost(4.0, 2.0, 1.0) == pytest.approx(cost(1.0, 2.0, 1.0))
    assert cost(4.0, 2.0, 2.0) < cost(1.0, 2.0, 2.0)
    assert cost(3.0, 1.7, 0.5) == pytest.approx(3 * (1.7 / 3) ** 0.5)


@pytest.mark.parametrize("p,mu", [(2 / 3, 0.05), (0.5, 0.2), (0.25, 0.01)])
def test_lp_threshold_matches_brute_force(p, mu):
    r = wd.lp_threshold()
    c_s, z_s, mu_s, p_s = r["symbols"]
    c_thr = float(r["c_thr"].subs({mu_s: mu, p_s: p}))
    z_thr = float(r["z_thr"].subs({mu_s: mu, p_s: p}))
    assert c_thr == pytest.approx((2 * mu * (1 - p)) ** (1 / (2 - p)), rel=1e-12)
    assert z_thr == pytest.approx(c_thr * (2 - p) / (2 * (1 - p)), rel=1e-12)
    grid = np.linspace(0, 3 * z_thr, 600001)

    def argmin(z):
        return grid[np.argmin((grid - z) ** 2 / 2 + mu * grid**p)]

    assert argmin(0.99 * z_thr) == 0.0
    above = argmin(1.01 * z_thr)
    assert above > 0.9 * c_thr  # jumps from 0 to about c_thr: no small nonzero solutions
    # both thresholds grow with mu
    assert float(r["c_thr"].subs({mu_s: 2 * mu, p_s: p})) > c_thr


def test_imbalance_identity_is_exact_symbolically():
    r = wd.imbalance_identity()
    assert r["residual"] == 0
