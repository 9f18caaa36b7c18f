"""Chapter 8 (quadratic networks, mean-field limits): symbolic derivations.

Conventions as ``overparam.experiments.quadratic_nets``: f_W(x) = sum_j (w_j^T x)^2 = x^T A x with A = W W^T,
teacher A*, D = A - A*, x ~ N(0, I_d), risk R = 1/2 E[(x^T D x)^2].
"""

from __future__ import annotations

import itertools

import sympy as sp


def symmetric_matrix(d: int, name: str = "B"):
    """A d x d symmetric SymPy matrix of real symbols B_ij (i <= j)."""
    return sp.Matrix(d, d, lambda i, j: sp.Symbol(f"{name}_{min(i, j)}{max(i, j)}", real=True))


def gaussian_moment(powers):
    """E[prod_i x_i^{p_i}] for x ~ N(0, I): product of (p-1)!! for even p, 0 if any p is odd."""
    out = sp.Integer(1)
    for p in powers:
        if p % 2:
            return sp.Integer(0)
        out *= sp.factorial2(p - 1) if p else 1
    return out


def isserlis_fourth_moment(i, j, k, l):
    """E[x_i x_j x_k x_l] = d_ij d_kl + d_ik d_jl + d_il d_jk (Isserlis / Wick, three pairings)."""
    delta = lambda a, b: sp.Integer(1 if a == b else 0)
    return delta(i, j) * delta(k, l) + delta(i, k) * delta(j, l) + delta(i, l) * delta(j, k)


def quartic_form_moment(d: int):
    """(E[(x^T B x)^2] summed with Isserlis, the closed form 2 tr(B^2) + (tr B)^2, B) for symbolic B (d x d)."""
    B = symmetric_matrix(d)
    idx = range(d)
    moment = sp.expand(sum(B[i, j] * B[k, l] * isserlis_fourth_moment(i, j, k, l)
                           for i, j, k, l in itertools.product(idx, idx, idx, idx)))
    closed = sp.expand(2 * (B * B).trace() + B.trace() ** 2)
    return moment, closed, B


def quartic_form_moment_direct(d: int):
    """E[(x^T B x)^2] by expanding the polynomial and replacing each monomial by its Gaussian moment
    (no pairing argument): an independent check of ``quartic_form_moment``."""
    B = symmetric_matrix(d)
    x = sp.symbols(f"x0:{d}", real=True)
    X = sp.Matrix(x)
    poly = sp.Poly(sp.expand(((X.T * B * X)[0]) ** 2), *x)
    moment = sum(coeff * gaussian_moment(mon) for mon, coeff in poly.terms())
    return sp.expand(moment), B


def population_risk(d: int):
    """(R, D): R = 1/2 E[(x^T D x)^2] = tr(D^2) + 1/2 (tr D)^2 for symbolic symmetric D (d x d)."""
    D = symmetric_matrix(d, "D")
    return sp.expand((D * D).trace() + D.trace() ** 2 / 2), D


def risk_in_weights(d: int, m: int, m_star: int):
    """(R(W), W, W_star): the closed-form risk as a polynomial in student and teacher weights."""
    W = sp.Matrix(d, m, lambda i, j: sp.Symbol(f"w_{i}{j}", real=True))
    Ws = sp.Matrix(d, m_star, lambda i, j: sp.Symbol(f"u_{i}{j}", real=True))
    D = W * W.T - Ws * Ws.T
    return sp.expand((D * D).trace() + D.trace() ** 2 / 2), W, Ws


def risk_gradient_check(d: int = 2, m: int = 2, m_star: int = 1):
    """(dR/dW by SymPy, the formula 4 G W with G = D + tr(D)/2 I): two equal (d, m) matrices."""
    R, W, Ws = risk_in_weights(d, m, m_star)
    grad = sp.Matrix(d, m, lambda i, j: sp.diff(R, W[i, j]))
    D = W * W.T - Ws * Ws.T
    G = D + D.trace() / 2 * sp.eye(d)
    return grad, sp.expand(4 * G * W)


def rank_deficient_floor():
    """Best width-m student when rank A* > m (eigenvectors aligned, as von Neumann's trace
    inequality allows): keep a_i = lambda_i + c for the top m eigenvalues.

    Returns (c_opt, floor, (m, r, q)) with r = sum_{i>m} lambda_i, q = sum_{i>m} lambda_i^2:
    R(c) = m c^2 + q + (m c - r)^2 / 2 is minimized at c = r/(m+2), R = q + r^2/(m+2).
    """
    m, r, q = sp.symbols("m r q", positive=True)
    c = sp.Symbol("c", real=True)
    R = m * c**2 + q + (m * c - r) ** 2 / 2
    c_opt = sp.solve(sp.diff(R, c), c)[0]
    floor = q + sp.simplify(R.subs(c, c_opt) - q)
    return sp.simplify(c_opt), floor, (m, r, q)


