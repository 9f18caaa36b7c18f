"""Every SymPy result of the curvature chapter, checked against the numerical library code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from flax import nnx

from overparam.experiments import fisher
from overparam.experiments import hessian_rank as hr
from overparam.experiments import natural_gradient as ng
from overparam.derivations import hessian_fisher as cur
from overparam.models import as_function, MLPSpec
from overparam.derivations.symbolic import to_numeric
from overparam.kernels.analytic import ntk_fc
from overparam.kernels.empirical import block_grams, mlp_layer_features, output_jacobian


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


@pytest.mark.parametrize("widths,n,r", [((2, 3, 2), 4, 2), ((3, 2, 2), 4, 3), ((2, 2, 2, 2), 3, 2),
                                        ((3, 1, 3, 2), 4, 3)])
def test_exact_ranks_equal_formula_and_float64(widths, n, r):
    exact = cur.exact_hessian_ranks(widths, n, r, seed=1)
    pred = hr.deep_linear_rank_formula(widths, r)
    assert (exact["outer"], exact["functional"], exact["full"]) == (pred.outer, pred.functional, pred.full)
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


def test_functional_rank_by_rotation_is_the_released_formula():
    """The general rank H_f follows from the no-bottleneck theorem by the basis change and the cyclic rotation."""
    derived, general, s = cur.functional_rank_by_rotation()
    assert sp.simplify(derived - general) == 0
    base, bs = cur.no_bottleneck_functional_rank()
    # where no hidden width is below s (q = s) the general formula is the paper's theorem
    assert sp.simplify(general.subs(s["q"], s["s"]) - base.subs({bs["s"]: s["s"], bs["S"]: s["S"]})) == 0


@pytest.mark.parametrize("nodes", [(2, 3, 2), (1, 3, 2), (2, 1, 3, 2)])
def test_cycle_trace_rank_is_rotation_invariant_and_matches_no_bottleneck_formula(nodes):
    """Step 2 of the derivation in exact arithmetic: the rank is the same for every rotation of the cycle."""
    ranks = {cur.exact_cycle_trace_rank(nodes[i:] + nodes[:i], seed=i) for i in range(len(nodes))}
    assert len(ranks) == 1
    base, bs = cur.no_bottleneck_functional_rank()
    q = min(nodes)
    value = base.subs({bs["s"]: q, bs["S"]: sum(nodes) - q, bs["L"]: len(nodes)})
    assert ranks.pop() == value


@pytest.mark.parametrize("widths,n", [((6, 2, 8, 4), 12), ((5, 3, 3, 4), 12), ((6, 7, 3, 8, 4), 12),
                                      ((3, 8, 1, 8, 2), 5), ((6, 2, 7, 4), 3)])
def test_bottleneck_formula_equals_float64_rank(widths, n):
    """Bottleneck shapes (some M_i < s): the derived formula equals the float64 rank; the theorem's form does not."""
    r = min(widths[0], n)
    row = hr.deep_linear_rank_check(2, widths, n, r)
    assert row["functional"] == row["functional_pred"]
    base, bs = cur.no_bottleneck_functional_rank()
    s_val, hidden = min(r, widths[-1]), widths[1:-1]
    if min(hidden) < s_val:
        naive = base.subs({bs["s"]: s_val, bs["S"]: sum(hidden), bs["L"]: len(widths) - 1})
        assert naive != row["functional"]


