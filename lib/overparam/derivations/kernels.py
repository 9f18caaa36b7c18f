r"""SymPy derivations behind the infinite-width kernels (chapter 02).

Each function derives (rather than quotes) a result that ``overparam.kernels.analytic`` and
``overparam.kernels.regression`` implement numerically; ``tests/test_derivations_kernels.py``
checks every expression against the numerical code or a Monte Carlo estimate.

Notation: (u, v) ~ N(0, [[q1, k], [k, q2]]), cos(theta) = k / sqrt(q1 q2) with theta in [0, pi];
sigma_w, sigma_b, sigma_u the weight, bias and input standard deviations.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp

q1, q2 = sp.symbols("q_1 q_2", positive=True)
k12 = sp.Symbol("k", real=True)
theta = sp.Symbol("theta", positive=True)
rho = sp.Symbol("rho", real=True)
sigma_w, sigma_b, sigma_u = sp.symbols("sigma_w sigma_b sigma_u", positive=True)
t, lam, lr, n_train = sp.symbols("t lambda eta N", positive=True)
steps = sp.Symbol("k_steps", positive=True, integer=True)

_r, _alpha = sp.symbols("r alpha", positive=True)
_z1, _z2 = sp.symbols("z_1 z_2", real=True)


@lru_cache(maxsize=None)
def relu_expectations():
    """(E[relu(u) relu(v)], E[step(u) step(v)]) as functions of q1, q2, theta, by polar integration.

    Write u = sqrt(q1) z1, v = sqrt(q2)(cos(theta) z1 + sin(theta) z2) with z standard normal,
    z = r (cos alpha, sin alpha). Then u > 0 and v > 0 exactly on the wedge
    alpha in (theta - pi/2, pi/2) of opening pi - theta, and the density is
    r exp(-r^2/2) / (2 pi) dr dalpha. The radial and angular integrals separate.
    """
    density = _r * sp.exp(-_r**2 / 2) / (2 * sp.pi)
    wedge = (_alpha, theta - sp.pi / 2, sp.pi / 2)
    u = sp.sqrt(q1) * _r * sp.cos(_alpha)
    v = sp.sqrt(q2) * _r * sp.cos(_alpha - theta)  # cos(theta) cos(alpha) + sin(theta) sin(alpha)
    kappa1 = sp.integrate(sp.integrate(u * v * density, (_r, 0, sp.oo)), wedge)
    kappa0 = sp.integrate(sp.integrate(density, (_r, 0, sp.oo)), wedge)
    return sp.simplify(sp.trigsimp(kappa1)), sp.simplify(kappa0)


@lru_cache(maxsize=None)
def gaussian_integral_lemma():
    """int_R exp(-a z^2 + b z) dz = sqrt(pi/a) exp(b^2 / (4a)) for a > 0 (SymPy integrates it)."""
    a = sp.Symbol("a", positive=True)
    b = sp.Symbol("b", real=True)
    z = sp.Symbol("z", real=True)
    return a, b, sp.simplify(sp.integrate(sp.exp(-a * z**2 + b * z), (z, -sp.oo, sp.oo)))


def _integrate_gaussian_exponent(exponent, z):
    """int_R exp(exponent) dz for an exponent quadratic in z with negative leading coefficient."""
    a, b, lemma = gaussian_integral_lemma()
    poly = sp.Poly(sp.expand(exponent), z)
    c2, c1, c0 = (poly.coeff_monomial(z**2), poly.coeff_monomial(z), poly.coeff_monomial(1))
    return sp.exp(c0) * lemma.subs({a: -c2, b: c1})


@lru_cache(maxsize=None)
def erf_derivative_expectation():
    """E[phi'(u) phi'(v)] for phi = erf, phi'(x) = 2/sqrt(pi) exp(-x^2): a Gaussian integral.

    u = sqrt(q1) z1, v = (k/sqrt(q1)) z1 + s z2 with s^2 = q2 - k^2/q1 and z1, z2 iid N(0, 1);
    E[exp(-u^2 - v^2)] is integrated in z2, then z1, with ``gaussian_integral_lemma``.
    Result: (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 k^2) = (4/pi) det(I + 2 K)^{-1/2}.
    """
    s = sp.Symbol("s", positive=True)
    u = sp.sqrt(q1) * _z1
    v = k12 / sp.sqrt(q1) * _z1 + s * _z2
    exponent = -(u**2) - v**2 - _z1**2 / 2 - _z2**2 / 2  # integrand times the N(0, I) density
    inner = _integrate_gaussian_exponent(exponent, _z2)
    # inner = exp(quadratic in z1) * constant: split off the exponent and integrate z1
    inner = sp.powsimp(sp.expand_power_base(inner, force=True), combine="exp")
    const, expo = sp.Integer(1), sp.Integer(0)
    for factor in sp.Mul.make_args(inner):
        if isinstance(factor, sp.exp):
            expo += factor.args[0]
        else:
            const *= factor
    outer = const * _integrate_gaussian_exponent(expo, _z1) / (2 * sp.pi)
    outer = sp.simplify(outer.subs(s, sp.sqrt(q2 - k12**2 / q1)))
    result = sp.Rational(4) / sp.pi * outer
    closed = 4 / sp.pi / sp.sqrt((1 + 2 * q1) * (1 + 2 * q2) - 4 * k12**2)
    if sp.simplify(sp.radsimp(result**2) - closed**2) != 0:  # both positive: equal squares mean equal values
        raise AssertionError(f"erf derivative expectation did not simplify to the closed form: {result}")
    return closed


@lru_cache(maxsize=None)
def erf_expectation():
    """E[erf(u) erf(v)] = (2/pi) arcsin(2k / sqrt((1 + 2 q1)(1 + 2 q2))), from Price's theorem.

    Price: d/dk E[phi(u) phi(v)] = E[phi'(u) phi'(v)] (differentiate the Gaussian density in its
    covariance; the heat-equation identity dp/dk = d^2 p / du dv, then integrate by parts).
    At k = 0, u and v are independent and erf is odd, so the expectation is 0; integrate
    ``erf_derivative_expectation`` in k from 0.
    """
    kk = sp.Symbol("kappa", real=True)
    big_a = sp.Symbol("A", positive=True)  # A = (1 + 2 q1)(1 + 2 q2) > 4 k^2
    integrand = erf_derivative_expectation().subs((1 + 2 * q1) * (1 + 2 * q2), big_a).subs(k12, kk)
    antiderivative = sp.integrate(integrand, kk)
    result = (antiderivative.subs(kk, k12) - antiderivative.subs(kk, 0)).subs(big_a, (1 + 2 * q1) * (1 + 2 * q2))
    closed = 2 / sp.pi * sp.asin(2 * k12 / sp.sqrt((1 + 2 * q1) * (1 + 2 * q2)))
    if sp.simplify(sp.diff(result - closed, k12)) != 0 or sp.simplify((result - closed).subs(k12, 0)) != 0:
        raise AssertionError(f"erf expectation integral did not match the arcsine form: {result}")
    return closed


def expectations(activation: str):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) in terms of q1, q2, k (theta eliminated)."""
    if activation == "relu":
        kappa1, kappa0 = relu_expectations()
        th = sp.acos(k12 / sp.sqrt(q1 * q2))
        return kappa1.subs(theta, th), kappa0.subs(theta, th)
    if activation == "erf":
        return erf_expectation(), erf_derivative_expectation()
    if activation == "linear":
        return k12, sp.Integer(1)
    raise ValueError(f"activation={activation!r}; allowed: 'relu', 'erf', 'linear'")


