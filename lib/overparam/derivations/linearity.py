"""Chapter 1 (transition to linearity): symbolic derivations.

Model: the two-layer network in NTK parameterization, as ``overparam.models.two_layer``:

    f(x) = (1/sqrt(m)) * sum_i v_i * sigma(z_i),   z_i = (1/sqrt(d)) * sum_j W_ji x_j,

with W of shape (d, m) and v of shape (m,). Parameters are ordered as the library flattens
them: W row-major (W_00, W_01, ..., W_{d-1,m-1}), then v.
"""

from __future__ import annotations

import sympy as sp

sigma = sp.Function("sigma")


def two_layer(m: int, d: int, activation=sigma):
    """(f, params, W, v, x) for the two-layer net with symbolic weights and input.

    ``activation`` is a SymPy function of one argument (default: an undefined ``sigma``).
    """
    W = sp.Matrix(d, m, lambda j, i: sp.Symbol(f"W_{j}{i}", real=True))
    v = sp.Matrix(m, 1, lambda i, _: sp.Symbol(f"v_{i}", real=True))
    x = sp.Matrix(d, 1, lambda j, _: sp.Symbol(f"x_{j}", real=True))
    z = (W.T * x) / sp.sqrt(d)
    f = sum(v[i] * activation(z[i]) for i in range(m)) / sp.sqrt(m)
    params = list(W) + list(v)  # sympy Matrix iterates row-major
    return f, params, W, v, x


def gradient_and_hessian(m: int, d: int, activation=sigma):
    """Gradient (P,) and Hessian (P, P) of f in the parameters, P = m (d + 1)."""
    f, params, *_ = two_layer(m, d, activation)
    grad = sp.Matrix([sp.diff(f, p) for p in params])
    hess = sp.hessian(f, params)
    return grad, hess, params


def hessian_blocks(m: int = 2, d: int = 2):
    """The three blocks of the Hessian for a generic activation: (H_WW, H_Wv, H_vv).

    H_vv = 0 (f is linear in v); H_Wv[(j,i), k] = delta_ik sigma'(z_i) x_j / sqrt(d m);
    H_WW is block diagonal over hidden units with blocks v_i sigma''(z_i) x x^T / (d sqrt(m)).
    """
    _, hess, _ = gradient_and_hessian(m, d)
    nW = m * d
    return hess[:nW, :nW], hess[:nW, nW:], hess[nW:, nW:]


def hessian_norm_relu():
    """Exact spectral norm of the Hessian of the two-layer ReLU net at a point with >= 1 active unit.

    sigma'' = 0 away from the kink, so H = [[0, B], [B^T, 0]] with B B^T diagonal; its eigenvalues
    are ± the singular values of B, sigma'(z_i) ||x|| / sqrt(d m). Returns (expr, (x_norm, d, m)).
    """
    x_norm, d, m = sp.symbols("\\|x\\| d m", positive=True)
    return x_norm / sp.sqrt(d * m), (x_norm, d, m)


def hessian_norm_bound():
    """Upper bound for a smooth activation: ||H|| <= ||B|| + ||H_WW||.

    ||B|| = max_i |sigma'(z_i)| ||x|| / sqrt(d m) and ||H_WW|| = max_i |v_i sigma''(z_i)| ||x||^2 / (d sqrt(m)):
    both O(1/sqrt(m)) up to the slowly growing maxima over m units. Returns (expr, symbols).
    """
    x_norm, d, m, s1, s2 = sp.symbols("\\|x\\| d m \\max|\\sigma'| \\max|v\\sigma''|", positive=True)
    return s1 * x_norm / sp.sqrt(d * m) + s2 * x_norm**2 / (d * sp.sqrt(m)), (x_norm, d, m, s1, s2)


def expected_gradient_norm_relu():
    """E ||grad_theta f(x)||^2 for the two-layer ReLU net at initialization (W, v ~ N(0,1)).

    = E[relu(z)^2] + (||x||^2/d) E[v^2] E[relu'(z)^2] with z ~ N(0, ||x||^2/d), computed by
    Gaussian integration: equal to ||x||^2/d, the NTK diagonal Theta(x, x). Order one in m.
    """
    x_norm, d = sp.symbols("\\|x\\| d", positive=True)
    z = sp.Symbol("z", real=True)
    s2 = x_norm**2 / d
    density = sp.exp(-z**2 / (2 * s2)) / sp.sqrt(2 * sp.pi * s2)
    e_relu_sq = sp.integrate(z**2 * density, (z, 0, sp.oo))
    e_step_sq = sp.integrate(density, (z, 0, sp.oo))
    return sp.simplify(e_relu_sq + s2 * e_step_sq), (x_norm, d)


