r"""Eigenvalues of dot-product kernels on the sphere (Funk–Hecke), and their decay exponents.

Setting. A dot-product kernel k(x, x') = kappa(x . x') on the unit sphere S^{d-1} of R^d
(d >= 2; d = 2 is the circle). With the *uniform probability* measure on the sphere, the
integral operator (T f)(x) = E_{x'}[kappa(x . x') f(x')] is diagonal in spherical harmonics:
every harmonic of degree k is an eigenfunction with eigenvalue (Funk–Hecke)

    mu_k = E_t[ kappa(t) P_k(t) ],   t = x . e for x uniform on S^{d-1},
           density of t  proportional to (1 - t^2)^{(d-3)/2} on [-1, 1],

with multiplicity N(d, k) = ``harmonic_multiplicity(d, k)`` and P_k = P_k^{(d)} the Legendre
(Gegenbauer) polynomial of dimension d normalized to P_k(1) = 1 (d = 2: Chebyshev T_k, so
mu_k is the k-th cosine coefficient of kappa(cos theta); d = 3: the Legendre polynomials).
Then kappa(x . x') = sum_k mu_k N(d, k) P_k(x . x'), and for n well-spread points the
eigenvalues of the normalized Gram matrix K / n approach mu_k, each repeated N(d, k) times.

Two ways to compute mu_k, both float64 NumPy:

* ``funk_hecke_eigenvalues``: Gauss–Legendre quadrature in theta = arccos t. The arc-cosine
  kernels are analytic in theta (arccos(cos theta) = theta), so quadrature converges
  exponentially; the absolute error is ~1e-15 * max|kappa|, fine for polynomially decaying
  spectra (the ReLU NTK), not for eigenvalues below that floor.
* ``funk_hecke_from_taylor``: from the Taylor coefficients kappa(t) = sum_n a_n t^n. With
  a_n >= 0 (every kernel positive definite on all spheres, Schoenberg) every term
  a_n E[t^n P_k(t)] is >= 0, so the sum has *relative* accuracy ~1e-15 however small mu_k is:
  the way to resolve exponentially decaying spectra (the binary-weight NTK).

The decay exponent of a spectrum is read from a log-log fit mu_k ~ C k^{-s} over a window of
degrees (``decay_exponent``; s is minus the slope).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import gammaln, roots_legendre

from overparam.stats import SlopeFit, loglog_fit


def check_sphere_dim(d) -> int:
    """Return d if it is an integer >= 2 (the ambient dimension of S^{d-1}), else ValueError."""
    if int(d) != d or d < 2:
        raise ValueError(f"d={d!r} must be an integer >= 2 (ambient dimension; d=2 is the circle)")
    return int(d)


def _check_kmax(k_max) -> int:
    if int(k_max) != k_max or k_max < 0:
        raise ValueError(f"k_max={k_max!r} must be a non-negative integer")
    return int(k_max)


# ------------------------------------------------------------------- harmonics and polynomials
def harmonic_multiplicity(d: int, k) -> np.ndarray:
    """N(d, k): the number of linearly independent spherical harmonics of degree k on S^{d-1}.

    N(d, 0) = 1 and N(d, k) = (2k + d - 2)/k * binom(k + d - 3, d - 2): 2 on the circle
    (cos, sin), 2k + 1 on S^2. ``k`` may be an int or an integer array.
    """
    d = check_sphere_dim(d)
    k = np.asarray(k)
    kk = np.maximum(k, 1).astype(float)
    log_binom = gammaln(kk + d - 2) - gammaln(d - 1) - gammaln(kk)
    mult = (2 * kk + d - 2) / kk * np.exp(log_binom)
    return np.where(k == 0, 1, np.rint(mult)).astype(np.int64)


def gegenbauer_normalized(k_max: int, d: int, t) -> np.ndarray:
    """P_k^{(d)}(t) for k = 0..k_max: array (k_max + 1, *t.shape), normalized so P_k(1) = 1.

    Three-term recurrence (k + d - 2) P_{k+1} = (2k + d - 2) t P_k - k P_{k-1}, P_0 = 1,
    P_1 = t; stable for |t| <= 1.
    """
    d, k_max = check_sphere_dim(d), _check_kmax(k_max)
    t = np.asarray(t, dtype=np.float64)
    out = np.empty((k_max + 1,) + t.shape)
    out[0] = 1.0
    if k_max >= 1:
        out[1] = t
    for k in range(1, k_max):
        out[k + 1] = ((2 * k + d - 2) * t * out[k] - k * out[k - 1]) / (k + d - 2)
    return out


def _log_sphere_weight_norm(d: int) -> float:
    """log of int_{-1}^{1} (1 - t^2)^{(d-3)/2} dt = B(1/2, (d-1)/2)."""
    return gammaln(0.5) + gammaln((d - 1) / 2) - gammaln(d / 2)


# ---------------------------------------------------------------------------- eigenvalues
def funk_hecke_eigenvalues(kernel_fn: Callable, d: int, k_max: int, num_nodes: int | None = None) -> np.ndarray:
    """mu_k = E_t[kappa(t) P_k(t)], k = 0..k_max, by Gauss–Legendre quadrature in theta = arccos t.

    kernel_fn: vectorized t -> kappa(t) on [-1, 1] (NumPy in, array-like out, float64).
    num_nodes: quadrature nodes on [0, pi] (default 2 k_max + 512, enough for kernels
    analytic in theta such as the arc-cosine kernels). Returns (k_max + 1,) float64.
    """
    d, k_max = check_sphere_dim(d), _check_kmax(k_max)
    num_nodes = 2 * k_max + 512 if num_nodes is None else int(num_nodes)
    nodes, weights = roots_legendre(num_nodes)
    theta = 0.5 * math.pi * (nodes + 1.0)
    w = 0.5 * math.pi * weights * np.sin(theta) ** (d - 2)
    t = np.cos(theta)
    kappa = np.asarray(kernel_fn(t), dtype=np.float64)
    if kappa.shape != t.shape:
        raise ValueError(f"kernel_fn returned shape {kappa.shape} for t of shape {t.shape}; expected elementwise")
    polys = gegenbauer_normalized(k_max, d, t)
    return polys @ (w * kappa) / math.exp(_log_sphere_weight_norm(d))


def monomial_moments(n_max: int, d: int, k_max: int) -> np.ndarray:
    """M[n, k] = E_t[t^n P_k(t)] on S^{d-1}, n = 0..n_max, k = 0..k_max (closed form, >= 0).

    Zero unless k <= n and n - k is even; then, with j = (n - k)/2 (Rodrigues' formula),

        M[n, k] = Gamma(d/2) n! Gamma(j + 1/2) / (sqrt(pi) 2^k (n-k)! Gamma(j + k + d/2)),

    computed in log space (no cancellation). d = 2 gives binom(n, j) / 2^n.
    """
    d, n_max, k_max = check_sphere_dim(d), _check_kmax(n_max), _check_kmax(k_max)
    n = np.arange(n_max + 1)[:, None]
    k = np.arange(k_max + 1)[None, :]
    valid = (k <= n) & ((n - k) % 2 == 0)
    j = np.where(valid, (n - k) // 2, 0)
    nk = np.where(valid, n - k, 0)
    log_m = (gammaln(d / 2) + gammaln(n + 1.0) + gammaln(j + 0.5) - 0.5 * math.log(math.pi)
             - k * math.log(2.0) - gammaln(nk + 1.0) - gammaln(j + k + d / 2))
    return np.where(valid, np.exp(np.where(valid, log_m, 0.0)), 0.0)


def funk_hecke_from_taylor(coeffs, d: int, k_max: int) -> np.ndarray:
    """mu_k, k = 0..k_max, of kappa(t) = sum_n coeffs[n] t^n (truncated series), float64.

    coeffs: (N,) Taylor coefficients in t. With all coeffs >= 0 the result has relative
    accuracy ~1e-15 even for tiny mu_k (no cancellation); the truncation error is
    sum_{n >= N} coeffs[n] (each |E[t^n P_k]| <= 1), so use it for kernels whose series
    converges geometrically on [-1, 1].
    """
    coeffs = np.asarray(coeffs, dtype=np.float64)
    if coeffs.ndim != 1 or coeffs.size == 0:
        raise ValueError(f"coeffs has shape {coeffs.shape}; expected a non-empty 1-D array of Taylor coefficients")
    return coeffs @ monomial_moments(coeffs.size - 1, d, k_max)


def taylor_compose_affine(coeffs, scale: float, shift: float, num_terms: int | None = None) -> np.ndarray:
    """Taylor coefficients in t of kappa(scale * t + shift), given those of kappa.

    b_i = sum_n coeffs[n] binom(n, i) scale^i shift^(n-i); all >= 0 when coeffs, scale,
    shift >= 0. Returns (num_terms,) (default len(coeffs)); terms of kappa beyond len(coeffs)
    are dropped, so the series of kappa must converge at |scale| + |shift|.
    """
    coeffs = np.asarray(coeffs, dtype=np.float64)
    num = coeffs.size if num_terms is None else int(num_terms)
    n = np.arange(coeffs.size)[:, None]
    i = np.arange(num)[None, :]
    ok = i <= n
    if shift == 0.0:
        out = np.zeros(num)
        m = min(num, coeffs.size)
        out[:m] = coeffs[:m] * float(scale) ** np.arange(m)
        return out
    log_binom = gammaln(n + 1.0) - gammaln(np.minimum(i, n) + 1.0) - gammaln(np.maximum(n - i, 0) + 1.0)
    sgn = np.sign(scale) ** i * np.sign(shift) ** np.maximum(n - i, 0)
    log_terms = log_binom + i * math.log(abs(scale)) + np.maximum(n - i, 0) * math.log(abs(shift))
    return np.sum(np.where(ok, coeffs[:, None] * sgn * np.exp(np.where(ok, log_terms, 0.0)), 0.0), axis=0)


# ------------------------------------------------------------------------ points and Gram
def well_spread_points(n: int, d: int) -> np.ndarray:
    """n deterministic, nearly uniform points on S^{d-1}: (n, d) float64, unit norm.

    d = 2: equally spaced angles 2 pi i / n; d = 3: the Fibonacci (golden-spiral) lattice.
    """
    d = check_sphere_dim(d)
    if int(n) != n or n < 1:
        raise ValueError(f"n={n!r} must be a positive integer")
    i = np.arange(n) + 0.5
    if d == 2:
        ang = 2 * np.pi * (i - 0.5) / n
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if d == 3:
        z = 1.0 - 2.0 * i / n
        phi = np.pi * (1.0 + math.sqrt(5.0)) * i
        r = np.sqrt(1.0 - z**2)
        return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    raise ValueError(f"well_spread_points supports d=2 (circle) and d=3 (S^2), got d={d}")


def dot_kernel_matrix(kernel_fn: Callable, x1, x2=None) -> np.ndarray:
    """kappa(x1 @ x2.T) (N1, N2) in float64 for unit-norm rows x1 (N1, d), x2 (N2, d).

    The dot products are clipped to [-1, 1] (rounding can push them slightly outside).
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 has shape {x1.shape} and x2 has shape {x2.shape}; expected (N1, d) and (N2, d)")
    norms = np.concatenate([np.linalg.norm(x1, axis=1), np.linalg.norm(x2, axis=1)])
    if np.max(np.abs(norms - 1.0)) > 1e-6:
        raise ValueError("dot_kernel_matrix expects unit-norm rows (points on the sphere)")
    return np.asarray(kernel_fn(np.clip(x1 @ x2.T, -1.0, 1.0)), dtype=np.float64)


def one_minus_dot(x1, x2=None) -> np.ndarray:
    """1 - x1 . x2 (N1, N2) for unit-norm rows, computed as |x1 - x2|^2 / 2 (float64).

    Accurate to relative rounding even for nearly equal points (and exactly 0 on the diagonal
    of ``one_minus_dot(x)``), where 1 - (x1 @ x2.T) loses everything below ~1e-16: needed by
    kernels with spikes of width 1e-7 (``activations.spike_ntk_dot`` with b ~ 1e7).
    """
    x1 = np.asarray(x1, dtype=np.float64)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 has shape {x1.shape} and x2 has shape {x2.shape}; expected (N1, d) and (N2, d)")
    out = np.zeros((x1.shape[0], x2.shape[0]))
    for c in range(x1.shape[1]):  # one coordinate at a time: memory N1 * N2, not N1 * N2 * d
        out += (x1[:, c, None] - x2[None, :, c]) ** 2
    return 0.5 * out


def gram_spectrum(kernel_fn: Callable, x) -> np.ndarray:
    """Eigenvalues of K / n (descending, float64) for the Gram matrix K = kappa(x x^T) of x (n, d)."""
    k = dot_kernel_matrix(kernel_fn, x)
    return np.linalg.eigvalsh(k / k.shape[0])[::-1]


def expand_by_multiplicity(mu, d: int, num: int | None = None) -> np.ndarray:
    """The operator's eigenvalues as a list: mu_k repeated N(d, k) times, sorted descending.

    Comparable to ``gram_spectrum`` on ``num`` well-spread points (truncated to ``num``).
    """
    mu = np.asarray(mu, dtype=np.float64)
    reps = harmonic_multiplicity(d, np.arange(mu.size))
    out = np.sort(np.repeat(mu, reps))[::-1]
    return out if num is None else out[:num]


def decay_exponent(k, mu, k_min: int, k_max: int) -> SlopeFit:
    """Power-law fit mu_k ~ C k^{-s} over k_min <= k <= k_max; returns the ``SlopeFit`` of log mu vs log k.

    The decay exponent is s = -fit.slope. Only degrees with mu_k > 0 enter (e.g. the even
    degrees of a kernel whose odd eigenvalues vanish): pass those k and mu.
    """
    k = np.asarray(k, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    if k.shape != mu.shape:
        raise ValueError(f"k has shape {k.shape} but mu has shape {mu.shape}")
    sel = (k >= k_min) & (k <= k_max)
    if np.count_nonzero(sel) < 3:
        raise ValueError(f"window [{k_min}, {k_max}] holds {np.count_nonzero(sel)} degrees; need >= 3")
    if np.any(mu[sel] <= 0):
        raise ValueError("decay_exponent needs mu_k > 0 in the window (drop the vanishing degrees)")
    return loglog_fit(k[sel], mu[sel])
