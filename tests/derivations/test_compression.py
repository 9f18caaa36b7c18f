import math

import numpy as np
import sympy as sp

from overparam.experiments import tensorized as tt
from overparam.derivations import compression as sym


def test_counts_match_numeric_module():
    m = [4, 4, 4]
    n = [4, 8, 8]
    for r in (1, 2, 4, 8):
        assert int(sym.tt_params(m, n, [r, r])) == tt.tt_param_count(m, n, (r, r))
        assert int(sym.tt_macs(m, n, [r, r])) == tt.tt_macs(m, n, (r, r))
    assert int(sym.dense_params(m, n)) == 64 * 256


def test_uniform_closed_form():
    p, macs, dense, ratio = sym.uniform_tt(3)
    mm, nn, rr = sp.symbols("m n r", positive=True, integer=True)
    assert sp.simplify(p - (2 * mm * nn * rr + mm * nn * rr**2)) == 0
    assert int(p.subs({mm: 4, nn: 8, rr: 3})) == tt.tt_param_count((4,) * 3, (8,) * 3, (3, 3))
    assert int(macs.subs({mm: 4, nn: 8, rr: 3})) == tt.tt_macs((4,) * 3, (8,) * 3, (3, 3))
    assert float(ratio.subs({mm: 4, nn: 8, rr: 3})) == 4**3 * 8**3 / tt.tt_param_count((4,) * 3, (8,) * 3, (3, 3))


def test_init_variance_monte_carlo():
    var, v_star = sym.tt_init_variance(3)
    rng = np.random.default_rng(0)
    v = 0.3
    g = [rng.normal(0, math.sqrt(v), size=(200_000, r0, r1)) for r0, r1 in ((1, 2), (2, 3), (3, 1))]
    w = np.einsum("sab,sbc,scd->s", *g)
    pred = float(sym.subs_by_name(var, v=v, r1=2, r2=3))
    assert abs(w.var() / pred - 1) < 0.05
    assert abs(float(sym.subs_by_name(v_star, g=2, M=64, r1=4, r2=4)) ** 3 * 16 - 2 / 64) < 1e-12


def test_risk_quadratic_minimizer():
    rho, risk, rho_star, ratio = sym.risk_quadratic()
    vals = {"AA": 0.2, "ASe": -0.05, "SeSe": 0.3, "N": 1.1}
    f = sp.lambdify(rho, sym.subs_by_name(risk, **vals))
    grid = np.linspace(-1, 2, 30001)
    assert abs(grid[np.argmin(f(grid))] - float(sym.subs_by_name(rho_star, **vals))) < 1e-3
    assert sp.simplify(sym.subs_by_name(rho_star, ASe=0, SeSe=0)) == 1
    assert abs(float(sym.subs_by_name(ratio, **vals)) - f(1.0) / f(0.0)) < 1e-12


def test_rho_star_gap_is_one_minus_rho_star():
    _, _, rho_star, _ = sym.risk_quadratic()
    gap = sym.rho_star_gap()
    vals = {"AA": 0.2, "ASe": -0.05, "SeSe": 0.02, "N": 0.03}  # <A,Se> + |Se|^2 < 0 -> rho* > 1
    assert abs(float(sym.subs_by_name(gap, **vals)) - (1 - float(sym.subs_by_name(rho_star, **vals)))) < 1e-12
    assert float(sym.subs_by_name(gap, **vals)) < 0
    assert abs(float(sym.subs_by_name(gap, **vals)) - (-0.05 + 0.02) / (0.03 + 0.02)) < 1e-12
