"""Chapter 3 derivations (uv model, catapult regimes, NQM) checked against autodiff and the library."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from flax import nnx

from overparam.experiments import catapult_phase as C
from overparam.derivations import catapult as D
from overparam.models import as_function, flatten_params, MLPSpec
from overparam.derivations.symbolic import to_numeric
from overparam.taylor import quadratize
from overparam.training import max_stable_lr


# float64 everywhere: Symbolic formulas and autodiff GD steps must agree to rounding: only float64 resolves the O(lr^2/m) terms of the uv update well below their own size.
pytestmark = pytest.mark.usefixtures("x64")


def _uv_params(m, seed):
    return C.uv_init(jax.random.key(seed), m, jnp.float64)


def _gd_step(params, x, y, lr, kappa=1.0):
    """One autodiff GD step on L = kappa/2 (f - y)^2 of the uv model."""
    loss = lambda p: 0.5 * kappa * jnp.sum((C.uv_apply(p, x) - y) ** 2)
    grads = jax.grad(loss)(params)
    return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def _invariants(p):
    u, v = p["u"], p["v"]
    return float(u @ u), float(v @ v), float(u @ v)


def test_uv_gradient_and_kernel_match_autodiff():
    model = D.uv_model()
    assert sp.simplify(model["kernel"] - D.x**2 * (D.U + D.V) / D.m) == 0
    m, xv = 7, 1.3
    p = _uv_params(m, 0)
    x = jnp.array([[xv]])
    g = jax.grad(lambda q: C.uv_apply(q, x)[0, 0])(p)
    np.testing.assert_allclose(g["u"], xv * p["v"] / np.sqrt(m), rtol=1e-12)
    U, V, P = _invariants(p)
    kern = float(model["kernel"].subs({D.U: U, D.V: V, D.x: xv, D.m: m}))
    assert kern == pytest.approx(float(sum(jnp.sum(l**2) for l in jax.tree.leaves(g))), rel=1e-12)
    assert kern == pytest.approx(float(C.uv_kernel(p, x)), rel=1e-12)


@pytest.mark.parametrize("kappa", [1.0, 0.25])
def test_invariant_updates_match_one_autodiff_step(kappa):
    new = D.uv_gd_invariants()
    m, xv, yv, lr = 6, 0.8, 0.7, 1.9
    p = _uv_params(m, 1)
    x, y = jnp.array([[xv]]), jnp.array([[yv]])
    U, V, P = _invariants(p)
    vals = {D.U: U, D.V: V, D.P: P, D.x: xv, D.y: yv, D.m: m, D.eta: lr, D.kappa: kappa}
    got = [float(new[k].subs(vals)) for k in (D.U, D.V, D.P)]
    np.testing.assert_allclose(got, _invariants(_gd_step(p, x, y, lr, kappa)), rtol=1e-11)


def test_residual_kernel_map_derived_equals_closed_form_and_library():
    derived = D.uv_one_step()
    closed = D.uv_one_step_closed_form()
    for a, b in zip(derived, closed):
        assert sp.simplify(a - b) == 0
    syms = (D.r, D.lam, D.eta, D.x, D.y, D.m)
    num = [to_numeric(e.subs(D.kappa, 1), syms, backend="numpy") for e in derived]
    args = (0.37, 2.1, 1.4, 0.9, -0.6, 5.0)
    lib = C.uv_step(*args)
    np.testing.assert_allclose([num[0](*args), num[1](*args)], [float(lib[0]), float(lib[1])], rtol=1e-12)


@pytest.mark.parametrize("a0", [1.5, 3.0])
def test_residual_kernel_map_matches_autodiff_gd(a0):
    # the exact (r, lambda) map and GD on (u, v) agree step by step, also through a catapult
    m, xv, yv = 16, 1.0, 1.0
    p = _uv_params(m, 2)
    x, y = jnp.array([[xv]]), jnp.array([[yv]])
    lam = float(C.uv_kernel(p, x))
    lr = a0 / lam
    r = float(C.uv_apply(p, x)[0, 0]) - yv
    for _ in range(25):
        r, lam = C.uv_step(r, lam, lr, xv, yv, m)
        p = _gd_step(p, x, y, lr)
        assert float(r) == pytest.approx(float(C.uv_apply(p, x)[0, 0]) - yv, rel=1e-8, abs=1e-10)
        assert float(lam) == pytest.approx(float(C.uv_kernel(p, x)), rel=1e-8)


def test_scaled_map_and_invariant():
    a_next, z_next, invariant = D.uv_scaled_map()
    assert invariant == 0
    assert sp.simplify(z_next - D.z * (1 - D.a + D.z) ** 2) == 0
    assert sp.simplify(a_next - (D.a - D.z * (4 - D.a))) == 0
    # numerically: iterate the library map with y = 0 and compare the scaled variables
    m, xv, lr, r, lam = 50.0, 1.2, 1.1, 2.5, 2.9
    a, z = lr * lam, (lr * xv * r) ** 2 / m
    r1, lam1 = C.uv_step(r, lam, lr, xv, 0.0, m)
    vals = {D.a: a, D.z: z}
    assert float(a_next.subs(vals)) == pytest.approx(lr * float(lam1), rel=1e-12)
    assert float(z_next.subs(vals)) == pytest.approx((lr * xv * float(r1)) ** 2 / m, rel=1e-12)


def test_regimes_are_the_intervals_of_the_chapter():
    reg = D.uv_regimes()
    assert reg["lazy"] == sp.Interval.open(0, 2)
    assert reg["catapult"] == sp.Interval.open(2, 4)
    assert reg["diverge"] == sp.Interval.open(4, sp.oo)
    assert sp.simplify(reg["eta_max"] - 2 * reg["eta_lazy"]) == 0


def test_linear_model_threshold_matches_training_module():
    factor, eta_max = D.linear_model_threshold()
    N = 12
    a = np.random.default_rng(0).standard_normal((N, 5))
    theta = a @ a.T
    mu = float(np.linalg.eigvalsh(theta)[-1])
    sym = float(eta_max.subs({sp.Symbol("N", positive=True, integer=True): N, sp.Symbol("mu", positive=True): mu}))
    assert sym == pytest.approx(float(max_stable_lr(jnp.asarray(theta))), rel=1e-12)


def test_taylor_model_is_exact_for_quadratics_and_rejects_bad_order():
    p, q = sp.symbols("p q")
    expr = 3 * p * q + p**2 - 2 * q + 1
    assert sp.expand(D.taylor_model(expr, [p, q], [0.5, -1], order=2) - expr) == 0
    with pytest.raises(ValueError, match="order"):
        D.taylor_model(expr, [p, q], [0, 0], order=3)
    with pytest.raises(ValueError, match="params0"):
        D.taylor_model(expr, [p, q], [0], order=2)


def test_symbolic_nqm_matches_quadratize():
    m_units, d = 2, 2
    f_quad, _, params, params0, xs = D.two_layer_nqm(m_units, d, activation=sp.tanh)
    apply_fn, p0 = as_function(MLPSpec.two_layer(d, m_units, "tanh").module(0))
    p0 = jax.tree.map(lambda a: a.astype(jnp.float64), p0)
    vec0, unflatten = flatten_params(p0)
    vec = vec0 + 0.4 * jax.random.normal(jax.random.key(5), vec0.shape, jnp.float64)
    x = jnp.array([0.7, -1.1])
    num = to_numeric(f_quad, list(params) + list(params0) + list(xs), backend="numpy")
    sym_val = num(*np.asarray(vec), *np.asarray(vec0), *np.asarray(x))
    lib_val = quadratize(apply_fn, p0)(unflatten(vec), x[None])[0, 0]
    assert float(sym_val) == pytest.approx(float(lib_val), rel=1e-10)


def test_uv_model_is_its_own_quadratic_model():
    p0, p = _uv_params(9, 3), _uv_params(9, 4)
    x = jnp.array([[0.6], [-1.4]])
    np.testing.assert_allclose(quadratize(C.uv_apply, p0)(p, x), C.uv_apply(p, x), rtol=1e-12)


def test_relu_unit_nqm_gap_matches_the_numerical_nqm():
    """The symbolic one-unit gap (v |h| after a flip, 0 otherwise) against quadratize and relu_nqm_gap."""
    out = D.relu_unit_nqm_gap()
    assert out["flip_gap"] == 0 and out["gap_on_on"] == 0 and out["gap_off_off"] == 0
    spec = MLPSpec.two_layer(1, 1, "relu", "ntk")
    p0 = spec.init(jax.random.key(0))
    w0 = float(p0["layers"][0]["w"][...][0, 0])
    x = jnp.array([[1.0 if w0 > 0 else -1.0]])                       # unit on at params0
    (w_in, w_out), treedef = jax.tree.flatten(p0)
    p = jax.tree.unflatten(treedef, [-2.0 * w_in, 1.5 * w_out])     # the unit flips off, v is rescaled
    numeric = float((spec(p, x) - quadratize(spec, p0)(p, x))[0, 0])
    h = float((x @ p["layers"][0]["w"][...])[0, 0]); v = float(p["layers"][1]["w"][...][0, 0])
    symbolic = float(out["gap_on_off"].subs({out["h_neg"]: h, out["v"]: v}))
    assert numeric == pytest.approx(symbolic, rel=1e-10) and abs(numeric) > 0
    assert float(C.relu_nqm_gap(p0, p, x)[0, 0]) == pytest.approx(symbolic, rel=1e-10)
