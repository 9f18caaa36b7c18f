"""SymPy derivations for the curvature chapter: Hessian rank, Fisher sharpness, natural gradient.

Each function returns SymPy objects; ``tests/test_derivations_curvature.py`` checks every
result the chapter relies on against the numerical code of ``overparam.experiments.hessian_rank``,
``overparam.experiments.fisher`` and ``overparam.experiments.natural_gradient``.

Conventions: loss 1/(2N) sum (f - y)^2 (``overparam.training.mse_loss``); deep linear networks
in the library's row convention f(x) = x W_1 ... W_L; Fisher F = J^T J / N.
"""

from __future__ import annotations

import itertools
import random

import sympy as sp

# ------------------------------------------------------------------ Hessian = outer + functional


def gauss_newton_split():
    """(H, H_o, H_f, residual) for the scalar model f = w2 * sigma(w1 * x) and loss (f - y)^2 / 2.

    H_o = grad f grad f^T and H_f = (f - y) * hess f; H - H_o - H_f simplifies to zero.
    """
    w1, w2, x, y = sp.symbols("w_1 w_2 x y", real=True)
    sigma = sp.Function("sigma")
    f = w2 * sigma(w1 * x)
    params = [w1, w2]
    loss = (f - y) ** 2 / 2
    hess = sp.hessian(loss, params)
    grad = sp.Matrix([sp.diff(f, p) for p in params])
    outer = grad * grad.T
    functional = (f - y) * sp.hessian(f, params)
    residual = sp.simplify(hess - outer - functional)
    return hess, outer, functional, residual


def two_layer_functional_block(d: int = 2, m: int = 2, k: int = 2):
    """(C, Omega, rank C) for f = x W1 W2: the off-diagonal block of H_f with symbolic Omega (d, K).

    g(W1, W2) = tr(Omega^T W1 W2), Omega = x^T e / N; H_f = [[0, C], [C^T, 0]] with
    C[(a, b), (b', c)] = d^2 g / dW1[a, b] dW2[b', c] = Omega[a, c] * [b == b'], i.e.
    C = Omega (x) I_M up to the ordering: rank C = M rank Omega and rank H_f = 2 M rank Omega.
    """
    omega = sp.Matrix(d, k, lambda i, j: sp.Symbol(f"Omega_{i + 1}{j + 1}"))
    w1 = sp.Matrix(d, m, lambda i, j: sp.Symbol(f"u_{i + 1}{j + 1}"))
    w2 = sp.Matrix(m, k, lambda i, j: sp.Symbol(f"v_{i + 1}{j + 1}"))
    g = (omega.T * w1 * w2).trace()
    c = sp.Matrix(d * m, m * k, lambda i, j: sp.diff(g, list(w1)[i], list(w2)[j]))
    return c, omega, c.rank()


def _int_matrix(rng, rows, cols, lo=-20, hi=20):
    return sp.Matrix(rows, cols, lambda i, j: rng.randint(lo, hi))


def exact_hessian_ranks(widths, num_examples: int, r: int, seed: int = 0):
    """Exact (rational) ranks of H_o, H_f, H for a deep linear net at random integer weights and data.

    widths (d, M_1, ..., K); x = z u with integer z (N, r), u (r, d); y integer. The Hessians are
    obtained by SymPy differentiation of the polynomial outputs, the ranks by exact Gaussian
    elimination: no floating point anywhere. Integers from [-20, 20] make a non-generic draw
    (lower ranks) unlikely but possible: a seed whose x has rank < r raises ValueError. Returns dict(outer, functional, full, num_params).
    Small networks only (P up to a few dozen).
    """
    rng = random.Random(seed)
    d, k = widths[0], widths[-1]
    mats = [sp.Matrix(a, b, lambda i, j, l=l: sp.Symbol(f"w{l}_{i}_{j}"))
            for l, (a, b) in enumerate(zip(widths[:-1], widths[1:]))]
    params = list(itertools.chain.from_iterable(list(m) for m in mats))
    x = _int_matrix(rng, num_examples, r) * _int_matrix(rng, r, d)
    y = _int_matrix(rng, num_examples, k)
    if x.rank() != r:
        raise ValueError(f"seed={seed} drew inputs of rank {x.rank()} != r={r}; use another seed")
    point = {p: rng.randint(-20, 20) for p in params}
    f = x
    for m in mats:
        f = f * m
    outputs = list(f)
    jac = sp.Matrix(outputs).jacobian(params).subs(point)
    e = (f.subs(point) - y)
    g = sum(e[i] * outputs[i] for i in range(len(outputs)))
    functional = sp.hessian(g, params).subs(point)
    outer = jac.T * jac
    # Ranks are scale-free: drop the common 1/N.
    return dict(outer=outer.rank(), functional=functional.rank(), full=(outer + functional).rank(),
                num_params=len(params))


def rank_formulas():
    """Singh-Bachmann-Hofmann ranks as SymPy expressions, and their symbols.

    Symbols: r (rank of the inputs), K (outputs), q = min(r, M_1..M_{L-1}, K), s = min(r, K),
    S = M_1 + ... + M_{L-1}, L (number of weight matrices). Returns (dict(outer, functional, full),
    symbols dict). The functional formula assumes min_i M_i >= s (then q = s).
    """
    r, k, q, s, total, depth = sp.symbols("r K q s S L", positive=True, integer=True)
    exprs = dict(
        outer=q * (r + k - q),
        functional=2 * s * total - (depth - 2) * s**2,
        full=2 * q * total + q * (r + k) - depth * q**2,
    )
    return exprs, dict(r=r, K=k, q=q, s=s, S=total, L=depth)


