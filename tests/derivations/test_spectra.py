"""Every SymPy result of ``overparam.derivations.spectra`` checked against the numerical library.

Kernels and spectra are float64 NumPy; sympy expressions are lambdified with the NumPy backend.
"""

import math

import numpy as np
import sympy as sp
from scipy.stats import norm

from overparam.experiments import spiky_smooth as act
from overparam.experiments import binary_weights as bn
from overparam.kernels import spectra
from overparam.derivations import spectra as der
from overparam.derivations.symbolic import to_numeric


def test_arccos_kernels_match_the_numeric_duals():
    k1, k0 = der.arccos_kernels()
    r = np.linspace(-0.99, 0.99, 17)
    n1, n0 = act.relu_duals(r)
    np.testing.assert_allclose(to_numeric(k1, [der.rho], "numpy")(r), n1, atol=1e-14)
    np.testing.assert_allclose(to_numeric(k0, [der.rho], "numpy")(r), n0, atol=1e-14)
    np.testing.assert_allclose(to_numeric(der.relu_ntk(), [der.rho], "numpy")(r), act.relu_ntk_dot(r), atol=1e-14)


def test_general_taylor_terms_match_the_series():
    k1, k0 = der.arccos_kernels()
    order = 14
    s1, s0 = der.series_in_rho(k1, order), der.series_in_rho(k0, order)
    c0, c1 = der.arccos_taylor_terms()
    built0 = sp.Rational(1, 4) + sum(c0.subs(der.m, mm) * der.rho ** (2 * mm + 1) for mm in range(order // 2))
    built1 = 1 / (2 * sp.pi) + der.rho / 4 + sum(c1.subs(der.m, mm) * der.rho ** (2 * mm + 2) for mm in range(order // 2 - 1))
    assert sp.simplify(sp.expand(s0 - built0)) == 0
    assert sp.simplify(sp.expand(s1 - built1)) == 0
    num1, num0 = act.relu_taylor_coefficients(order)
    np.testing.assert_allclose(num0, [float(s0.coeff(der.rho, n)) if n else 0.25 for n in range(order)], atol=1e-15)
    np.testing.assert_allclose(num1, [float(s1.coeff(der.rho, n)) if n else 1 / (2 * math.pi) for n in range(order)],
                               atol=1e-15)


def test_circle_closed_form_matches_funk_hecke_quadrature():
    mu_k, mu_even, mu_odd = der.circle_relu_ntk_eigenvalues()
    numeric = spectra.funk_hecke_eigenvalues(act.relu_ntk_dot, 2, 60)
    exact = [float(mu_k.subs(der.k, kk)) for kk in range(1, 61)]
    np.testing.assert_allclose(numeric[1:], exact, rtol=1e-10, atol=5e-14)  # quadrature floor
    assert mu_odd == 0
    assert sp.simplify(der.circle_decay_constant() - 1 / sp.pi**2) == 0


def test_sphere_exact_eigenvalues_match_quadrature():
    numeric = spectra.funk_hecke_eigenvalues(act.relu_ntk_dot, 3, 3)
    exact = [der.sphere_relu_ntk_eigenvalue(kk) for kk in range(3)]
    assert exact == [sp.Rational(1, 4), sp.Rational(1, 6), sp.Rational(5, 128)]
    np.testing.assert_allclose(numeric[:3], [float(e) for e in exact], rtol=1e-12)
    assert abs(numeric[3]) < 1e-14  # odd degrees >= 3 vanish (relu = x/2 + |x|/2)


def test_monomial_moments_closed_form_matches_sympy():
    m = {d: spectra.monomial_moments(6, d, 6) for d in (2, 3, 5)}
    for d in (2, 3, 5):
        for n, kk in [(0, 0), (2, 0), (3, 1), (4, 2), (6, 4), (5, 5), (3, 2)]:
            assert abs(float(der.monomial_moment(n, kk, d)) - m[d][n, kk]) < 1e-14


def test_rounding_and_smoothing():
    mean, var = der.rounding_moments()
    w = sp.symbols("w", real=True)
    assert sp.simplify(mean - w) == 0 and sp.simplify(var - (1 - w**2)) == 0
    derived = to_numeric(der.gaussian_smoothed_relu().rewrite(sp.erf), [der.u, der.s], "numpy")
    closed = to_numeric(der.gaussian_smoothed_relu_closed_form(), [der.u, der.s], "numpy")
    uu, ss = np.linspace(-2, 2, 9), 0.7
    reference = uu * norm.cdf(uu / ss) + ss * norm.pdf(uu / ss)
    np.testing.assert_allclose(derived(uu, ss), reference, atol=1e-12)
    np.testing.assert_allclose(closed(uu, ss), reference, atol=1e-12)
    cov, corr = der.smoothed_preactivation_covariance()
    assert sp.simplify(corr - der.q * der.rho) == 0 and cov[0, 0] == 1


def test_binary_ntk_and_bernstein_rate():
    expr = to_numeric(der.binary_ntk(), [der.rho, der.q], "numpy")
    r = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(expr(r, 1 / 3), bn.binary_ntk_dot(r, 1 / 3), atol=1e-14)
    radius = der.bernstein_radius()
    assert sp.simplify(radius.subs(der.q, sp.Rational(1, 3)) - (3 + 2 * sp.sqrt(2))) == 0
    # the exact spectrum decays like R^{-k} k^{-alpha}: fit log mu = c - k log R - alpha log k
    mu = spectra.funk_hecke_from_taylor(bn.binary_ntk_taylor(1 / 3, 400), 3, 80)
    ks = np.arange(20, 81, 2)
    design = np.stack([np.ones(ks.size), -ks, -np.log(ks)], axis=1)
    coef = np.linalg.lstsq(design, np.log(mu[ks]), rcond=None)[0]
    assert abs(np.exp(coef[1]) / (3 + 2 * math.sqrt(2)) - 1) < 0.01


def test_spiky_smooth_duals_and_ntk():
    sin_sin, cos_cos = der.sine_cosine_duals()
    rng = np.random.default_rng(0)
    r, c, n = 0.6, 1.3, 400_000
    u = rng.standard_normal(n)
    v = r * u + math.sqrt(1 - r**2) * rng.standard_normal(n)
    f_ss = to_numeric(sin_sin, [der.rho, der.b], "numpy")
    f_cc = to_numeric(cos_cos, [der.rho, der.b], "numpy")
    assert abs(np.mean(np.sin(c * u) * np.sin(c * v)) - f_ss(r, c)) < 5e-3  # MC std ~ 1/sqrt(n)
    assert abs(np.mean(np.cos(c * u) * np.cos(c * v)) - f_cc(r, c)) < 5e-3
    spike = to_numeric(der.spike_ntk(), [der.rho, der.a, der.b], "numpy")
    closed = to_numeric(der.spike_ntk_closed_form(), [der.rho, der.a, der.b], "numpy")
    for rr, aa, bb in [(0.3, 0.5, 1.5), (0.95, 1.2, 3.0), (-0.4, 0.8, 2.0)]:
        assert abs(spike(rr, aa, bb) - closed(rr, aa, bb)) < 1e-12
        assert abs(closed(rr, aa, bb) - act.spike_ntk_dot(rr, aa, bb)) < 1e-12
    full = to_numeric(der.spiky_smooth_ntk(), [der.rho, der.a, der.b], "numpy")
    assert abs(full(0.7, 0.8, 2.0) - act.spiky_smooth_ntk_dot(0.7, 0.8, 2.0)) < 1e-12
    # Monte Carlo of the NTK integrand phi phi' + rho phi' phi'' itself at b = 2
    aa, bb = 0.8, 2.0
    phi = np.maximum(u, 0) + aa / bb * np.sin(bb * u), np.maximum(v, 0) + aa / bb * np.sin(bb * v)
    dphi = (u > 0) + aa * np.cos(bb * u), (v > 0) + aa * np.cos(bb * v)
    mc = np.mean(phi[0] * phi[1] + r * dphi[0] * dphi[1])
    assert abs(mc - act.spiky_smooth_ntk_dot(r, aa, bb)) < 1e-2


def test_spike_limits_and_slope():
    at_one, elsewhere = der.spike_height_limit()
    assert sp.simplify(at_one - der.a**2 / 2) == 0 and elsewhere == 0
    slope = der.spike_max_slope()
    assert sp.simplify(slope - der.b / sp.sqrt(2 * sp.E)) == 0
    delta, profile = der.spike_profile()
    f = to_numeric(profile, [delta, der.a, der.b], "numpy")
    d = np.linspace(0, 0.05, 20001)
    grad = np.abs(np.gradient(f(d, math.sqrt(2.0), 200.0), d))  # a^2/2 = 1
    assert abs(grad.max() - 200.0 / math.sqrt(2 * math.e)) < 0.01 * 200
    # same spike as the library's kernel, evaluated through t = 1 - delta^2/2
    t = 1 - d**2 / 2
    np.testing.assert_allclose(f(d, 1.0, 50.0), act.spike_ntk_dot(act.bias_correlation(t, 1.0), 1.0, 50.0)
                               / (act.bias_correlation(t, 1.0) + 1 / 50.0**2), rtol=1e-6, atol=1e-12)


def test_arccos_taylor_decay_rates_match_the_coefficients():
    e0, e1 = der.arccos_taylor_decay()
    assert (e0, e1) == (sp.Rational(3, 2), sp.Rational(5, 2))
    num1, num0 = act.relu_taylor_coefficients(40010)
    # K0's term of rho^{2m+1} and K1's of rho^{2m+2}; leading constants 1/(4 pi^1.5), 1/(8 pi^1.5)
    for mm in (1000, 10000, 20000):
        c0, c1 = num0[2 * mm + 1], num1[2 * mm + 2]
        assert abs(c0 * mm**1.5 * 4 * math.pi**1.5 - 1) < 1.0 / mm
        assert abs(c1 * mm**2.5 * 8 * math.pi**1.5 - 1) < 2.0 / mm
    # the exponent itself, from successive coefficients: 3/2 and 5/2 (not 3/2 for both)
    m1, m2 = 10000, 20000
    assert abs(-math.log(num0[2 * m2 + 1] / num0[2 * m1 + 1]) / math.log(2) - 1.5) < 1e-3
    assert abs(-math.log(num1[2 * m2 + 2] / num1[2 * m1 + 2]) / math.log(2) - 2.5) < 1e-3


def test_sphere_power_moment_matches_integration():
    tt = der.t
    for nu in (sp.Rational(1, 2), sp.Rational(3, 2)):
        for kk in range(5):
            direct = sp.integrate((1 - tt) ** nu * sp.legendre(kk, tt), (tt, -1, 1)) / 2
            assert abs(float(direct) - float(der.sphere_power_moment(nu, kk))) < 1e-14


def test_relu_ntk_singular_expansion_matches_the_kernel():
    terms = der.relu_ntk_singular_expansion(3)
    assert [nu for _, nu in terms] == [sp.Rational(1, 2), sp.Rational(3, 2), sp.Rational(5, 2)]
    assert sp.simplify(terms[0][0] + sp.sqrt(2) / (2 * sp.pi)) == 0
    # Theta(1 - s) minus the singular part is smooth: its second difference is O(1) (the raw kernel's blows up like s^{-3/2})
    s = np.array([1e-6, 2e-6, 3e-6])
    sing = sum(float(c) * s ** float(nu) for c, nu in terms)
    rem = act.relu_ntk_dot(1 - s) - sing
    assert abs(rem[0] - 2 * rem[1] + rem[2]) / 1e-12 < 10.0


def test_finite_k_asymptotic_matches_quadrature_with_o_one_over_k_corrections():
    quad = spectra.funk_hecke_eigenvalues(act.relu_ntk_dot, 3, 40)
    for kk in (10, 20, 40):
        asym = float(der.sphere_relu_ntk_asymptotic(kk, 3))
        assert abs(asym / quad[kk] - 1) < 30.0 / kk**6  # O(k^{-6}) with three terms (measured ~ 22 / k^6)
    # the leading term is exactly proportional to 1/((k - 1/2)(k + 1/2)(k + 3/2)) = k^{-3}(1 - 3/(2k) + ...)
    lead = {kk: float(der.sphere_relu_ntk_asymptotic(kk, 1)) * (kk - 0.5) * (kk + 0.5) * (kk + 1.5) for kk in (4, 20, 40)}
    assert abs(lead[4] / lead[40] - 1) < 1e-12 and abs(lead[20] / lead[40] - 1) < 1e-12
    ratio = float(der.sphere_relu_ntk_asymptotic(20, 1) / der.sphere_relu_ntk_asymptotic(40, 1)) / 8.0
    assert ratio < 0.97  # a pure power law k^{-3} would give 1: the corrections are O(1/k)
