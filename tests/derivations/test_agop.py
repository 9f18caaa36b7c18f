"""Checks of overparam.derivations.agop against numbers: Monte Carlo, autodiff, eigendecompositions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

from overparam.experiments.agop import agop_from_jacobians, input_gradients
from overparam.data import low_rank_polynomial
from overparam.derivations import agop as A
from overparam.derivations import catapult as C
from overparam.derivations.symbolic import to_numeric


def test_gaussian_moments():
    assert [A.gaussian_moment(k) for k in range(7)] == [1, 0, 1, 0, 3, 0, 15]
    z1, z2 = sp.symbols("z1 z2")
    assert A.gaussian_expectation(z1**2 * z2**2 + z1 * z2 + 3, [z1, z2]) == 4
    assert A.gaussian_expectation((z1**3 - 3 * z1) ** 2, [z1]) == 6  # E He_3^2 = 3!
    with pytest.raises(ValueError, match="k=-1"):
        A.gaussian_moment(-1)


@pytest.mark.parametrize("kind", A.TARGET_NAMES)
def test_symbolic_target_matches_data_module(kind):
    g, zs = A.target_polynomial(kind)
    x = jax.random.normal(jax.random.key(0), (50, 4))
    g_num = to_numeric(g, zs, backend="numpy")
    ref = np.asarray(low_rank_polynomial(x, kind))[:, 0]
    got = np.asarray(g_num(*(np.asarray(x[:, j]) for j in range(len(zs)))), dtype=float) * np.ones(50)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    # unit variance, as documented
    assert A.gaussian_expectation(g**2, zs) == 1


@pytest.mark.parametrize("kind", A.TARGET_NAMES)
def test_target_agop_monte_carlo(kind):
    """Closed-form AGOP vs (1/n) sum grad f grad f^T by autodiff on Gaussian samples."""
    d, n = 5, 40000
    x = jax.random.normal(jax.random.key(1), (n, d))
    jac = input_gradients(lambda p, z: low_rank_polynomial(z, kind), None, x)
    mc = np.asarray(agop_from_jacobians(jac))
    exact = np.array(A.target_agop(kind, d).tolist(), dtype=float)
    # entries have variance <= 15 (He_3: E g'^4), standard error <= sqrt(15/n) ~ 0.02
    np.testing.assert_allclose(mc, exact, atol=0.1)
    assert np.linalg.matrix_rank(exact) == len(A.target_polynomial(kind)[1])


def test_target_agop_errors():
    with pytest.raises(ValueError, match="rank r=3"):
        A.target_agop("x1x2x3", 2)
    with pytest.raises(ValueError, match="kind='nope'"):
        A.target_polynomial("nope")


def test_isotropic_alignment_value():
    d = 7
    g = np.array(A.target_agop("x1x2", d).tolist(), dtype=float)
    eye = np.eye(d)
    numeric = np.sum(g * eye) / (np.linalg.norm(g) * np.linalg.norm(eye))
    expr = A.isotropic_alignment("x1x2")
    assert float(expr.subs(sp.Symbol("d", positive=True), d)) == pytest.approx(numeric)
    assert float(A.isotropic_alignment("hermite3", d)) == pytest.approx(1 / np.sqrt(d))


def test_batch_kernel_top_matches_eigh():
    c, delta = 0.17, 0.85
    per_point, eta_crit = A.batch_kernel_top()
    syms = sorted(eta_crit.free_symbols, key=str)  # b, c, delta
    f_eta = to_numeric(eta_crit, syms, backend="numpy")
    f_top = to_numeric(per_point, syms, backend="numpy")
    for b in (1, 4, 33):
        k = c * np.ones((b, b)) + delta * np.eye(b)
        top = np.linalg.eigvalsh(k)[-1] / b
        assert f_top(b, c, delta) == pytest.approx(top, rel=1e-12)
        assert f_eta(b, c, delta) == pytest.approx(2 / top, rel=1e-12)
    eigs = A.batch_kernel_eigs(5)
    cs, ds = sp.symbols("c delta", positive=True)
    assert eigs == {5 * cs + ds: 1, ds: 4}


def test_kernel_change_uv_matches_simulation():
    """lam' - lam = eta r^2 (eta lam - 4)/m for the uv model with y = 0, by direct GD on u, v."""
    m, eta = 64, 0.7
    ku, kv = jax.random.split(jax.random.key(3))
    with jax.enable_x64(True):  # the change is O(1/m): float64 keeps it far above rounding
        u = jax.random.normal(ku, (m,), jnp.float64)
        v = jax.random.normal(kv, (m,), jnp.float64)
        f = u @ v / np.sqrt(m)
        lam = (u @ u + v @ v) / m
        u2, v2 = u - eta * f * v / np.sqrt(m), v - eta * f * u / np.sqrt(m)  # y = 0: r = f
        lam2 = (u2 @ u2 + v2 @ v2) / m
        expr = A.kernel_change_uv()
        syms = {s.name: s for s in expr.free_symbols}
        pred = float(expr.subs({syms["eta"]: eta, syms["r"]: float(f), syms["lambda"]: float(lam), syms["m"]: m}))
        assert float(lam2 - lam) == pytest.approx(pred, rel=1e-9)
    _, eta_max = C.linear_model_threshold()
    assert eta_max.free_symbols  # reused, not redefined


