"""Every SymPy result of chapter 8 checked numerically against the library (and Monte Carlo)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from scipy.optimize import minimize

from overparam.experiments import quadratic_nets as q
from overparam.derivations import quadratic_nets as sym
from overparam.derivations.symbolic import to_numeric


# float64 everywhere: exact polynomial identities compared to 1e-10
pytestmark = pytest.mark.usefixtures("x64")


@pytest.mark.parametrize("d", [2, 3])
def test_isserlis_moment_equals_closed_form_and_direct_expansion(d):
    moment, closed, B = sym.quartic_form_moment(d)
    direct, _ = sym.quartic_form_moment_direct(d)
    assert sp.expand(moment - closed) == 0 and sp.expand(direct - closed) == 0


def test_gaussian_moments_of_single_coordinates():
    assert sym.gaussian_moment((4,)) == 3 and sym.gaussian_moment((2, 2)) == 1 and sym.gaussian_moment((3, 1)) == 0
    x = sp.Symbol("x", real=True)
    density = sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)
    assert sp.integrate(x**4 * density, (x, -sp.oo, sp.oo)) == 3


def test_quartic_moment_against_monte_carlo():
    d = 3
    _, closed, B = sym.quartic_form_moment(d)
    rng = np.random.default_rng(0)
    M = rng.standard_normal((d, d)); M = (M + M.T) / 2
    subs = {B[i, j]: M[i, j] for i in range(d) for j in range(d)}
    x = rng.standard_normal((400_000, d))
    samples = np.einsum("ni,ij,nj->n", x, M, x) ** 2
    se = samples.std() / np.sqrt(samples.size)
    assert abs(samples.mean() - float(closed.subs(subs))) < 5 * se


def test_population_risk_matches_library():
    R, D = sym.population_risk(3)
    symbols = sorted(R.free_symbols, key=str)
    f = to_numeric(R, symbols, backend="numpy")
    rng = np.random.default_rng(1)
    W, Ws = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    Dn = W @ W.T - Ws @ Ws.T
    vals = {str(D[i, j]): Dn[i, j] for i in range(3) for j in range(3)}
    assert np.isclose(f(*[vals[str(s)] for s in symbols]), float(q.risk_from_matrices(Dn + Ws @ Ws.T, Ws @ Ws.T)))


def test_gradient_formula_matches_sympy_and_library():
    grad, formula = sym.risk_gradient_check(2, 2, 1)
    assert sp.expand(grad - formula) == sp.zeros(2, 2)
    R, W, Ws = sym.risk_in_weights(2, 2, 1)
    rng = np.random.default_rng(2)
    Wn, Wsn = rng.standard_normal((2, 2)), rng.standard_normal((2, 1))
    subs = {**{W[i, j]: Wn[i, j] for i in range(2) for j in range(2)}, **{Ws[i, 0]: Wsn[i, 0] for i in range(2)}}
    lib = np.asarray(q.risk_gradient(jnp.asarray(Wn), jnp.asarray(Wsn @ Wsn.T)))
    np.testing.assert_allclose(np.array(grad.subs(subs), dtype=float), lib, rtol=1e-10)


def test_rank_deficient_floor_against_numerical_minimization():
    c_opt, floor, (m, r, q_) = sym.rank_deficient_floor()
    assert sp.simplify(c_opt - r / (m + 2)) == 0 and sp.simplify(floor - (q_ + r**2 / (m + 2))) == 0
    sol, a, lam = sym.rank_deficient_stationarity(2, 3)
    assert all(sp.simplify(sol[a[i]] - lam[i] - lam[2] / 4) == 0 for i in range(2))
    # minimize the risk over width-2 students numerically for a random rank-4 teacher
    rng = np.random.default_rng(3)
    Ws = rng.standard_normal((5, 4)) / np.sqrt(5)
    A_star = Ws @ Ws.T
    risk = lambda w: float(q.risk_from_matrices(w.reshape(5, 2) @ w.reshape(5, 2).T, A_star))
    best = min(minimize(risk, rng.standard_normal(10), method="BFGS", options=dict(gtol=1e-10)).fun for _ in range(3))
    lam_sorted = np.sort(np.linalg.eigvalsh(A_star))[::-1]
    f = to_numeric(floor, (m, r, q_), backend="numpy")
    assert np.isclose(best, f(2, lam_sorted[2:].sum(), (lam_sorted[2:] ** 2).sum()), rtol=1e-6)
    assert np.isclose(best, q.rank_m_risk_floor(A_star, 2), rtol=1e-6)


def test_block_dynamics_match_library_rhs():
    out = sym.block_dynamics()
    assert out["residual"] == 0
    w1, w2, lam = out["symbols"]
    f = to_numeric(out["dw"], (w1, w2, lam), backend="numpy")
    # one block of weight 1 and d = None (limit): the library's lambda is -tr(DA)/tr(A) of that block
    w = np.array([0.3, -0.7])
    lam_eq = float(out["lambda_eq"].subs({w1: w[0], w2: w[1]}))
    state = q.BlockState(jnp.asarray(w[None]), jnp.asarray(0.0))
    masses = (jnp.ones(1), jnp.asarray(0.0), jnp.asarray(0.0))
    rhs = q._limit_rhs(state, (masses, jnp.asarray(0.0)))
    np.testing.assert_allclose(np.asarray(rhs.blocks[0]), np.asarray(f(w[0], w[1], lam_eq), dtype=float).ravel(),
                               rtol=1e-12)


def test_limit_floor_matches_library():
    expr, (alpha, beta) = sym.limit_floor()
    f = to_numeric(expr, (alpha, beta), backend="numpy")
    for a, b in [(0.125, 0.25), (0.2, 0.6)]:
        assert np.isclose(f(a, b), q.limit_risk_floor(a, b), rtol=1e-12)


def test_surplus_tail_matches_the_limit_flow_at_late_times():
    """r_tail = (alpha - beta) beta / (alpha (1 + 8t)^2) against the integrated limit (alpha = 2 beta)."""
    tail = sym.surplus_tail()
    assert tail["residual"] == 0
    alpha_s, beta_s, t_s = tail["symbols"]
    assert sp.simplify(tail["c"] - alpha_s / beta_s) == 0
    r_tail = sp.lambdify(tail["symbols"], tail["r"])
    alpha, beta = 0.25, 0.125
    t, r, _ = q.limit_flow(alpha, beta, 0.01, 3000, 30, num_nodes=64)
    t, r = np.asarray(t), np.asarray(r)
    ratio = r / r_tail(alpha, beta, t)
    late = t >= 15
    assert np.all(np.abs(ratio[late] - 1) < 0.1)
    # r_tail is the leading order: the relative error decays like 1/t (a shift of the time origin
    # by the early transient), so t (ratio - 1) is the same at t = 15 and t = 30
    i15, i30 = np.argmax(t >= 15), np.argmax(t >= 30)
    assert abs(t[i15] * (ratio[i15] - 1) / (t[i30] * (ratio[i30] - 1)) - 1) < 0.2
