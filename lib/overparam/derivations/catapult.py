"""Chapter 3 (large learning rates, catapults, neural quadratic models): symbolic derivations.

The uv model (one hidden layer, linear activation, one scalar example):

    f(u, v; x) = v^T u x / sqrt(m),      u, v in R^m,  x, y scalars,
    L = (kappa/2) (f - y)^2,              kappa = 1 for the loss of the chapter (= ``mse_loss``
                                          of ``overparam.training`` with N = 1),

trained by gradient descent with step eta. The tangent kernel is
lambda = ||grad f||^2 = (||u||^2 + ||v||^2) x^2 / m and the residual is r = f - y.
The derivation is coordinate-free: u and v are SymPy ``MatrixSymbol``s of symbolic size m,
the gradient comes from matrix calculus, and inner products are reduced to the three
invariants U = u^T u, V = v^T v, P = u^T v. Everything the chapter states about the uv model
is a function below; ``tests/test_derivations_catapult.py`` checks each against autodiff.

The neural quadratic model (NQM) of a network is its second-order Taylor expansion in the
parameters around initialization; ``taylor_model`` builds it symbolically for any SymPy
expression (the numerical twin is ``overparam.taylor.quadratize``).
"""

from __future__ import annotations

import sympy as sp

from overparam.derivations import linearity

eta, kappa = sp.symbols("eta kappa", positive=True)
x, y = sp.symbols("x y", real=True)
m = sp.Symbol("m", positive=True, integer=True)
r, f = sp.symbols("r f", real=True)
lam = sp.Symbol("lambda", positive=True)
U, V = sp.symbols("U V", positive=True)
P = sp.Symbol("P", real=True)
a, z = sp.symbols("a z", real=True)  # a = kappa eta lambda, z = (kappa eta x)^2 r^2 / m (scaled variables)

_u = sp.MatrixSymbol("u", m, 1)
_v = sp.MatrixSymbol("v", m, 1)


def _gram(expr):
    """Scalar value of a 1x1 matrix expression in u, v, written with U = u^T u, V = v^T v, P = u^T v."""
    expr = sp.expand(expr)
    subs = {_u.T * _u: sp.Matrix([[U]]), _v.T * _v: sp.Matrix([[V]]),
            _u.T * _v: sp.Matrix([[P]]), _v.T * _u: sp.Matrix([[P]])}
    return sp.expand(sp.Matrix(sp.sympify(expr).subs(subs).doit())[0, 0])


def uv_model():
    """The uv model: dict with f (1x1 matrix expr), grad_u, grad_v (m x 1), and f, kernel in invariants.

    ``f_inv`` = P x / sqrt(m); ``kernel`` = ||grad_u f||^2 + ||grad_v f||^2 = (U + V) x^2 / m.
    """
    f_mat = _v.T * _u * x / sp.sqrt(m)
    grad_u = sp.diff(f_mat, _u)
    grad_v = sp.diff(f_mat, _v)
    kernel = _gram(grad_u.T * grad_u) + _gram(grad_v.T * grad_v)
    return dict(f=f_mat, grad_u=grad_u, grad_v=grad_v, f_inv=_gram(f_mat), kernel=sp.factor(kernel))


def uv_gd_invariants():
    """One GD step on L = (kappa/2)(f - y)^2: the new invariants (U', V', P') in terms of (U, V, P).

    u' = u - eta kappa r grad_u f, v' = v - eta kappa r grad_v f with r = P x/sqrt(m) - y.
    Returns a dict {U: U', V: V', P: P'}.
    """
    model = uv_model()
    res = sp.Symbol("r_0", real=True)  # residual, substituted after the inner products are taken
    u_new = _u - eta * kappa * res * model["grad_u"]
    v_new = _v - eta * kappa * res * model["grad_v"]
    r_of = model["f_inv"] - y
    new = {U: _gram(u_new.T * u_new), V: _gram(v_new.T * v_new), P: _gram(u_new.T * v_new)}
    return {k: sp.expand(e.subs(res, r_of)) for k, e in new.items()}