def test_block_diagonal_operator_push_through_and_limits(x64):
    """Damped block-diagonal NGD: A = sum_b Theta_b (Theta_b + rho N)^-1; rho -> 0: I or the projection on col(J_b)."""
    operator, push, limits, s = cur.block_diagonal_operator(num_examples=2, block_sizes=(3, 1))
    assert (operator - push).applyfunc(sp.cancel) == sp.zeros(2, 2)
    assert limits[0] == sp.eye(2)                                  # p_1 = 3 >= N: the identity
    j2 = s["blocks"][1]
    proj = (j2 * (j2.T * j2).inv() * j2.T).applyfunc(sp.cancel)   # p_2 = 1 < N: a rank-one projection
    assert (limits[1] - proj).applyfunc(sp.cancel) == sp.zeros(2, 2)
    assert limits[1].rank() == 1
    # numerics: the library's block-diagonal operator of a small net is the push-through form
    model = MLPSpec((3, 4, 1), "relu", "ntk", use_bias=False)
    params, x, rho = model.init(0), jax.random.normal(jax.random.key(1), (5, 3)), 0.05
    a = np.asarray(ng.function_space_operator("block_diag", model, params, x, rho))
    grams = [np.asarray(g) for g in block_grams(output_jacobian(model, params, x))]
    expected = sum(g @ np.linalg.inv(g + rho * 5 * np.eye(5)) for g in grams)
    np.testing.assert_allclose(a, expected, atol=1e-10)


def test_push_through_commutator_vanishes_and_the_ngd_operator_is_the_parameter_space_one(x64):
    """(J^T J + rho) J^T = J^T (J J^T + rho) for every shape; the library's N x N operator is the P x P definition."""
    comm, s = cur.push_through_commutator()
    assert comm == sp.ZeroMatrix(s["p"], s["n"])
    model = MLPSpec((3, 4, 1), "relu", "ntk", use_bias=False)
    params, x, rho = model.init(0), jax.random.normal(jax.random.key(1), (5, 3)), 0.05
    jac = np.concatenate([np.asarray(j).reshape(5, -1) for j in jax.tree.leaves(output_jacobian(model, params, x))], axis=1)
    fisher_damped = jac.T @ jac / 5 + rho * np.eye(jac.shape[1])                  # P x P, P = 16 > N = 5
    expected = jac @ np.linalg.solve(fisher_damped, jac.T) / 5
    np.testing.assert_allclose(np.asarray(ng.function_space_operator("ngd", model, params, x, rho)), expected, atol=1e-12)


def test_layer_jacobian_rows_are_kronecker_products():
    """The chain rule through an unspecified rest of the network F gives rows a_n (x) delta_n; the last layer delta_n = 1."""
    a = cur._symbolic("a", 2, 3)
    jac, delta = cur.layer_jacobian(a, 2)
    assert jac == sp.Matrix([list(sp.kronecker_product(a[i, :], delta[i, :])) for i in range(2)])
    last, ones = cur.layer_jacobian(a, 1, last_layer=True)
    assert ones == sp.ones(2, 1) and last == a
    with pytest.raises(ValueError, match="last_layer"):
        cur.layer_jacobian(a, 2, last_layer=True)


@pytest.mark.parametrize("n,n_in,n_out,last", [(3, 2, 2, False), (2, 3, 3, False), (2, 1, 3, False),
                                               (3, 2, 1, True), (2, 3, 1, True)])
def test_kfac_layer_term_is_the_hadamard_product_of_projections(n, n_in, n_out, last):
    """rho -> 0 of K-FAC's damped term, formed in parameter space, is N (P_a o P_delta): factors invertible or singular."""
    term, hadamard, s = cur.kfac_layer_operator(n, n_in, n_out, last_layer=last)
    assert cur.rational_zero(term - hadamard)
    off_diagonal = [term[i, j] for i in range(n) for j in range(n) if i != j]
    if last:      # deltas all one (rank-one delta Gram): the term is P_a, the identity iff the inputs span R^N
        assert cur.rational_zero(term - s["P_a"])
        assert (term == sp.eye(n)) == (n_in >= n)
    elif n_out >= n:   # deltas span R^N: P_delta = I and the term is N diag(P_a), diagonal by the derivation
        assert all(v == 0 for v in off_diagonal) and (n_in >= n) == (term == n * sp.eye(n))
    else:         # generic: not diagonal
        assert any(v != 0 for v in off_diagonal)