def fc_layer_recursion(activation: str):
    """One layer of the NNGP / NTK recursion in the NTK parameterization.

    Given Sigma^{l-1} (diagonals q1, q2, cross k) and Theta^{l-1}(x, x') = Th, returns
    (Sigma^l(x, x'), Theta^l(x, x'), Th symbol):
    Sigma^l = sigma_w^2 E[phi phi] + sigma_b^2, Theta^l = Sigma^l + sigma_w^2 E[phi' phi'] Th.
    Derivation: h^l = sigma_w a^{l-1} W / sqrt(n) + sigma_b b; conditioned on layer l-1 the
    units of h^l are iid Gaussian with this covariance (law of large numbers over n); the
    gradient inner product splits into the layer's own parameters (Sigma^l) and earlier layers,
    which reach h^l through sigma_w W phi'(h^{l-1}) / sqrt(n): a factor sigma_w^2 E[phi' phi'].
    """
    th = sp.Symbol("Theta", real=True)
    e, edot = expectations(activation)
    sigma_next = sigma_w**2 * e + sigma_b**2
    return sigma_next, sigma_next + sigma_w**2 * edot * th, th


def fc_first_layer(x_dot, d):
    """Sigma^1 = Theta^1 = sigma_w^2 x.x'/d + sigma_b^2 (the first layer is linear in its parameters)."""
    return sigma_w**2 * x_dot / d + sigma_b**2


