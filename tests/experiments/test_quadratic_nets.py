"""Quadratic networks: closed-form risk vs Monte Carlo and autodiff, the RK4 integrator, the
rank-m floor, the exact block reduction and its d -> infinity limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import quadratic_nets as q


@pytest.fixture(autouse=True)
def x64():
    # float64: the identities below are exact, and the floor/reduction checks compare to 1e-8
    with jax.enable_x64(True):
        yield


def _pair(d=6, m=4, m_star=3, seed=0, init="gaussian"):
    return q.teacher_student(jax.random.key(seed), d, m_star, m, init)


def test_risk_closed_form_matches_monte_carlo():
    W, A_star = _pair(d=5, m=3, m_star=2)
    mean, se = q.monte_carlo_risk(jax.random.key(1), W, A_star, 200_000)
    exact = q.population_risk(W, A_star)
    assert abs(mean - exact) < 5 * se
    assert se < 0.03 * exact  # the test has power: a factor-2 error in either term would fail


def test_risk_is_half_mse_of_the_network():
    W, A_star = _pair(d=4, m=2, m_star=2)
    x = jax.random.normal(jax.random.key(2), (3, 4))
    f = q.quadratic_net_apply(W, x)
    assert f.shape == (3, 1)
    np.testing.assert_allclose(f[:, 0], jnp.einsum("ni,ij,nj->n", x, W @ W.T, x), rtol=1e-12)


def test_gradient_matches_autodiff():
    W, A_star = _pair()
    np.testing.assert_allclose(jax.jit(q.risk_gradient)(W, A_star), jax.jit(jax.grad(q.population_risk))(W, A_star),
                               rtol=1e-10)


def _linear_rhs(y, M):
    return M @ y


def test_rk4_is_fourth_order():
    M = jnp.array([[-1.0, 2.0], [-2.0, -0.5]])
    y0 = jnp.array([1.0, 0.3])
    exact = jax.scipy.linalg.expm(2.0 * M) @ y0
    errs = [np.linalg.norm(q.rk4_integrate(_linear_rhs, y0, M, 2.0 / n, n, n)[1] - exact) for n in (20, 40)]
    assert 14 < errs[0] / errs[1] < 18  # halving dt divides the error by 2^4


def test_rk4_integrate_saves_initial_state_and_validates():
    obs, _ = q.rk4_integrate(_linear_rhs, jnp.ones(2), -jnp.eye(2), 0.1, 10, 5)
    assert obs.shape == (3, 2) and np.allclose(obs[0], 1.0)
    with pytest.raises(ValueError, match="multiple of save_every"):
        q.rk4_integrate(_linear_rhs, jnp.ones(2), -jnp.eye(2), 0.1, 10, 3)


def test_flow_decreases_risk_and_zero_columns_stay_zero():
    W0, A_star = _pair(d=6, m=3, m_star=2)
    padded = q.pad_columns(W0, 5)
    dt = q.suggested_dt(W0 @ W0.T, A_star)
    res = q.gradient_flow(padded, A_star, dt, 400, 20)
    ref = q.gradient_flow(W0, A_star, dt, 400, 20)
    assert np.all(np.diff(np.asarray(res.risks)) <= 1e-12)
    np.testing.assert_allclose(res.risks, ref.risks, rtol=1e-10)
    assert np.all(res.W[:, 3:] == 0)


def test_rank_m_floor_is_the_minimum_over_width_m():
    W_star = q.gaussian_columns(jax.random.key(3), 6, 4)
    A_star = W_star @ W_star.T
    m = 2
    floor = q.rank_m_risk_floor(A_star, m)
    A_opt = q.rank_m_minimizer(A_star, m)
    assert np.isclose(float(q.risk_from_matrices(A_opt, A_star)), floor, rtol=1e-12)
    # a stationary point of the width-m problem, and below the Eckart-Young truncation
    lam, U = np.linalg.eigh(A_opt)
    W = U[:, -m:] * np.sqrt(lam[-m:])
    assert np.abs(q.risk_gradient(jnp.asarray(W), A_star)).max() < 1e-10
    lam_s, U_s = np.linalg.eigh(np.asarray(A_star))
    A_ey = (U_s[:, -m:] * lam_s[-m:]) @ U_s[:, -m:].T
    assert floor < float(q.risk_from_matrices(A_ey, A_star))
    # gradient flow from a random width-m student reaches it
    W0 = q.gaussian_columns(jax.random.key(4), 6, m)
    res = q.gradient_flow(W0, A_star, q.suggested_dt(W0 @ W0.T, A_star), 6000, 6000)
    assert np.isclose(float(res.risks[-1]), floor, rtol=1e-6)
    assert q.rank_m_risk_floor(A_star, 4) == 0.0


def test_block_reduction_is_exact():
    d, m, m_star = 12, 6, 4
    W0, A_star = q.teacher_student(jax.random.key(5), d, m_star, m, "orthonormal")
    dt = q.suggested_dt(W0 @ W0.T, A_star)
    full = q.gradient_flow(W0, A_star, dt, 600, 30)
    U0 = W0 / np.sqrt(m_star / m)
    U_star = np.linalg.eigh(np.asarray(A_star))[1][:, -m_star:]
    c = q.principal_cos2(U0, U_star)
    _, risks, _ = q.block_flow(c, np.full(m_star, 1 / d), (m - m_star) / d, 0.0, m_star / m, dt, 600, 30, d=d)
    np.testing.assert_allclose(np.asarray(risks) * d, full.risks, rtol=1e-8, atol=1e-12)


def test_free_projection_law_matches_sampled_angles():
    d, alpha, beta = 600, 0.5, 0.25
    law = q.free_projection_law(alpha, beta)
    c_nodes, w = q.projection_law_quadrature(law, 256)
    assert np.isclose(w.sum(), law.continuous_mass, rtol=1e-6)
    U = q.orthonormal_columns(jax.random.key(6), d, int(alpha * d))
    V = q.orthonormal_columns(jax.random.key(7), d, int(beta * d))
    c = q.principal_cos2(U, V)
    assert np.isclose(c.sum() / d, w @ c_nodes, atol=0.01)
    assert np.isclose((c**2).sum() / d, w @ c_nodes**2, atol=0.01)
    assert law.lower - 0.02 < c.min() and c.max() < law.upper + 0.02
    over = q.free_projection_law(0.7, 0.6)
    assert np.isclose(over.intersection, 0.3) and np.isclose(over.continuous_mass, 0.3)
    with pytest.raises(ValueError, match="alpha"):
        q.free_projection_law(1.5, 0.2)


def test_limit_flow_recovers_iff_alpha_at_least_beta():
    beta = 0.25
    r_over = q.limit_flow(0.5, beta, 0.02, 500, 500, num_nodes=64)[1]
    r_under = q.limit_flow(0.125, beta, 0.02, 500, 500, num_nodes=64)[1]
    assert r_over[-1] < 1e-3 * r_over[0]
    assert np.isclose(r_under[-1], q.limit_risk_floor(0.125, beta), rtol=1e-3)
    # the finite-d floor per dimension tends to the limit floor (relative gap ~ 16/d)
    d = 800
    P_star = np.diag((np.arange(d) < d // 4).astype(float))
    assert np.isclose(q.rank_m_risk_floor(P_star, d // 8) / d, q.limit_risk_floor(0.125, beta), rtol=0.03)


def test_reduced_flows_approach_the_limit():
    a, b, dt = 0.5, 0.25, 0.002
    _, r_inf, _ = q.limit_flow(a, b, dt, 500, 100, num_nodes=128)
    errs = []
    for d in (16, 128):
        _, r = q.orthonormal_reduced_flows(jax.random.key(d), d, int(a * d), int(b * d), 4, dt, 500, 100, pad_to=32)
        errs.append(np.sqrt(np.mean(np.max(np.abs(np.asarray(r) - np.asarray(r_inf)), axis=1) ** 2)))
    assert errs[1] < errs[0] / 3  # O(1/d): a factor 8 in d


def test_recovery_sweep_shapes_and_floors():
    sweep = q.recovery_sweep(jax.random.key(8), 6, 2, [1, 2, 3], "gaussian", num_seeds=2, horizon=20.0, num_saves=2)
    assert sweep.risks.shape == (2, 3, 3) and sweep.floors.shape == (2, 3)
    assert np.all(sweep.floors[:, 0] > 0) and np.all(sweep.floors[:, 1:] == 0)
    assert np.all(sweep.final_over_initial[:, 1:] < 1e-3)
    np.testing.assert_allclose(sweep.final_over_floor[:, 0], 1.0, rtol=1e-4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="init"):
        q.teacher_student(jax.random.key(0), 4, 2, 2, "uniform")
    with pytest.raises(ValueError, match="orthonormal"):
        q.orthonormal_columns(jax.random.key(0), 3, 4)
    with pytest.raises(ValueError, match="expected"):
        q.quadratic_net_apply(jnp.ones((3, 2)), jnp.ones((5, 4)))
    with pytest.raises(ValueError, match="m_total"):
        q.pad_columns(jnp.ones((3, 2)), 1)
