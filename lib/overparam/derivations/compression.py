"""SymPy derivations for chapter 09: TT layer counts, TT initialization variance, distillation risk.

All functions return SymPy expressions; modes and ranks are passed as lists of symbols (or
integers), boundary ranks r_0 = r_d = 1.
"""

from __future__ import annotations

import sympy as sp


def tt_params(in_modes, out_modes, ranks):
    """sum_k r_{k-1} m_k n_k r_k: weights of a TT layer (no bias)."""
    r = [1, *ranks, 1]
    return sp.Add(*[r[k] * in_modes[k] * out_modes[k] * r[k + 1] for k in range(len(in_modes))])


def tt_macs(in_modes, out_modes, ranks):
    """Multiply-adds of the sequential contraction: sum_k (n_1..n_{k-1}) r_{k-1} m_k n_k r_k (m_{k+1}..m_d)."""
    r, d = [1, *ranks, 1], len(in_modes)
    return sp.Add(*[sp.Mul(*out_modes[:k]) * r[k] * in_modes[k] * out_modes[k] * r[k + 1] * sp.Mul(*in_modes[k + 1:])
                    for k in range(d)])


def dense_params(in_modes, out_modes):
    """M N = prod m_k prod n_k: weights (and multiply-adds per example) of the dense layer."""
    return sp.Mul(*in_modes) * sp.Mul(*out_modes)


def uniform_tt(d: int):
    """(params, macs, dense, ratio) for d equal modes m -> n and equal internal ranks r, with symbols m, n, r."""
    m, n, r = sp.symbols("m n r", positive=True, integer=True)
    p = sp.factor(tt_params([m] * d, [n] * d, [r] * (d - 1)))
    dense = dense_params([m] * d, [n] * d)
    return p, sp.factor(tt_macs([m] * d, [n] * d, [r] * (d - 1))), dense, sp.simplify(dense / p)


def tt_init_variance(d: int):
    """Var of one full-matrix entry when the d cores have i.i.d. N(0, v) entries and ranks r_1..r_{d-1}.

    Returns (expression in v and r_k, the v solving Var = g / M). Entries of W are sums over
    prod r_k rank paths of products of d independent entries: Var = v^d prod r_k.
    """
    v, g, big_m = sp.symbols("v g M", positive=True)
    rs = sp.symbols(f"r1:{d}", positive=True)
    var = v**d * sp.Mul(*rs)
    return var, sp.solve(sp.Eq(var, g / big_m), v)[0]


def risk_quadratic():
    """Averaged transfer risk of the linear student vs soft-label ratio rho, and its minimizer.

    R(rho) = AA + 2 rho ASe + rho^2 SeSe + (1 - rho)^2 N, with AA = |A|^2, ASe = <A, S e>,
    SeSe = |S e|^2, N = tr(S D S^T) (all per test point). Returns (rho, R, rho_star,
    R(1)/R(0)). A perfect teacher (e = 0) gives rho_star = 1: pure soft labels.
    """
    rho = sp.symbols("rho", real=True)
    aa, ase, sese, noise = sp.symbols("AA ASe SeSe N", real=True)
    risk = aa + 2 * rho * ase + rho**2 * sese + (1 - rho) ** 2 * noise
    rho_star = sp.solve(sp.diff(risk, rho), rho)[0]
    return rho, risk, sp.simplify(rho_star), sp.simplify(risk.subs(rho, 1) / risk.subs(rho, 0))


def subs_by_name(expr, **values):
    """Substitute numbers for the free symbols of expr, matched by name (keeps their assumptions)."""
    return expr.subs({s: values[s.name] for s in expr.free_symbols if s.name in values})


def rho_star_gap():
    """1 - rho_star of ``risk_quadratic`` as a single fraction: (ASe + SeSe) / (N + SeSe).

    Since N + SeSe > 0 (a noise trace plus a squared norm), rho_star < 1 exactly when
    ASe + SeSe = <A + S e, S e> > 0: the error of the student trained on pure soft labels,
    A + S e = S t - f*, is positively aligned with the teacher's error seen through the student,
    S e. An imperfect teacher whose error partly cancels the student's own bias A
    (<A, S e> < -|S e|^2) gives rho_star > 1.
    """
    _, _, rho_star, _ = risk_quadratic()
    return sp.factor(sp.simplify(1 - rho_star))


def tt_lowrank_params(side, hidden_1, hidden_2, r):
    """First-layer weights of the two factorizations of a (side^2 x h_1 h_2) matrix at rank r.

    TT with modes (side, side) -> (h_1, h_2): r side (h_1 + h_2); U V^T: r (side^2 + h_1 h_2).
    Returns (tt, lowrank, the lowrank rank that matches the TT budget).
    """
    tt_p = tt_params([side, side], [hidden_1, hidden_2], [r])
    uv_p = r * (side**2 + hidden_1 * hidden_2)
    return tt_p, uv_p, sp.simplify(tt_p / (side**2 + hidden_1 * hidden_2))