def rank_deficient_stationarity(m: int = 2, m_star: int = 3):
    """Solve grad R = 0 over the kept eigenvalues a_1..a_m (teacher eigenvalues l_1..l_m*):
    returns (solution dict, a, l); each a_i - l_i equals r/(m+2)."""
    a = sp.symbols(f"a1:{m + 1}", real=True)
    lam = sp.symbols(f"l1:{m_star + 1}", positive=True)
    R = sum((a[i] - lam[i]) ** 2 for i in range(m)) + sum(l**2 for l in lam[m:]) + (sum(a) - sum(lam)) ** 2 / 2
    return sp.solve([sp.diff(R, ai) for ai in a], a, dict=True)[0], a, lam


def block_dynamics():
    """One 2-d block (teacher direction e1, student vector w = (w1, w2)) under the flow.

    dw/dt = -4 (w w^T - e1 e1^T + lambda I) w, and d tr(w w^T)/dt = -8 (tr(D A) + lambda tr A) in
    the block; summed over blocks, tr A stays fixed (the d -> infinity constraint) iff
    lambda = -tr(DA)/tr(A). Returns dict with dw, dtrA, residual (dtrA + 8 (tr DA + lambda tr A),
    identically 0), lambda_eq and the symbols (w1, w2, lambda).
    """
    w1, w2, lam = sp.symbols("w_1 w_2 lambda", real=True)
    w = sp.Matrix([w1, w2])
    D = w * w.T - sp.Matrix([[1, 0], [0, 0]])
    dw = sp.expand(-4 * (D + lam * sp.eye(2)) * w)
    A = w * w.T
    dtrA = sp.expand((dw * w.T + w * dw.T).trace())
    trDA, trA = sp.expand((D * A).trace()), sp.expand(A.trace())
    return dict(dw=dw, dtrA=dtrA, residual=sp.expand(dtrA + 8 * (trDA + lam * trA)),
                lambda_eq=sp.simplify(-trDA / trA), symbols=(w1, w2, lam))


def limit_floor():
    """lim_{d->inf} floor / d for m = alpha d, m* = beta d, orthonormal teacher (eigenvalues 1).

    Returns (expr, (alpha, beta)) = (beta - alpha) beta / alpha, from q = r = (beta - alpha) d.
    """
    alpha, beta, d = sp.symbols("alpha beta d", positive=True)
    _, floor, (m, r, q) = rank_deficient_floor()
    per_dim = floor.subs({m: alpha * d, r: (beta - alpha) * d, q: (beta - alpha) * d}) / d
    return sp.factor(sp.limit(per_dim, d, sp.oo)), (alpha, beta)


def surplus_tail():
    """Late-time tail of the high-dimensional limit r(t) = lim R/d for alpha > beta (orthonormal setting).

    Once every teacher direction is aligned, what is left is the mass sigma = alpha - beta of unpaired
    student directions of size s (ds/dt = -4 (s^2 + lambda) s) and the teacher directions, sitting
    quasi-statically at D = -lambda (their rate ~8 is fast against the 1/t of the tail). The frozen
    trace (tr D = 0 per dimension: -beta lambda + sigma s^2 = 0) gives lambda = sigma s^2 / beta, so
    d(1/s^2)/dt = 8 c with c = alpha / beta; from s(0)^2 = beta / alpha,
    s(t)^2 = beta / (alpha (1 + 8 t)) and r = beta lambda^2 + sigma s^4.

    Returns dict(r=(alpha - beta) beta / (alpha (1 + 8t)^2), c, lam, s2, residual (the ODE for s^2
    minus its solution, simplified: 0), symbols (alpha, beta, t)).
    """
    alpha, beta, t, s2 = sp.symbols("alpha beta t s2", positive=True)
    sigma = alpha - beta
    lam = sp.solve(sp.Eq(-beta * sp.Symbol("lam") + sigma * s2, 0), sp.Symbol("lam"))[0]
    c = sp.simplify(1 + lam / s2)                                    # d(s^2)/dt = -8 c s^4
    s2_t = 1 / (alpha / beta + 8 * c * t)
    residual = sp.simplify(sp.diff(s2_t, t) + 8 * c * s2_t**2)
    assert sp.simplify(s2_t.subs(t, 0) - beta / alpha) == 0
    r = sp.factor(sp.simplify((beta * lam**2 + sigma * s2**2).subs(s2, s2_t)))
    return dict(r=r, c=c, lam=lam, s2=sp.simplify(s2_t), residual=residual, symbols=(alpha, beta, t))
