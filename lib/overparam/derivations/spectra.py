r"""SymPy derivations for the chapter on kernel spectra: ReLU NTK eigenvalues, the binary-weight
(quasi-network) NTK, and the NTK of the spiky-smooth activation.

Conventions as in ``overparam.experiments.spiky_smooth`` and ``overparam.experiments.binary_weights``: unit-variance
pre-activations u, u' with correlation rho; K1 = E[relu(u) relu(u')], K0 = E[step(u) step(u')];
two-layer NTK Theta = E[phi phi'] + rho E[phi' phi'']; eigenvalues mu_k of a dot-product
kernel with respect to the uniform probability measure on the sphere (Funk–Hecke).

Each function returns SymPy objects; ``tests/test_derivations_spectra.py`` checks them against
the numerical library (quadrature, Monte Carlo).
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp

rho, t, theta = sp.symbols("rho t theta", real=True)
q = sp.symbols("q", positive=True)
a, b = sp.symbols("a b", positive=True)
k = sp.symbols("k", integer=True, positive=True)
j, m = sp.symbols("j m", integer=True, nonnegative=True)
u, z = sp.symbols("u z", real=True)
s = sp.symbols("s", positive=True)


# ------------------------------------------------------------------------- arc-cosine kernels
def arccos_kernels(r=rho):
    """(K1(r), K0(r)): the arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009) as expectations.

    K1 = (sqrt(1 - r^2) + (pi - arccos r) r) / (2 pi), K0 = (pi - arccos r) / (2 pi).
    """
    k1 = (sp.sqrt(1 - r**2) + (sp.pi - sp.acos(r)) * r) / (2 * sp.pi)
    k0 = (sp.pi - sp.acos(r)) / (2 * sp.pi)
    return k1, k0


def relu_ntk(r=rho):
    """Two-layer ReLU NTK Theta(r) = K1(r) + r K0(r)."""
    k1, k0 = arccos_kernels(r)
    return k1 + r * k0


def arcsine_coefficient(mm=m):
    """a_m = (2m)! / (4^m (m!)^2 (2m+1)): arcsin(r) = sum_m a_m r^{2m+1}."""
    return sp.factorial(2 * mm) / (4**mm * sp.factorial(mm) ** 2 * (2 * mm + 1))


def arccos_taylor_terms(mm=m):
    """General Taylor terms: K0 = 1/4 + sum_m c0_m r^{2m+1}, K1 = 1/(2 pi) + r/4 + sum_m c1_m r^{2m+2}.

    Returns (c0_m, c1_m) = (a_m / (2 pi), a_m / ((2m + 2) 2 pi)); all positive, so both kernels
    are positive definite on spheres of every dimension (Schoenberg). Their decay
    (``arccos_taylor_decay``): c0_m ~ m^{-3/2} / (4 pi^{3/2}), the trace of K0's square-root
    singularity (1 - r)^{1/2} at r = 1, and c1_m ~ m^{-5/2} / (8 pi^{3/2}), one power faster,
    the trace of K1's (1 - r)^{3/2}.
    """
    am = arcsine_coefficient(mm)
    return am / (2 * sp.pi), am / ((2 * mm + 2) * 2 * sp.pi)


def arccos_taylor_decay(mm=m):
    """Decay exponents (e0, e1) of the Taylor terms of ``arccos_taylor_terms``: c_m ~ C m^{-e}.

    Gauss's test: the ratio of consecutive terms is rational in m, c_{m+1}/c_m = 1 - e/m + O(1/m^2),
    and then c_m ~ C m^{-e}; e = lim m (1 - c_{m+1}/c_m) is a limit of a rational function.
    Result: e0 = 3/2 (K0, square-root singularity (1 - r)^{1/2} at r = 1), e1 = 5/2 (K1,
    singularity (1 - r)^{3/2}). The constants are C0 = 1/(4 pi^{3/2}), C1 = 1/(8 pi^{3/2})
    (from Gamma(m + 1/2)/Gamma(m + 1) ~ m^{-1/2}; checked numerically in the test suite).
    """
    out = []
    for c in arccos_taylor_terms(mm):
        ratio = sp.simplify(sp.combsimp(c.subs(mm, mm + 1) / c))
        out.append(sp.limit(mm * (1 - ratio), mm, sp.oo))
    return tuple(out)


def series_in_rho(expr, order: int, r=rho):
    """Taylor polynomial of ``expr`` in r up to r^{order-1} (for checks of the general terms)."""
    return sp.series(expr, r, 0, order).removeO()


# ------------------------------------------------------------------ ReLU NTK eigenvalues
@lru_cache(maxsize=None)
def circle_relu_ntk_eigenvalues():
    """mu_k of the ReLU NTK on the circle (d = 2) in closed form, for symbolic integer k >= 1.

    mu_k = (1/pi) int_0^pi Theta(cos theta) cos(k theta) d theta, with arccos(cos theta) = theta.
    Returns (mu_k, mu_even, mu_odd): the Piecewise result, and its values at k = 2j and
    k = 2j + 1 (j >= 1).
    """
    k1 = (sp.sin(theta) + (sp.pi - theta) * sp.cos(theta)) / (2 * sp.pi)
    k0 = (sp.pi - theta) / (2 * sp.pi)
    expr = sp.expand((k1 + sp.cos(theta) * k0) * sp.cos(k * theta))
    mu = sp.simplify(sp.integrate(expr, (theta, 0, sp.pi)) / sp.pi)
    jj = sp.symbols("j", integer=True, positive=True)
    return mu, sp.factor(sp.simplify(mu.subs(k, 2 * jj))), sp.simplify(mu.subs(k, 2 * jj + 1))


def circle_decay_constant():
    """lim_{k even -> oo} k^2 mu_k for the ReLU NTK on the circle (= 1/pi^2): decay exponent exactly 2 = d."""
    _, mu_even, _ = circle_relu_ntk_eigenvalues()
    jj = list(mu_even.free_symbols)[0]
    return sp.limit(mu_even * (2 * jj) ** 2, jj, sp.oo)


@lru_cache(maxsize=None)
def sphere_relu_ntk_eigenvalue(kk: int):
    """Exact mu_k of the ReLU NTK on S^2 (d = 3): (1/2) int_0^pi Theta(cos th) P_k(cos th) sin th d th.

    A rational number for every k (e.g. 1/4, 1/6, 5/128, 0, 1/384 for k = 0..4); the
    integral is done in theta, where the kernel is a trigonometric polynomial times theta.
    """
    k1 = (sp.sin(theta) + (sp.pi - theta) * sp.cos(theta)) / (2 * sp.pi)
    k0 = (sp.pi - theta) / (2 * sp.pi)
    p = sp.legendre(int(kk), t).subs(t, sp.cos(theta))
    val = sp.integrate(sp.expand((k1 + sp.cos(theta) * k0) * p * sp.sin(theta)), (theta, 0, sp.pi)) / 2
    return sp.nsimplify(sp.simplify(val))


@lru_cache(maxsize=None)
def relu_ntk_singular_expansion(num_terms: int = 3):
    """Singular part of the ReLU NTK at t = 1: [(c_j, nu_j)] with Theta(1 - s) = analytic + sum_j c_j s^{nu_j}.

    nu_j = j + 1/2 (half-integer powers of s = 1 - t); SymPy's Puiseux series of
    Theta(1 - s) gives c_0 = -sqrt(2)/(2 pi), c_1 = 19 sqrt(2)/(24 pi), c_2 = 47 sqrt(2)/(960 pi).
    Since Theta(-t) = Theta(t) - t, the singular part at t = -1 is the same expansion in 1 + t.
    """
    ss = sp.symbols("s", positive=True)
    w = sp.symbols("w", positive=True)  # s = w^2: the Puiseux series becomes a power series in w
    ser = sp.expand(sp.series(relu_ntk(1 - ss), ss, 0, num_terms + 1).removeO().subs(ss, w**2))
    out = []
    for jj in range(num_terms):
        out.append((sp.simplify(ser.coeff(w, 2 * jj + 1)), sp.Rational(2 * jj + 1, 2)))
    return tuple(out)


def sphere_power_moment(nu, kk):
    """E_t[(1 - t)^nu P_k(t)] on S^2 (t uniform on [-1, 1], P_k Legendre), closed form.

    = (-1)^k 2^nu Gamma(nu + 1)^2 / (Gamma(nu + k + 2) Gamma(nu - k + 1)) (Gradshteyn–Ryzhik 7.127,
    there for (1 + t)^nu; P_k(-t) = (-1)^k P_k(t));
    for half-integer nu it is ~ |k|^{-2 nu - 2} with *relative* corrections O(1/k): for nu = 1/2 it
    is proportional to 1 / ((k - 1/2)(k + 1/2)(k + 3/2)) exactly. The test suite checks it
    against direct integration.
    """
    return (-1) ** kk * 2**nu * sp.gamma(nu + 1) ** 2 / (sp.gamma(nu + kk + 2) * sp.gamma(nu - kk + 1))


def sphere_relu_ntk_asymptotic(kk, num_terms: int = 3):
    """Finite-k asymptotic mu_k of the ReLU NTK on S^2 for even k: 2 sum_j c_j E[(1 - t)^{nu_j} P_k].

    The factor 2: the singularities at t = 1 and t = -1 contribute equally for even k
    (``relu_ntk_singular_expansion``). The analytic remainder contributes faster than any power,
    so with J terms the relative error is O(k^{-2J}). Leading behaviour C k^{-3} (1 - 3/(2k) + O(1/k^2)):
    the corrections to the power law are O(1/k), not O(1/k^2).
    """
    return 2 * sum(c * sphere_power_moment(nu, kk) for c, nu in relu_ntk_singular_expansion(num_terms))


def monomial_moment(n_: int, k_: int, d_: int):
    """E_t[t^n P_k(t)] on S^{d-1} by direct integration (for checking ``spectra.monomial_moments``).

    d = 2: t = cos(theta) uniform in theta, P_k = T_k; odd d: the weight (1 - t^2)^{(d-3)/2} is a
    polynomial and P_k the Gegenbauer polynomial C_k^{(d-2)/2} normalized to P_k(1) = 1.
    """
    if d_ == 2:  # product-to-sum first (TR8): integrating the products directly is very slow
        from sympy.simplify.fu import TR8

        linear = sp.expand(TR8(sp.cos(theta) ** n_ * sp.cos(k_ * theta)))
        return sp.integrate(linear, (theta, 0, sp.pi)) / sp.pi
    if d_ % 2 == 0:
        raise ValueError(f"d={d_} must be 2 or odd here (polynomial weight)")
    lam = sp.Rational(d_ - 2, 2)
    pk = sp.gegenbauer(k_, lam, t) / sp.gegenbauer(k_, lam, 1)
    w = sp.expand((1 - t**2) ** ((d_ - 3) // 2))
    return sp.integrate(sp.expand(t**n_ * pk * w), (t, -1, 1)) / sp.integrate(w, (t, -1, 1))


# ---------------------------------------------------------------------------- binary weights
def rounding_moments():
    """Stochastic rounding Q = +1 w.p. (1 + w)/2, else -1: returns (E Q, Var Q) = (w, 1 - w^2)."""
    w = sp.symbols("w", real=True)
    p_plus = (1 + w) / 2
    mean = sp.simplify(p_plus - (1 - p_plus))
    second = sp.simplify(p_plus + (1 - p_plus))
    return mean, sp.factor(second - mean**2)


def gaussian_smoothed_relu():
    """relu~(u) = E_z relu(u + s z), z ~ N(0, 1): the quasi network's activation.

    Returns the integral as derived by SymPy; it equals u Phi(u/s) + s phi(u/s)
    (``gaussian_smoothed_relu_closed_form``), a smooth (analytic) function of u.
    """
    density = sp.exp(-z**2 / 2) / sp.sqrt(2 * sp.pi)
    return sp.simplify(sp.integrate((u + s * z) * density, (z, -u / s, sp.oo)))


def gaussian_smoothed_relu_closed_form():
    """u Phi(u/s) + s phi(u/s), with Phi(x) = (1 + erf(x/sqrt 2))/2 and phi the normal density."""
    x = u / s
    return u * (1 + sp.erf(x / sp.sqrt(2))) / 2 + s * sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)


def smoothed_preactivation_covariance():
    """Covariance of g = u + sqrt(1-q) z, g' = u' + sqrt(1-q) z' (z, z' independent rounding noise).

    (u, u') has variance q and covariance q rho (latent weights, second moment q); the
    rounding noise of Q . x~ has variance sum_i (1 - W_i^2) x~_i^2 -> 1 - q (|x~| = 1).
    Returns the 2x2 matrix and the correlation of (g, g'), which is q rho.
    """
    cov_u = sp.Matrix([[q, q * rho], [q * rho, q]])
    cov_noise = sp.eye(2) * (1 - q)
    cov = sp.simplify(cov_u + cov_noise)
    return cov, sp.simplify(cov[0, 1] / sp.sqrt(cov[0, 0] * cov[1, 1]))


def binary_ntk(r=rho, qq=q):
    """Quasi-network NTK Theta_bin(r) = K1(q r) + r K0(q r): the v-part and the W-part."""
    k1, k0 = arccos_kernels(qq * r)
    return k1 + r * k0


def bernstein_radius(qq=q):
    """R(q) = (1 + sqrt(1 - q^2)) / q: the Bernstein ellipse through the singularity t = 1/q.

    Solves (R + 1/R)/2 = 1/q for R > 1. A function analytic inside that ellipse has Legendre
    (Gegenbauer) coefficients mu_k = O(R^{-k + eps}): Theta_bin decays geometrically.
    """
    rr = sp.symbols("R", positive=True)
    sols = sp.solve(sp.Eq((rr + 1 / rr) / 2, 1 / qq), rr)
    big = [sol for sol in sols if sp.simplify(sol.subs(qq, sp.Rational(1, 2)) - 1) > 0]
    return sp.simplify(big[0])


# --------------------------------------------------------------------------- spiky-smooth
def gaussian_cosine_moment(c=b):
    """E[cos(c u)] for u ~ N(0, 1), by integration: exp(-c^2/2)."""
    density = sp.exp(-u**2 / 2) / sp.sqrt(2 * sp.pi)
    return sp.simplify(sp.integrate(sp.cos(c * u) * density, (u, -sp.oo, sp.oo)))


def gaussian_linear_sine_moment(c=b):
    """E[u sin(c u)] for u ~ N(0, 1): c exp(-c^2/2) (the degree-1 Hermite coefficient of sin(c u))."""
    density = sp.exp(-u**2 / 2) / sp.sqrt(2 * sp.pi)
    return sp.simplify(sp.integrate(u * sp.sin(c * u) * density, (u, -sp.oo, sp.oo)))


def sine_cosine_duals(r=rho, c=b):
    """(E[sin(c u) sin(c u')], E[cos(c u) cos(c u')]) for unit-variance u, u' with correlation r.

    Product-to-sum: sin sin' = (cos(c(u - u')) - cos(c(u + u')))/2 with u -+ u' ~ N(0, 2(1 -+ r)),
    and E[cos(c g)] = exp(-c^2 Var(g)/2): e^{-c^2} sinh(c^2 r) and e^{-c^2} cosh(c^2 r).
    """
    e_cos = gaussian_cosine_moment(c)  # exp(-c^2/2) for unit variance
    minus = e_cos.subs(c, c * sp.sqrt(2 * (1 - r)))
    plus = e_cos.subs(c, c * sp.sqrt(2 * (1 + r)))
    sin_sin = sp.simplify((minus - plus) / 2)
    cos_cos = sp.simplify((minus + plus) / 2)
    return sin_sin, cos_cos


def spike_ntk(r=rho, aa=a, bb=b):
    """Theta_ss - Theta_relu for phi = relu + (a/b) sin(b u):

    (a/b)^2 E[sin sin'] + r a^2 E[cos cos'] + the cross terms. The cross terms pair relu (Hermite
    degrees 0, 1, even) with sin (odd degrees) only through degree 1, and step (degree 0, odd)
    with cos (even) only through degree 0: 2 (a/b) (1/2) r E[u sin(b u)] + 2 r a (1/2) E[cos(b u)]
    = 2 a r e^{-b^2/2}.
    """
    sin_sin, cos_cos = sine_cosine_duals(r, bb)
    cross = 2 * (aa / bb) * sp.Rational(1, 2) * r * gaussian_linear_sine_moment(bb) \
        + 2 * r * aa * sp.Rational(1, 2) * gaussian_cosine_moment(bb)
    return sp.simplify((aa / bb) ** 2 * sin_sin + r * aa**2 * cos_cos + cross)


def spike_ntk_closed_form(r=rho, aa=a, bb=b):
    """The form used numerically (``activations.spike_ntk_dot``), equal to ``spike_ntk``:

    (a^2/2) [r (e^{-b^2(1-r)} + e^{-b^2(1+r)}) + (e^{-b^2(1-r)} - e^{-b^2(1+r)}) / b^2] + 2 a r e^{-b^2/2}.
    """
    near, far = sp.exp(-bb**2 * (1 - r)), sp.exp(-bb**2 * (1 + r))
    return aa**2 / 2 * (r * (near + far) + (near - far) / bb**2) + 2 * aa * r * sp.exp(-bb**2 / 2)


def spiky_smooth_ntk(r=rho, aa=a, bb=b):
    """NTK of the two-layer network with phi = relu + (a/b) sin(b .): Theta_relu + ``spike_ntk``."""
    return relu_ntk(r) + spike_ntk(r, aa, bb)


def spike_height_limit():
    """(lim_{b->oo} spike at r = 1, lim_{b->oo} spike at fixed r < 1): (a^2/2, 0).

    The fluctuation adds a^2/2 on the diagonal of every Gram matrix (an effective ridge) and
    nothing between distinct points once b |x - x'| >> 1, while its size in the activation,
    a/b, vanishes: the kernel is spiky-smooth because phi' (not phi) fluctuates by O(a).
    """
    sp_ = spike_ntk()
    at_one = sp.limit(sp_.subs(rho, 1), b, sp.oo)
    at_half = sp.limit(sp_.subs(rho, sp.Rational(1, 2)), b, sp.oo)
    return sp.simplify(at_one), sp.simplify(at_half)


def spike_profile(beta=sp.Integer(1)):
    """The spike as a function of the distance delta = |x - x'| on the sphere, with a bias beta.

    1 - rho = (1 - t)/(1 + beta^2) = delta^2 / (2 (1 + beta^2)), so the leading spike
    (a^2/2) exp(-b^2 (1 - rho)) = (a^2/2) exp(-b^2 delta^2 / (2 (1 + beta^2))): a Gaussian of
    width sqrt(1 + beta^2)/b in delta.
    """
    delta = sp.symbols("delta", nonnegative=True)
    one_minus_rho = delta**2 / (2 * (1 + beta**2))
    return delta, a**2 / 2 * sp.exp(-b**2 * one_minus_rho)


def spike_max_slope(beta=sp.Integer(1)):
    """max_delta |d/d delta| of r exp(-b^2 delta^2 / (2(1+beta^2))) per unit residual r:

    b / sqrt(e (1 + beta^2)). The interpolant reaches each noisy label with a spike of height
    (label - smooth fit) and this slope: large derivatives, growing with the frequency b.
    """
    delta = sp.symbols("delta", nonnegative=True)
    profile = sp.exp(-b**2 * delta**2 / (2 * (1 + beta**2)))
    slope = -sp.diff(profile, delta)
    crit = sp.solve(sp.diff(slope, delta), delta)
    crit = [c for c in crit if c.is_positive is not False]
    return sp.simplify(slope.subs(delta, crit[0]))