def test_batch_inclusion_probabilities_match_enumeration():
    import itertools
    n, b = 7, 3
    p1, p2 = A.batch_inclusion_probabilities(n, b)
    subsets = list(itertools.combinations(range(n), b))
    assert float(p1) == pytest.approx(sum(0 in s for s in subsets) / len(subsets))
    assert float(p2) == pytest.approx(sum(0 in s and 1 in s for s in subsets) / len(subsets))
    sym_p1, sym_p2 = A.batch_inclusion_probabilities()
    ns, bs = sp.Symbol("N", positive=True, integer=True), sp.Symbol("b", positive=True, integer=True)
    assert sp.simplify(sym_p1 - bs / ns) == 0 and sp.simplify(sym_p2 - bs * (bs - 1) / (ns * (ns - 1))) == 0


def test_mean_square_threshold_isotropic_matches_numerics():
    """The closed form for c 11^T + delta I equals the power-iteration threshold on the full (N, N) kernel,
    the restricted 2x2 map equals the full map on S = alpha 11^T + beta I, and b = N gives 2N / mu_max."""
    from overparam.experiments import sgd_spikes as spikes
    n, c, delta = 24, 0.3, 0.9
    k = c * np.ones((n, n)) + delta * np.eye(n)
    eta_ms = A.mean_square_critical_lr_isotropic()
    f = to_numeric(eta_ms, sorted(eta_ms.free_symbols, key=str), backend="numpy")  # N, b, c, delta
    for b in (2, 5, 12, n):
        assert f(n, b, c, delta) == pytest.approx(spikes.ms_critical_lr(k, b), rel=1e-6)
        assert 2 / (c + delta / b) - 1e-9 <= f(n, b, c, delta) <= 2 * n / (c * n + delta) + 1e-9
    assert f(n, n, c, delta) == pytest.approx(2 * n / (c * n + delta), rel=1e-9)
    t2, _, _ = A.mean_square_map_isotropic()
    alpha, beta, eta = 0.4, 1.3, 2.1
    b = 5
    num = {s.name: s for s in t2.free_symbols}
    t2n = np.array(t2.subs({num["N"]: n, num["b"]: b, num["c"]: c, num["delta"]: delta, num["eta"]: eta}), dtype=float)
    out = spikes.ms_second_moment_map(k, eta, b)(alpha * np.ones((n, n)) + beta * np.eye(n))
    a2, b2 = t2n @ np.array([alpha, beta])
    np.testing.assert_allclose(out, a2 * np.ones((n, n)) + b2 * np.eye(n), rtol=1e-10, atol=1e-12)