def relu_normalized_series(order: int = 12):
    """Taylor series of the normalized ReLU kernel J(rho) = E[relu(u) relu(v)] / sqrt(q1 q2).

    J(rho) = (sqrt(1 - rho^2) + (pi - acos(rho)) rho) / (2 pi) = sum_k c_k rho^k with
    c_0 = 1/(2 pi), c_1 = 1/4, c_{2m+2} = a_m / ((2m+2) 2 pi), a_m = (2m)!/(4^m m!^2 (2m+1)).
    Returns (series polynomial up to rho^order, closed-form coefficient list c_0..c_order).
    """
    kappa1, _ = relu_expectations()
    j = sp.simplify(kappa1.subs(theta, sp.acos(rho)) / sp.sqrt(q1 * q2))
    poly = sp.series(j, rho, 0, order + 1).removeO()
    m = sp.Symbol("m", integer=True, nonnegative=True)
    a_m = sp.factorial(2 * m) / (4**m * sp.factorial(m) ** 2 * (2 * m + 1))
    coeffs = [1 / (2 * sp.pi), sp.Rational(1, 4)]
    for kk in range(2, order + 1):
        coeffs.append(a_m.subs(m, (kk - 2) // 2) / (kk * 2 * sp.pi) if kk % 2 == 0 else sp.Integer(0))
    return sp.expand(poly), coeffs[: order + 1]


def arcsin_coefficient(m_value):
    """a_m = (2m)! / (4^m (m!)^2 (2m+1)), the coefficient of t^{2m+1} in arcsin(t) (all > 0)."""
    m = sp.Integer(m_value)
    return sp.factorial(2 * m) / (4**m * sp.factorial(m) ** 2 * (2 * m + 1))


def deq_fixed_point(activation: str = "relu"):
    """DEQ NNGP fixed point and contraction constants of the layer map.

    The layer map on the kernel is T(K) = sigma_w^2 E_K[phi phi] + c with the input term
    c(x, x') = sigma_u^2 x.x'/d + sigma_b^2. It is triangular: the diagonal q = K(x, x) maps
    by itself, and given the diagonals each off-diagonal entry k maps by itself, with
    derivative dT/dk = sigma_w^2 E[phi'(u) phi'(v)] (Price). Returns a dict:

    * ``diag_map``: q -> T(q) on the diagonal (c_ii -> symbol c);
    * ``diag_slope``: its derivative in q; ``diag_slope_sup``: its supremum over q >= 0;
    * ``offdiag_slope``: dT/dk; ``offdiag_slope_sup``: its supremum over covariances;
    * ``diag_fixed_point``: q* (relu and linear: in closed form; erf: None, no closed form);
    * ``condition``: contraction condition on sigma_w^2 (sup slope < 1).
    """
    c = sp.Symbol("c", positive=True)
    q = sp.Symbol("q", positive=True)
    e, edot = expectations(activation)
    diag = sp.simplify(sigma_w**2 * e.subs({q1: q, q2: q, k12: q}) + c)
    slope = sp.simplify(sp.diff(diag, q))
    off_slope = sigma_w**2 * edot
    if activation == "relu":
        slope_sup = slope  # linear diagonal map: slope sigma_w^2 / 2 everywhere
        # E[step step] = (pi - theta)/(2 pi) is largest at theta = 0
        off_sup = sigma_w**2 * relu_expectations()[1].subs(theta, 0)
    elif activation == "erf":
        slope_sup = sp.limit(slope, q, 0)  # decreasing in q (checked in the tests)
        off_sup = sigma_w**2 * erf_derivative_expectation().subs({q1: 0, q2: 0, k12: 0})
    else:
        slope_sup, off_sup = slope, off_slope
    sup = sp.Max(slope_sup, off_sup)
    fixed = sp.solve(sp.Eq(q, diag), q) if activation in ("relu", "linear") else None
    return dict(diag_map=diag, diag_slope=slope, diag_slope_sup=sp.simplify(slope_sup), offdiag_slope=off_slope,
                offdiag_slope_sup=sp.simplify(off_sup), diag_fixed_point=fixed[0] if fixed else None,
                condition=sp.simplify(sup < 1), c=c, q=q)


def relu_forward_iteration_rate():
    """sigma_w sqrt(E[step(u)^2]) = sigma_w / sqrt(2): the finite-width DEQ iteration's asymptotic rate.

    Linearized at the equilibrium, z -> phi(sigma_w z W / sqrt(n) + ...) has Jacobian
    sigma_w W D / sqrt(n), D = diag(phi'(h*)); treating D as independent of W, the circular law
    gives the spectral radius sigma_w sqrt(mean of phi'^2) = sigma_w sqrt(E[step(u)^2])
    (E[step^2] = kappa_0 at theta = 0). A heuristic, not a theorem: D is evaluated at the
    equilibrium, which depends on W, and the circular law does not cover that dependence.
    """
    return sigma_w * sp.sqrt(relu_expectations()[1].subs(theta, 0))


def gradient_flow_mode():
    """One eigen-direction of the linearized dynamics under mse_loss = 1/(2N) sum (f - y)^2.

    GD: r_{k+1} = (1 - eta lambda / N) r_k, so r_k = (1 - eta lambda/N)^k r_0; with t = eta k
    held fixed as eta -> 0 this tends to exp(-lambda t / N) r_0, the gradient-flow solution of
    dr/dt = -(lambda / N) r. Returns (discrete factor, its limit, the flow factor).
    """
    discrete = (1 - lr * lam / n_train) ** steps
    limit = sp.limit((1 - lr * lam / n_train) ** (t / lr), lr, 0)
    flow = sp.exp(-lam * t / n_train)
    return discrete, sp.simplify(limit), flow


def flow_ridge_filter_gap(c=1):
    """How far early stopping at time t is from ridge regression with ridge c / t, per eigen-direction.

    Under mse_loss an eigen-direction of Theta / N with eigenvalue s is fitted by the fraction
    1 - exp(-s t) after gradient-flow time t (``gradient_flow_mode``) and by s / (s + lambda) by
    ridge regression with ridge lambda on Theta / N (ridge N lambda on Theta). With lambda = c / t
    and x = s t the two filters differ by gap(x) = c / (c + x) - exp(-x). Setting gap'(x) = 0 gives
    (c + x)^2 = c exp(x); with u = c + x this is (-u/2) exp(-u/2) = -sqrt(c) exp(-c/2) / 2, whose
    root with u > 2 is on the lower branch of Lambert's W. Since exp(-x) = c / u^2 there, the
    largest gap is c (u - 1) / u^2: for c = 1 (ridge 1/t) about 0.2036, for c = 10 about 0.70.

    Returns dict(x=the symbol, gap=gap(x), x_star, value=the largest gap, stationarity=gap'(x*) and
    closed_form_error=value - c (u - 1) / u^2, both simplified with W e^W = z and both 0).
    """
    x = sp.Symbol("x", nonnegative=True)
    cc = sp.sympify(c)
    gap = cc / (cc + x) - sp.exp(-x)
    z = -sp.sqrt(cc) * sp.exp(-cc / 2) / 2
    w = sp.LambertW(z, -1)
    x_star = -2 * w - cc

    def lambert(expr):
        # W e^W = z, so exp(a W + b) = e^b (z / W)^a: the identity that removes the exponential
        def rewrite(arg):
            a = sp.expand(arg).coeff(w)
            return sp.exp(sp.expand(arg - a * w)) * (z / w) ** a if a != 0 else sp.exp(arg)
        return sp.simplify(expr.replace(sp.exp, rewrite))

    u = cc + x_star
    value = lambert(gap.subs(x, x_star))
    stationarity = lambert(sp.diff(gap, x).subs(x, x_star))
    closed_form_error = sp.simplify(value - cc * (u - 1) / u**2)
    return dict(x=x, gap=gap, x_star=x_star, value=value, stationarity=stationarity,
                closed_form_error=closed_form_error)
