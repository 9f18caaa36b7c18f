"""Every SymPy result of the curvature chapter, checked against the numerical library code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from flax import nnx

from overparam.experiments import hessian_rank as hr
from overparam.experiments import natural_gradient as ng
from overparam.derivations import hessian_fisher as cur
from overparam.models import as_function, MLPSpec
from overparam.derivations.symbolic import to_numeric


# Tests that take the x64 fixture (conftest.py): symbolic vs numeric agreement to ~1e-12


def test_gauss_newton_split(x64):
    hess, outer, functional, residual = cur.gauss_newton_split()
    assert residual == sp.zeros(2, 2)
    w1, w2, x, y = sp.symbols("w_1 w_2 x y", real=True)
    expr = (outer + functional).subs(sp.Function("sigma"), sp.Lambda(sp.Symbol("t"), sp.tanh(sp.Symbol("t"))))
    numeric = to_numeric(expr.doit(), [w1, w2, x, y], backend="numpy")(0.7, -1.3, 0.4, 0.2)
    loss = lambda p: 0.5 * (p[1] * jnp.tanh(p[0] * 0.4) - 0.2) ** 2  # noqa: E731
    np.testing.assert_allclose(np.asarray(numeric, dtype=float), jax.hessian(loss)(jnp.array([0.7, -1.3])), atol=1e-12)


def test_two_layer_functional_block_matches_closed_form():
    c, omega, rank = cur.two_layer_functional_block(d=2, m=2, k=2)
    assert rank == 2 * 2  # M * rank(Omega) for a generic Omega
    rank_one = c.subs({omega[1, 0]: 2 * omega[0, 0], omega[1, 1]: 2 * omega[0, 1]})
    assert rank_one.rank() == 2 * 1
    weights, x, y = hr.random_deep_linear_problem(0, (2, 2, 2), 5, 2)
    parts = hr.deep_linear_hessian_parts(weights, x, y)
    om = x.T @ (x @ weights[0] @ weights[1] - y) / 5
    numeric = np.array(c.subs({omega[i, j]: om[i, j] for i in range(2) for j in range(2)}), dtype=float)
    np.testing.assert_allclose(parts.functional[:4, 4:], numeric, atol=1e-12)


@pytest.mark.parametrize("widths,n,r", [((2, 3, 2), 4, 2), ((3, 2, 2), 4, 3), ((2, 2, 2, 2), 3, 2)])
def test_exact_ranks_equal_formula_and_float64(widths, n, r):
    exact = cur.exact_hessian_ranks(widths, n, r, seed=1)
    pred = hr.deep_linear_rank_formula(widths, r)
    assert (exact["outer"], exact["full"]) == (pred.outer, pred.full)
    if pred.functional is not None:
        assert exact["functional"] == pred.functional
    row = hr.deep_linear_rank_check(1, widths, n, r)
    assert (row["outer"], row["functional"], row["full"]) == (exact["outer"], exact["functional"], exact["full"])


def test_symbolic_formulas_equal_library_formula():
    exprs, s = cur.rank_formulas()
    for widths, r in [((6, 5, 5, 4), 3), ((8, 9, 7, 6, 4), 8), ((3, 10, 2), 3)]:
        hidden, k, depth = widths[1:-1], widths[-1], len(widths) - 1
        q, sv = min(r, k, *hidden), min(r, k)
        values = {s["r"]: r, s["K"]: k, s["q"]: q, s["s"]: sv, s["S"]: sum(hidden), s["L"]: depth}
        pred = hr.deep_linear_rank_formula(widths, r)
        assert exprs["outer"].subs(values) == pred.outer
        assert exprs["full"].subs(values) == pred.full
        assert exprs["functional"].subs(values) == pred.functional


def test_rank_ratio_leading_term():
    ratio, leading, s = cur.rank_ratio_equal_widths()
    values = {s["q"]: 2, s["r"]: 4, s["K"]: 2, s["d"]: 4, s["L"]: 3}
    assert leading.subs(values) == 8
    for m in (8, 64, 4096):
        pred = hr.deep_linear_rank_formula((4, m, m, 2), 4)
        assert sp.nsimplify(ratio.subs(values).subs(s["M"], m)) == sp.Rational(pred.full, pred.num_params)


def test_mean_field_gram_eigenvalues():
    gram, centered, s = cur.mean_field_gram(5)
    formulas, fs = cur.fisher_eigen_formulas()
    values = {s["M"]: 64, s["kappa1"]: 1.3, s["kappa2"]: 0.4}
    eig = np.linalg.eigvalsh(np.array(gram.subs(values), dtype=float))
    fvals = {fs["M"]: 64, fs["N"]: 5, fs["kappa1"]: 1.3, fs["kappa2"]: 0.4}
    np.testing.assert_allclose(eig[-1], float(formulas["lam_max"].subs(fvals)), rtol=1e-12)
    np.testing.assert_allclose(eig[:-1], float(formulas["lam_bulk"].subs(fvals)), rtol=1e-12)
    eig_c = np.linalg.eigvalsh(np.array(centered.subs(values), dtype=float))
    np.testing.assert_allclose(eig_c[-1], float(formulas["lam_max_centered"].subs(fvals)), rtol=1e-12)
    assert abs(eig_c[0]) < 1e-12
    np.testing.assert_allclose(np.trace(np.array(gram.subs(values), dtype=float)), 64 * 1.3, rtol=1e-12)


def test_fisher_slopes():
    formulas, s = cur.fisher_eigen_formulas()
    slopes = {k: cur.loglog_slope(v, s["M"]) for k, v in formulas.items()}
    assert slopes["lam_mean"] == -1 and slopes["lam_max"] == 1
    c = sp.Symbol("c", positive=True)
    assert cur.loglog_slope(formulas["lam_max_centered"].subs(s["N"], c * s["M"]), s["M"]) == 0
    assert sp.limit(cur.loglog_slope(formulas["lam_max"].subs(s["N"], c * s["M"]), s["M"]), s["M"], sp.oo) == 1


def test_mode_factors_match_the_operator(x64):
    gd, ngd, limit, s = cur.mode_factors()
    assert limit == 1 - s["eta"]
    model = MLPSpec((3, 16, 1), "relu", "ntk", use_bias=False).module(0)
    apply_fn, params = as_function(model)
    x = jax.random.normal(jax.random.key(1), (5, 3))
    rho, eta = 0.05, 0.3
    lam = np.linalg.eigvalsh(np.asarray(ng.function_space_operator("gd", apply_fn, params, x) * 5))
    a = np.asarray(ng.function_space_operator("ngd", apply_fn, params, x, rho))
    f_ngd = to_numeric(ngd, [s["eta"], s["lam"], s["N"], s["rho"]], backend="numpy")
    f_gd = to_numeric(gd, [s["eta"], s["lam"], s["N"]], backend="numpy")
    np.testing.assert_allclose(np.sort(np.linalg.eigvals(np.eye(5) - eta * a).real), np.sort(f_ngd(eta, lam, 5, rho)), atol=1e-10)
    g = np.asarray(ng.function_space_operator("gd", apply_fn, params, x))
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(np.eye(5) - eta * g)), np.sort(f_gd(eta, lam, 5)), atol=1e-10)


def test_block_diagonal_and_kfac_first_layer():
    assert cur.block_diagonal_operator(2, 2) == 2 * sp.eye(2)
    operator, trace = cur.kfac_first_layer_operator(3, 2)
    assert trace == 2
    x = np.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.3]])
    sym = sp.Matrix(3, 2, lambda i, j: sp.Symbol(f"x_{i + 1}{j + 1}"))
    numeric = np.array(operator.subs({sym[i, j]: x[i, j] for i in range(3) for j in range(2)}), dtype=float)
    proj = x @ np.linalg.solve(x.T @ x, x.T)
    np.testing.assert_allclose(numeric, 3 * np.diag(np.diag(proj)), atol=1e-12)