def test_kfac_network_operator_is_the_closed_form_and_can_fail():
    """Widths >= N: first layer N diag(h), hidden N I, last I, summing to (1 + (L-2) N) I + N diag(h)."""
    net = cur.kfac_network_operator(num_examples=2, input_dim=1, width=3, depth=3)
    assert cur.rational_zero(net["operator"] - net["closed_form"])
    assert net["terms"][1] == 2 * sp.eye(2) and net["terms"][2] == sp.eye(2)
    assert sp.simplify(sum(net["leverage"])) == 1                                      # leverages sum to d = 1
    # control: a hidden width below N (2 < N = 3) breaks P_delta = I and the closed form with it (one exact
    # rational point where the difference is non-zero proves it is not identically zero)
    narrow = cur.kfac_network_operator(num_examples=3, input_dim=1, width=2, depth=3)
    diff = narrow["operator"] - narrow["closed_form"]
    point = {v: sp.Integer(k % 7 + 1) * (-1) ** k for k, v in enumerate(sorted(diff.free_symbols, key=str))}
    assert diff.subs(point) != sp.zeros(3, 3)
    with pytest.raises(ValueError, match="depth"):
        cur.kfac_network_operator(depth=1)


def test_kfac_derivation_matches_the_library(x64):
    """The damped symbolic terms at a small net's features equal kfac_layer_terms; the rho -> 0 operator, kfac_operator."""
    net = cur.kfac_network_operator(num_examples=2, input_dim=1, width=3, depth=3)
    spec = MLPSpec((1, 3, 3, 1), "tanh", "ntk", use_bias=False)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), spec.init(0))
    x = jax.random.normal(jax.random.key(1), (2, 1), jnp.float64)
    acts, deltas = mlp_layer_features(spec, params, x)
    rho = 0.1                                                # a damping that matters: the comparison is sharp
    lib_terms = ng.kfac_layer_terms(spec, params, x, rho)
    for layer, (_, _, w_mult, _), a_l, d_l, lib in zip(net["layers"], spec.layer_scales(), acts, deltas, lib_terms):
        values = {**dict(zip(layer["a"], np.ravel(w_mult * np.asarray(a_l)))),
                  **dict(zip(layer["delta"], np.ravel(np.asarray(d_l[:, :, 0])))), layer["rho"]: rho}
        symbols = [sym for sym in values if sym in layer["term_rho"].free_symbols]
        damped = to_numeric(layer["term_rho"], symbols, backend="numpy")(*[values[sym] for sym in symbols])
        np.testing.assert_allclose(np.asarray(damped, dtype=float), np.asarray(lib), rtol=1e-12, atol=1e-12)
    op = to_numeric(net["operator"], list(net["x"]), backend="numpy")(*np.ravel(np.asarray(x)))
    np.testing.assert_allclose(np.asarray(op, dtype=float), np.asarray(ng.kfac_operator(spec, params, x, 1e-12)),
                               atol=1e-9)
    # larger net, numerics only: each library term is N (P_a o P_delta) of the layer features
    model = MLPSpec((3, 8, 8, 1), "relu", "ntk", use_bias=False)
    params, x = model.init(0), jax.random.normal(jax.random.key(1), (5, 3))
    terms = ng.kfac_layer_terms(model, params, x, 1e-12)
    acts, deltas = mlp_layer_features(model, params, x)
    proj = lambda z: z @ np.linalg.pinv(z)  # noqa: E731
    for t, a_l, d_l in zip(terms, acts, deltas):
        pa, pd = proj(np.asarray(a_l)), proj(np.asarray(d_l[:, :, 0]))
        np.testing.assert_allclose(np.asarray(t), 5 * pa * pd, atol=1e-6)