def linear_model_gradient_flow():
    """Gradient flow on the linear model along one NTK eigen-direction.

    With loss L = 1/(2N) ||f - y||^2 and the linear model, df/dt = -(eta/N) Theta (f - y); in the
    eigenbasis of Theta (eigenvalue lam) each residual component r = u^T (f - y) solves
    r' = -(eta lam / N) r. Returns (solution r(t), (t, eta, lam, N, r0)), i.e.
    f_t = f_0 + (I - exp(-eta Theta t / N)) (y - f_0).
    """
    t, eta, lam, N = sp.symbols("t eta lambda N", positive=True)
    r0 = sp.Symbol("r_0", real=True)
    r = sp.Function("r")
    sol = sp.dsolve(sp.Eq(r(t).diff(t), -(eta * lam / N) * r(t)), r(t), ics={r(0): r0})
    return sol.rhs, (t, eta, lam, N, r0)


def linear_model_gd_step():
    """One step of gradient descent on the linear model, one eigen-direction: r_{k+1} = (1 - eta lam / N) r_k.

    Returns (r_k, (k, eta, lam, N, r0)); it converges iff |1 - eta lam / N| < 1, i.e. eta < 2N / lam.
    """
    k = sp.Symbol("k", integer=True, nonnegative=True)
    eta, lam, N = sp.symbols("eta lambda N", positive=True)
    r0 = sp.Symbol("r_0", real=True)
    return r0 * (1 - eta * lam / N) ** k, (k, eta, lam, N, r0)


def hessian_unit_block():
    """The Hessian of one unit's term restricted to span{(x/||x||, 0), (0, e_i)}, and its eigenvalues.

    The two-layer Hessian is block diagonal over hidden units (``hessian_blocks``): unit i's block,
    in its parameters (w_i, v_i), is [[a x x^T, b x], [b x^T, 0]] with a = v_i sigma''(z_i) / (d sqrt(m))
    and b = sigma'(z_i) / sqrt(d m). It vanishes on the complement of x in w_i-space, and on the
    two-dimensional span above it is the 2x2 matrix [[a ||x||^2, b ||x||], [b ||x||, 0]].
    Returns (block, eigenvalues, (a, b, x_norm)).
    """
    a, b = sp.symbols("a b", real=True)
    x_norm = sp.Symbol("\\|x\\|", positive=True)
    block = sp.Matrix([[a * x_norm**2, b * x_norm], [b * x_norm, 0]])
    return block, list(block.eigenvals().keys()), (a, b, x_norm)


def hessian_norm_exact():
    """Exact spectral norm of the two-layer Hessian for any twice-differentiable activation.

    ||H||_2 = max_i g(v_i, z_i) / sqrt(m) when ||x||^2 = d, with
    g(v, z) = (|v sigma''(z)| + sqrt(v^2 sigma''(z)^2 + 4 sigma'(z)^2)) / 2,
    the largest |eigenvalue| of unit i's 2x2 block (``hessian_unit_block``) after substituting
    a ||x||^2 = v sigma''(z) / sqrt(m), b ||x|| = sigma'(z) / sqrt(m). For ReLU (sigma'' = 0,
    sigma' = 1 on active units) it is 1 / sqrt(m), i.e. ||x|| / sqrt(d m).
    Returns (g, (v, s1, s2)) with s1 = sigma'(z), s2 = sigma''(z).
    """
    block, eigs, (a, b, x_norm) = hessian_unit_block()
    v, s1, s2 = sp.symbols("v \\sigma' \\sigma''", real=True)
    # |largest eigenvalue in magnitude| of [[p, q], [q, 0]] is (|p| + sqrt(p^2 + 4 q^2)) / 2
    p, q = sp.symbols("p q", real=True)
    g = (sp.Abs(p) + sp.sqrt(p**2 + 4 * q**2)) / 2
    return g.subs({p: v * s2, q: s1}), (v, s1, s2)