def uv_one_step():
    """Exact one-step map of (r, lambda) for the uv model: returns (r_next, lambda_next).

    Derived from ``uv_gd_invariants`` by writing U + V = m lambda / x^2 and P = sqrt(m) (r + y) / x:

        r'      = r (1 - kappa eta lambda) + (kappa eta x)^2 r^2 (r + y) / m
        lambda' = lambda + kappa eta x^2 r (kappa eta lambda r - 4 (r + y)) / m

    The pair (r, lambda) is a closed two-dimensional dynamical system for every width m.
    Raises RuntimeError if the reduction leaves U or V separately (it must not).
    """
    new = uv_gd_invariants()
    S = sp.Symbol("S", positive=True)  # U + V
    f_new = new[P] * x / sp.sqrt(m)
    lam_new = (new[U] + new[V]) * x**2 / m
    to_rl = {P: sp.sqrt(m) * (r + y) / x}
    r_next = sp.expand(f_new.subs(to_rl).subs(U, S - V) - y)
    lam_next = sp.expand(lam_new.subs(to_rl).subs(U, S - V))
    if V in r_next.free_symbols or V in lam_next.free_symbols:
        raise RuntimeError("the uv update does not close on (U + V, P); derivation error")
    back = {S: m * lam / x**2}
    r_next = sp.expand(r_next.subs(back))
    lam_next = sp.expand(lam_next.subs(back))
    return r_next, lam_next


def uv_one_step_closed_form():
    """The closed forms printed in ``uv_one_step``'s docstring (for display and comparison)."""
    s2 = (kappa * eta * x) ** 2 / m
    r_next = r * (1 - kappa * eta * lam) + s2 * r**2 * (r + y)
    lam_next = lam + kappa * eta * x**2 * r * (kappa * eta * lam * r - 4 * (r + y)) / m
    return r_next, lam_next


def uv_scaled_map():
    """The y = 0 map in scaled variables a = kappa eta lambda, z = (kappa eta x)^2 r^2 / m.

    Returns (a_next, z_next, invariant) with
        z' = z (1 - a + z)^2,   a' = a - z (4 - a),   and the identity 4 - a' = (4 - a)(1 + z).
    No m appears: width only sets the initial z_0 = (kappa eta x f_0)^2 / m.
    """
    r_next, lam_next = uv_one_step()
    r_next, lam_next = r_next.subs(y, 0), lam_next.subs(y, 0)
    s2 = (kappa * eta * x) ** 2 / m
    # r = +-sqrt(z/s2); z' = s2 r'^2 and a' = kappa eta lam' depend on r only through r^2.
    r_pos = sp.sqrt(z / s2)
    a_next = sp.simplify(sp.expand(kappa * eta * lam_next.subs(r, r_pos)).subs(lam, a / (kappa * eta)))
    z_next = sp.factor(sp.expand(s2 * (r_next.subs(r, r_pos)) ** 2).subs(lam, a / (kappa * eta)))
    invariant = sp.simplify((4 - a_next) - (4 - a) * (1 + z))
    return sp.expand(a_next), z_next, invariant


def uv_regimes():
    """The three regimes in a0 = kappa eta lambda_0, each derived from the scaled map (y = 0, m -> inf).

    lazy: |r'/r| = |1 - a| < 1 at z -> 0 (linear stability)       -> (0, 2)
    the kernel shrinks while the loss grows: a' < a iff a < 4      -> (-oo, 4)
    Returns dict(lazy=Interval, kernel_decreases=Interval, catapult=Interval, diverge=Interval)
    as subsets of a > 0, and thresholds in eta: dict(eta_lazy=2/(kappa lambda0), eta_max=4/(kappa lambda0)).
    """
    a_next, z_next, _ = uv_scaled_map()
    growth = sp.sqrt(sp.limit(z_next / z, z, 0))  # |r'/r| at vanishing residual
    positive = sp.Interval.open(0, sp.oo)
    lazy = sp.solve_univariate_inequality(growth < 1, a, relational=False).intersect(positive)
    decrease = sp.solve_univariate_inequality(sp.expand((a_next - a) / z) < 0, a, relational=False)
    catapult = decrease.intersect(positive) - lazy - sp.FiniteSet(2)
    diverge = positive - decrease - sp.FiniteSet(4)
    lam0 = sp.Symbol("lambda_0", positive=True)
    return dict(
        lazy=lazy, kernel_decreases=decrease, catapult=catapult, diverge=diverge,
        eta_lazy=2 / (kappa * lam0), eta_max=4 / (kappa * lam0), lambda_0=lam0,
    )


