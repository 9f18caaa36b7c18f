"""Chapter 1 derivations checked against the numerical library (float64: exact comparisons)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp
from flax import nnx

from overparam.curvature import hessian_full, model_hessian_spectral_norm, model_output_fn
from overparam.derivations import linearity as L
from overparam.models import as_function, flatten_params, MLPSpec
from overparam.kernels.empirical import ntk_vjp_jvp
from overparam.derivations.symbolic import to_numeric


# float64 everywhere: Symbolic and autodiff Hessians agree to rounding only in double precision.
pytestmark = pytest.mark.usefixtures("x64")


def _net(m, d, activation, seed=0):
    model = MLPSpec.two_layer(d, m, activation).module(seed)
    apply_fn, params = as_function(model)
    return apply_fn, jax.tree.map(lambda a: a.astype(jnp.float64), params)


@pytest.mark.parametrize("act_name, sp_act", [("tanh", sp.tanh), ("erf", sp.erf)])
def test_symbolic_hessian_equals_autodiff(act_name, sp_act):
    m, d = 3, 2
    apply_fn, params = _net(m, d, act_name)
    x = jnp.array([0.7, -1.3])
    _, hess, syms = L.gradient_and_hessian(m, d, activation=lambda z: sp_act(z))
    vec, _ = flatten_params(params)
    xs = sp.symbols("x_0 x_1", real=True)
    h_num = to_numeric(hess, list(syms) + list(xs), backend="numpy")(*np.asarray(vec), *np.asarray(x))
    h_auto = hessian_full(model_output_fn(apply_fn, x), params)
    np.testing.assert_allclose(np.asarray(h_num, dtype=float), np.asarray(h_auto), rtol=1e-10, atol=1e-12)


def test_block_structure_for_a_generic_activation():
    hww, hwv, hvv = L.hessian_blocks(2, 2)
    assert hvv == sp.zeros(2, 2)
    # off-diagonal hidden units do not interact in H_WW (block diagonal over units)
    assert hww[0, 1] == 0 and hww[2, 1] == 0 and hww[0, 0] != 0


@pytest.mark.parametrize("m", [8, 64, 512])
def test_relu_hessian_norm_formula_matches_lanczos(m):
    d = 5
    apply_fn, params = _net(m, d, "relu", seed=m)
    x = jnp.linspace(-1.0, 1.5, d)
    expr, (xn, dd, mm) = L.hessian_norm_relu()
    predicted = float(expr.subs({xn: float(jnp.linalg.norm(x)), dd: d, mm: m}))
    measured = float(model_hessian_spectral_norm(apply_fn, params, x, jax.random.key(1), num_iters=40))
    assert measured == pytest.approx(predicted, rel=1e-6)


def test_expected_gradient_norm_is_ntk_diagonal():
    expr, (xn, d) = L.expected_gradient_norm_relu()
    dim, m = 4, 20000
    x = jnp.array([[1.0, -2.0, 0.5, 0.3]])
    apply_fn, params = _net(m, dim, "relu", seed=3)
    theta_xx = float(ntk_vjp_jvp(apply_fn, params, x)[0, 0])
    predicted = float(expr.subs({xn: float(jnp.linalg.norm(x)), d: dim}))
    # Monte Carlo over m hidden units: relative std about sqrt(Var/m) ~ 2/sqrt(m) = 1.4%; allow 5 sigma
    assert theta_xx == pytest.approx(predicted, rel=0.07)


def test_gradient_flow_and_gd_solutions():
    sol, (t, eta, lam, N, r0) = L.linear_model_gradient_flow()
    assert sp.simplify(sol.diff(t) + eta * lam / N * sol) == 0 and sol.subs(t, 0) == r0
    rk, (k, eta2, lam2, N2, r02) = L.linear_model_gd_step()
    assert sp.simplify(rk.subs(k, k + 1) - (1 - eta2 * lam2 / N2) * rk) == 0


def test_unit_block_eigenvalues_are_those_of_the_full_symbolic_hessian():
    # m = 2 units, d = 2, tanh at a numeric point: the non-zero spectrum of the full Hessian is the
    # union of the 2x2 unit blocks' eigenvalues.
    m, d = 2, 2
    _, hess, syms = L.gradient_and_hessian(m, d, activation=sp.tanh)
    vals = dict(zip(syms, [0.3, -1.1, 0.8, 0.4, 1.3, -0.7]))
    xv = {sp.Symbol("x_0", real=True): 0.9, sp.Symbol("x_1", real=True): -1.2}
    h = np.array(hess.subs({**vals, **xv}).evalf(), dtype=float)
    full = np.sort(np.linalg.eigvalsh(h))
    _, eigs, (a, b, xn) = L.hessian_unit_block()
    x = np.array([0.9, -1.2])
    W = np.array([[0.3, -1.1], [0.8, 0.4]])
    v = np.array([1.3, -0.7])
    z = W.T @ x / np.sqrt(d)
    t = np.tanh(z)
    s1, s2 = 1 - t**2, -2 * t * (1 - t**2)
    predicted = []
    for i in range(m):
        sub = {a: v[i] * s2[i] / (d * np.sqrt(m)), b: s1[i] / np.sqrt(d * m), xn: np.linalg.norm(x)}
        predicted += [float(e.subs(sub)) for e in eigs]
    predicted = np.sort(predicted + [0.0] * (len(full) - 2 * m))
    np.testing.assert_allclose(full, predicted, atol=1e-12)


@pytest.mark.parametrize("act_name, m", [("tanh", 16), ("tanh", 256), ("erf", 64), ("relu", 64)])
def test_exact_hessian_norm_matches_lanczos(act_name, m):
    from overparam.models import get_activation
    d = 5
    apply_fn, params = _net(m, d, act_name, seed=m + 1)
    x = jnp.linspace(-1.0, 1.5, d)
    x = x * jnp.sqrt(d) / jnp.linalg.norm(x)   # ||x||^2 = d, the formula's normalization
    g, (v, s1, s2) = L.hessian_norm_exact()
    g_num = sp.lambdify((v, s1, s2), g, "numpy")
    act = get_activation(act_name)
    w = np.asarray(params["layers"][0]["w"][...])
    vv = np.asarray(params["layers"][1]["w"][...])[:, 0]
    z = np.asarray(x) @ w / np.sqrt(d)
    d1 = np.asarray(jax.vmap(jax.grad(act))(jnp.asarray(z)))
    d2 = np.asarray(jax.vmap(jax.grad(jax.grad(act)))(jnp.asarray(z)))
    predicted = float(np.max(g_num(vv, d1, d2))) / np.sqrt(m)
    measured = float(model_hessian_spectral_norm(apply_fn, params, x, jax.random.key(2), num_iters=min(2 * m, 200)))
    assert measured == pytest.approx(predicted, rel=1e-6)