def test_relu_fisher_moments_match_the_float_code_and_the_analytic_ntk(x64):
    """kappa_1, kappa_2 (and their overlap slope) against fisher's float recursion and kernels.analytic.ntk_fc."""
    exact = cur.relu_fisher_moments(3, input_ratio=1)
    slope = cur.relu_kappa2_slope(3, input_ratio=1)
    num = fisher.relu_fisher_moments(3, 1.0)
    for k in ("kappa1", "kappa2", "kappa1_ntk", "kappa2_ntk"):
        np.testing.assert_allclose(float(exact[k]), num[k], rtol=1e-12)
    for k in ("kappa2_slope", "kappa2_slope_ntk"):
        np.testing.assert_allclose(float(slope[k]), num[k], rtol=1e-8)
    assert exact["kappa1"] == 3 and exact["kappa1_ntk"] == 6      # sigma_w^2 = 2: q^l_1 = 1, qh^l_1 = 1
    # the analytic NTK (NTK parameterization) of two unit-norm-per-coordinate inputs with overlap rho
    d = 64
    e = np.eye(d)
    for rho in (0.0, 0.1, -0.2):
        x = np.stack([e[0] * np.sqrt(d), (rho * e[0] + np.sqrt(1 - rho**2) * e[1]) * np.sqrt(d)])
        theta = np.asarray(ntk_fc(jnp.asarray(x), depth=3, sigma_w=np.sqrt(2.0)))
        mom = cur.relu_fisher_moments(3, 1, 2, input_correlation=sp.nsimplify(rho))
        np.testing.assert_allclose(theta[0, 0], float(mom["kappa1_ntk"]), rtol=1e-10)
        np.testing.assert_allclose(theta[0, 1], float(mom["kappa2_ntk"]), rtol=1e-10)
    with pytest.raises(ValueError, match="depth"):
        cur.relu_fisher_moments(1)


def test_fisher_value_predictions_and_centred_edge():
    """lambda_max, bulk, outlier/bulk ratio (the same in both parameterizations) and the centred top of the bulk."""
    out, s = cur.fisher_value_predictions()
    assert s["c"] not in out["outlier_over_bulk"].free_symbols
    gram, centered, gs = cur.mean_field_gram(6)
    vals = {gs["M"]: 40, gs["kappa1"]: 3.0, gs["kappa2"]: 0.7}
    eig = np.linalg.eigvalsh(np.array(gram.subs(vals), dtype=float))
    sub = {s["c"]: 40, s["N"]: 6, s["kappa1"]: 3.0, s["kappa2"]: 0.7}
    np.testing.assert_allclose(eig[-1], float(out["lam_max"].subs(sub)), rtol=1e-12)
    np.testing.assert_allclose(eig[:-1], float(out["bulk"].subs(sub)), rtol=1e-12)
    mom = fisher.relu_fisher_moments(3, 1.0)
    pred = fisher.fisher_predictions(mom, 40, 6, "standard")
    np.testing.assert_allclose(pred["lam_max"], float(out["lam_max"].subs({**sub, s["kappa2"]: mom["kappa2"]})), rtol=1e-12)
    # the centred edge: a linearized kernel on Gaussian inputs, (c/N)[(k1-k2-k2') I + k2 11^T + k2' X X^T/d]
    edge, es = cur.centred_lambda_max()
    n, d = 300, 1200
    x = np.random.default_rng(0).normal(size=(n, d))
    k1, k2, k2p = mom["kappa1_ntk"], mom["kappa2_ntk"], mom["kappa2_slope_ntk"]
    g = ((k1 - k2 - k2p) * np.eye(n) + k2 + k2p * x @ x.T / d) / n
    c_mat = np.eye(n) - 1.0 / n
    top = np.linalg.eigvalsh(c_mat @ g @ c_mat)[-1]
    predicted = float(edge.subs({es["c"]: 1, es["N"]: n, es["d"]: d, es["kappa1"]: k1, es["kappa2"]: k2,
                                 es["kappa2_slope"]: k2p}))
    np.testing.assert_allclose(top, predicted, rtol=0.02)           # Tracy-Widom: ~ N^(-2/3) relative
    np.testing.assert_allclose(fisher.fisher_predictions(mom, 1, n, "ntk", input_dim=d)["centered"], predicted,
                               rtol=1e-12)
    assert top > 1.3 * float(out["bulk"].subs({s["c"]: 1, s["N"]: n, s["kappa1"]: k1, s["kappa2"]: k2}))