def linear_model_threshold():
    """GD stability threshold of the linear model on N examples under L = 1/(2N) ||f - y||^2.

    The residual along an eigenvector of the Gram matrix Theta (eigenvalue mu) is multiplied by
    1 - eta mu / N per step; |1 - eta mu/N| < 1 iff 0 < eta < 2N/mu. Returns (factor, eta_max)
    with eta_max = 2 N / mu, i.e. 2/lambda_0 for the loss-normalized kernel lambda_0 = mu_max/N.
    """
    N = sp.Symbol("N", positive=True, integer=True)
    mu = sp.Symbol("mu", positive=True)
    factor = 1 - eta * mu / N
    sol = sp.solve_univariate_inequality(sp.Abs(factor) < 1, eta, relational=False)
    return factor, sol.sup


def taylor_model(expr, params, params0, order: int = 2):
    """Taylor polynomial of ``expr`` in the symbols ``params`` around ``params0`` (same length), to ``order``.

    order=1: the linearized model; order=2: the neural quadratic model. Exact for polynomial
    expressions of degree <= order (e.g. the uv model at order 2).
    """
    if order not in (1, 2):
        raise ValueError(f"order={order!r} is not supported; allowed: 1, 2")
    if len(params) != len(params0):
        raise ValueError(f"params has {len(params)} symbols but params0 has {len(params0)} values")
    t = sp.Symbol("t")
    at = {p: p0 + t * (p - p0) for p, p0 in zip(params, params0)}
    g = expr.subs(at, simultaneous=True)
    series = sum(sp.diff(g, t, k).subs(t, 0) / sp.factorial(k) for k in range(order + 1))
    return series


def two_layer_nqm(m_units: int = 2, d: int = 1, activation=linearity.sigma):
    """Symbolic NQM of the chapter-1 two-layer network ``linearity.two_layer`` around symbolic params0.

    Returns (f_quad, f, params, params0, x): f_quad = f0 + J dp + 1/2 dp^T H dp. For an
    activation with sigma'' = 0 (ReLU away from the kink) the quadratic term reduces to the
    hidden-to-output cross terms sum_i dv_i sigma'(z_i) dW_i^T x / sqrt(d m), a uv model.
    """
    f_net, params, _, _, xs = linearity.two_layer(m_units, d, activation)
    params0 = [sp.Symbol(f"{p.name}^0", real=True) for p in params]
    return taylor_model(f_net, params, params0, order=2), f_net, params, params0, xs


def relu_unit_nqm_gap():
    """One bias-free ReLU unit f = v relu(w x): its NQM around (v0, w0) and the gap f - f_quad.

    Taylor-expands f = v w x H(w x) (H the Heaviside step; its derivative vanishes away from the
    kink) around a point with w0 x > 0 ("on") and one with w0 x < 0 ("off"). Returns dict with
    f_quad_on = v w x and f_quad_off = 0 (the NQM keeps the pattern of params0, and is exact
    there: the unit is bilinear in (w, v) on a fixed pattern), and the gaps f - f_quad for the
    four (pattern at params0, pattern at params) cases: zero unless the unit flipped, and then
    v |w x| (``overparam.experiments.catapult_phase.relu_nqm_gap`` sums this over units).
    """
    v_, w_, v0, w0 = sp.symbols("v w v_0 w_0", real=True)
    xp = sp.Symbol("x", positive=True)
    h_pos, h_neg = sp.Symbol("h_+", positive=True), sp.Symbol("h_-", negative=True)
    out = {}
    for name, sign in (("on", 1), ("off", -1)):
        # at params0 the unit is on (w0 x > 0) or off; locally H(w x) = H(w0 x) is constant
        local = v_ * w_ * xp * (1 if sign > 0 else 0)
        q = taylor_model(local, [v_, w_], [v0, w0], order=2)
        out[f"f_quad_{name}"] = sp.expand(q)
    relu = lambda h: h * sp.Heaviside(h)
    # gap f - f_quad at a point where h = w x is positive (h_+) or negative (h_-), v arbitrary
    for pre, q in (("on", out["f_quad_on"]), ("off", out["f_quad_off"])):
        for post, h in (("on", h_pos), ("off", h_neg)):
            gap = v_ * relu(h) - q.subs(w_, h / xp)
            out[f"gap_{pre}_{post}"] = sp.simplify(gap)
    out["flip_gap"] = sp.simplify(out["gap_on_off"] - v_ * sp.Abs(h_neg))  # 0: gap is v |h| after a flip
    out["h_pos"], out["h_neg"], out["v"] = h_pos, h_neg, v_
    return out
