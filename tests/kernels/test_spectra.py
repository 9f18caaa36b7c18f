"""Tests for overparam.kernels.spectra: Funk–Hecke eigenvalues, Gegenbauer polynomials, Gram spectra, decay fits.

Everything here is float64 NumPy (the module's convention); no JAX precision switch is needed.
"""

import math

import numpy as np
import pytest
from scipy.special import eval_legendre, spherical_in

from overparam.kernels import spectra


def test_harmonic_multiplicity_known_cases():
    k = np.arange(0, 12)
    assert np.array_equal(spectra.harmonic_multiplicity(2, k), np.where(k == 0, 1, 2))
    assert np.array_equal(spectra.harmonic_multiplicity(3, k), 2 * k + 1)
    assert np.array_equal(spectra.harmonic_multiplicity(4, k), (k + 1) ** 2)
    # dimension of polynomials of degree <= K restricted to S^{d-1} = binom(K+d-1, d-1) + binom(K+d-2, d-1)
    d, kk = 5, 7
    total = spectra.harmonic_multiplicity(d, np.arange(kk + 1)).sum()
    assert total == math.comb(kk + d - 1, d - 1) + math.comb(kk + d - 2, d - 1)


def test_gegenbauer_normalized_matches_legendre_and_chebyshev():
    t = np.linspace(-1, 1, 41)
    p3 = spectra.gegenbauer_normalized(15, 3, t)
    for k in range(16):
        np.testing.assert_allclose(p3[k], eval_legendre(k, t), atol=1e-12)
    p2 = spectra.gegenbauer_normalized(15, 2, t)
    for k in range(16):
        np.testing.assert_allclose(p2[k], np.cos(k * np.arccos(t)), atol=1e-12)
    np.testing.assert_allclose(spectra.gegenbauer_normalized(20, 7, np.array(1.0)), 1.0, atol=1e-12)


@pytest.mark.parametrize("d", [2, 3, 4, 6])
def test_monomial_moments_match_quadrature(d):
    m = spectra.monomial_moments(14, d, 14)
    for n in range(15):
        mu = spectra.funk_hecke_eigenvalues(lambda t, n=n: t**n, d, 14)
        np.testing.assert_allclose(mu, m[n], atol=1e-13)
    assert np.all(m >= 0)


def test_exponential_kernel_spectrum_on_s2_both_routes():
    """kappa = exp(t) on S^2: mu_k = i_k(1) (modified spherical Bessel), down to 1e-40 via the Taylor route."""
    k_max = 30
    exact = spherical_in(np.arange(k_max + 1), 1.0)
    quad = spectra.funk_hecke_eigenvalues(np.exp, 3, k_max)
    np.testing.assert_allclose(quad, exact, rtol=1e-10, atol=1e-14)  # quadrature: absolute error ~1e-15
    coeffs = np.array([1.0 / math.factorial(n) for n in range(80)])
    taylor = spectra.funk_hecke_from_taylor(coeffs, 3, k_max)
    np.testing.assert_allclose(taylor, exact, rtol=1e-12)  # relative accuracy although exact[30] ~ 1e-42
    assert exact[-1] < 1e-40


def test_taylor_compose_affine_is_a_polynomial_identity():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 12)
    scale, shift = 0.6, 0.3
    b = spectra.taylor_compose_affine(a, scale, shift)
    t = np.linspace(-1, 1, 9)
    lhs = np.polyval(b[::-1], t)
    rhs = np.polyval(a[::-1], scale * t + shift)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    np.testing.assert_allclose(spectra.taylor_compose_affine(a, 0.5, 0.0), a * 0.5 ** np.arange(12))


@pytest.mark.parametrize("d, n", [(2, 64), (3, 800)])
def test_gram_spectrum_approaches_operator_eigenvalues(d, n):
    x = spectra.well_spread_points(n, d)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-12)
    gram = spectra.gram_spectrum(np.exp, x)
    mu = spectra.funk_hecke_eigenvalues(np.exp, d, 10)
    ops = spectra.expand_by_multiplicity(mu, d, 16)
    np.testing.assert_allclose(gram[:16], ops, rtol=2e-2)


def test_decay_exponent_recovers_a_power_law_and_validates():
    k = np.arange(1, 60)
    fit = spectra.decay_exponent(k, 3.0 * k**-2.5, 5, 50)
    assert abs(-fit.slope - 2.5) < 1e-10
    with pytest.raises(ValueError, match="window"):
        spectra.decay_exponent(k, k**-2.0, 5, 6)
    with pytest.raises(ValueError, match="mu_k > 0"):
        spectra.decay_exponent(k, np.zeros(k.shape), 5, 50)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="d=1"):
        spectra.harmonic_multiplicity(1, 3)
    with pytest.raises(ValueError, match="k_max"):
        spectra.funk_hecke_eigenvalues(np.exp, 3, -1)
    with pytest.raises(ValueError, match="unit-norm"):
        spectra.dot_kernel_matrix(np.exp, 2.0 * spectra.well_spread_points(5, 3))
    with pytest.raises(ValueError, match="d=2"):
        spectra.well_spread_points(10, 4)
    with pytest.raises(ValueError, match="elementwise"):
        spectra.funk_hecke_eigenvalues(lambda t: 1.0, 3, 4)