def rank_ratio_equal_widths():
    """(ratio, leading term) of rank(H)/P for L weight layers of equal width M >= q, d inputs, K outputs.

    P = d M + (L - 2) M^2 + M K. For L >= 3 the ratio -> 0 like 2 q (L - 1) / ((L - 2) M):
    the rank grows linearly in the width, the parameter count quadratically.
    """
    exprs, sym = rank_formulas()
    m, d = sp.symbols("M d", positive=True)
    depth, q, r, k = sym["L"], sym["q"], sym["r"], sym["K"]
    full = exprs["full"].subs(sym["S"], (depth - 1) * m)
    params = d * m + (depth - 2) * m**2 + m * k
    ratio = full / params
    leading = sp.limit(ratio * m, m, sp.oo)
    return sp.simplify(ratio), sp.simplify(leading), dict(M=m, d=d, L=depth, q=q, r=r, K=k)


# ------------------------------------------------------------------------------------ Fisher


def mean_field_gram(num_examples: int):
    """G = (M / N) [(kappa1 - kappa2) I + kappa2 1 1^T] (N, N) and its centred version C G C.

    The dual Fisher Gram of a wide network in standard parameterization on N inputs whose
    pairwise kernel is the same for every pair (high-dimensional random inputs): diagonal
    M kappa1, off-diagonal M kappa2 (Karakida et al., 2019). Returns (G, C G C, symbols).
    """
    m, n, k1, k2 = sp.symbols("M N kappa_1 kappa_2", positive=True)
    size = int(num_examples)
    ones = sp.ones(size, size)
    gram = (m / size) * ((k1 - k2) * sp.eye(size) + k2 * ones)
    center = sp.eye(size) - ones / size
    return gram, center * gram * center, dict(M=m, N=n, kappa1=k1, kappa2=k2)


def fisher_eigen_formulas():
    """lambda_max, the other eigenvalue, the mean eigenvalue, and lambda_max after centring, for general N.

    From G = (M/N)[(k1 - k2) I + k2 1 1^T]: 1 is an eigenvector with eigenvalue
    M (k1 + (N - 1) k2) / N; every vector orthogonal to 1 has M (k1 - k2) / N. Centring (batch
    normalization of the last layer) removes the first. The mean eigenvalue of F (P, P) is
    tr(G) / P = M k1 / P with P = alpha M^2 parameters. Returns (dict, symbols).
    """
    m, n, k1, k2, alpha = sp.symbols("M N kappa_1 kappa_2 alpha", positive=True)
    out = dict(
        lam_max=m * (k1 + (n - 1) * k2) / n,
        lam_bulk=m * (k1 - k2) / n,
        lam_mean=m * k1 / (alpha * m**2),
        lam_max_centered=m * (k1 - k2) / n,
    )
    return out, dict(M=m, N=n, kappa1=k1, kappa2=k2, alpha=alpha)


def loglog_slope(expr, variable):
    """d log(expr) / d log(variable), simplified."""
    return sp.simplify(sp.diff(sp.log(expr), variable) * variable)


# ---------------------------------------------------------------------------- natural gradient


def mode_factors():
    """Per-step factor of an NTK mode with eigenvalue lam under GD and damped exact NGD.

    Linearized network, loss 1/(2N) |e|^2: GD multiplies the mode by 1 - eta lam / N; NGD with
    Fisher damping rho by 1 - eta lam / (lam + rho N), which tends to 1 - eta for every lam > 0.
    Returns (gd, ngd, ngd limit rho -> 0, symbols).
    """
    eta, lam, n, rho = sp.symbols("eta lambda N rho", positive=True)
    gd = 1 - eta * lam / n
    ngd = 1 - eta * lam / (lam + rho * n)
    return gd, ngd, sp.limit(ngd, rho, 0), dict(eta=eta, lam=lam, N=n, rho=rho)


def block_diagonal_operator(num_blocks: int = 2, size: int = 2):
    """sum_b Theta_b Theta_b^{-1} for generic symbolic invertible (size x size) Grams: equals B * I.

    The function-space operator of undamped block-diagonal NGD (one block per layer) is the
    sum of the projections J_b^T (J_b J_b^T)^{-1} J_b pushed to function space, i.e.
    Theta_b Theta_b^{-1} = I for each block whose Gram Theta_b is invertible. Returns the sum.
    """
    total = sp.zeros(size, size)
    for b in range(num_blocks):
        theta = sp.Matrix(size, size, lambda i, j, b=b: sp.Symbol(f"t{b}_{min(i, j)}{max(i, j)}"))
        total += theta * theta.inv()
    return sp.simplify(total)


def kfac_first_layer_operator(num_examples: int = 3, input_dim: int = 2):
    """N (P_X o I): K-FAC's first-layer term when the deltas span R^N but the inputs do not (d < N).

    With P_X = X (X^T X)^{-1} X^T the projection on the d-dimensional span of the inputs and a
    full-rank delta Gram (P_delta = I), the entrywise product keeps the diagonal: the term is
    N diag(h) with leverage scores h_n = P_X[n, n], which sum to d. Not a multiple of I unless
    all h_n are equal: K-FAC is isotropic iff every layer's input Gram is invertible (d >= N).
    Returns (operator, leverage trace) for a symbolic X (N, d).
    """
    x = sp.Matrix(num_examples, input_dim, lambda i, j: sp.Symbol(f"x_{i + 1}{j + 1}"))
    proj = x * (x.T * x).inv() * x.T
    operator = num_examples * sp.diag(*[proj[i, i] for i in range(num_examples)])
    return operator, sp.simplify(proj.trace())
