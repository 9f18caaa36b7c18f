"""Weight decay on positively homogeneous subnetworks: rescaling, balance and l^{2/L} sparsity.

Chapter 06. A depth-L ReLU subnetwork without hidden biases,
f(x) = W_L relu(W_{L-1} ... relu(W_1 x)), is unchanged when layer l is multiplied by
alpha_l > 0 with prod_l alpha_l = 1, because relu(c z) = c relu(z) for c > 0. Weight decay
lambda * sum_l ||W_l||^2 is *not* invariant under these rescalings; minimizing it over
them gives the AM-GM bound

    sum_l ||W_l||^2 >= L (prod_l ||W_l||)^{2/L},   equality iff all ||W_l|| are equal,

so on a parallel network f = sum_j f_j with f_j = c_j * phi_j (phi_j with unit-norm layers,
c_j = prod_l ||W_{j,l}||), weight decay acts as lambda * L * sum_j c_j^{2/L}: an l^p
quasi-norm with p = 2/L on the coefficients (Zhang & Wang, ICLR 2023).

Every function returns SymPy objects; the tests check each one numerically.
"""

from __future__ import annotations

import sympy as sp


def relu(z):
    """ReLU as a SymPy expression, max(0, z)."""
    return sp.Max(0, z)


def relu_homogeneity_residuals():
    """relu(c z) - c relu(z) for c > 0, on the two branches z > 0 and z < 0: both are 0.

    Returns (residual for z > 0, residual for z < 0) as simplified expressions in c and z.
    """
    c = sp.Symbol("c", positive=True)
    zp = sp.Symbol("z", positive=True)
    zn = sp.Symbol("z", negative=True)
    return tuple(sp.simplify(relu(c * z) - c * relu(z)) for z in (zp, zn))


def two_layer_rescaling():
    """min over alpha > 0 of alpha^2 a^2 + b^2 / alpha^2 (a, b > 0: the two layer norms).

    Returns dict(objective, alpha_star, minimum, symbols=(a, b, alpha)):
    alpha_star = sqrt(b / a), minimum = 2 a b, reached where alpha a = b / alpha (balanced).
    """
    a, b, alpha = sp.symbols("a b alpha", positive=True)
    objective = alpha**2 * a**2 + b**2 / alpha**2
    (alpha_star,) = sp.solve(sp.diff(objective, alpha), alpha)
    minimum = sp.simplify(objective.subs(alpha, alpha_star))
    return dict(objective=objective, alpha_star=alpha_star, minimum=minimum, symbols=(a, b, alpha))


def layer_norm_symbols(depth: int):
    """Positive symbols n_1..n_L for the layer norms of a depth-L subnetwork."""
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth={depth!r} must be a positive integer")
    return sp.symbols(f"n1:{int(depth) + 1}", positive=True)


def amgm_bound(depth: int):
    """The AM-GM lower bound L (prod_l n_l)^{2/L} of sum_l n_l^2 (n_l = ||W_l||), and the norms.

    Returns (bound, norms): bound is a SymPy expression in the positive symbols ``norms``.
    """
    norms = layer_norm_symbols(depth)
    return depth * sp.Mul(*norms) ** sp.Rational(2, depth), norms


def depth_rescaling_minimum(depth: int):
    """Minimize sum_l (alpha_l n_l)^2 over rescalings alpha_l > 0 with prod_l alpha_l = 1, exactly.

    Solved by SymPy for a concrete depth (2..4 take about a second each; 5 takes ~10 s): squares t_l = alpha_l^2 for
    l < L are the unknowns and t_L = 1 / prod_{l<L} t_l. Returns dict(minimum, balanced_norm,
    rescaled_norms, norms): the minimum of the penalty, prod(n)^{1/L}, and the layer norms
    alpha_l n_l at the optimum (all equal to balanced_norm).
    """
    norms = layer_norm_symbols(depth)
    if depth == 1:
        return dict(minimum=norms[0] ** 2, balanced_norm=norms[0], rescaled_norms=[norms[0]], norms=norms)
    t = sp.symbols(f"t1:{depth}", positive=True)
    t_last = 1 / sp.Mul(*t)
    objective = sum(ti * ni**2 for ti, ni in zip(t, norms[:-1])) + t_last * norms[-1] ** 2
    (sol,) = sp.solve([sp.diff(objective, ti) for ti in t], t, dict=True)
    squares = [sol[ti] for ti in t] + [t_last.subs(sol)]
    rescaled = [sp.simplify(sp.sqrt(s) * n) for s, n in zip(squares, norms)]
    return dict(
        minimum=sp.simplify(objective.subs(sol)),
        balanced_norm=sp.Mul(*norms) ** sp.Rational(1, depth),
        rescaled_norms=rescaled,
        norms=norms,
    )


def imbalance_flow():
    """Gradient flow on loss(W) + lambda * sum_l ||W_l||^2 with a rescaling-invariant loss.

    Invariance of the loss under (W_l, W_{l+1}) -> (alpha W_l, W_{l+1} / alpha) gives
    <grad_l loss, W_l> = <grad_{l+1} loss, W_{l+1}>, hence for D = ||W_l||^2 - ||W_{l+1}||^2
    dD/dt = -4 lambda D. Returns dict(ode, solution, symbols=(t, lam, D0)) with
    solution D(t) = D0 exp(-4 lambda t). Without weight decay (lambda = 0) D is conserved.
    """
    t = sp.Symbol("t", nonnegative=True)
    lam = sp.Symbol("lambda", positive=True)
    d0 = sp.Symbol("D_0", real=True)
    D = sp.Function("D")
    ode = sp.Eq(D(t).diff(t), -4 * lam * D(t))
    solution = sp.dsolve(ode, D(t), ics={D(0): d0}).rhs
    return dict(ode=ode, solution=solution, symbols=(t, lam, d0))


def imbalance_identity():
    """The exact link between imbalance and the penalized gradient, for any rescaling-invariant loss.

    For a toy block f = v relu(w x) (one weight per layer, x > 0 so relu(w x) = w x for w > 0) with
    loss(w, v) = (v w x - y)^2 / 2 + lambda (w^2 + v^2) and G = grad(loss):

        w G_w - v G_v = 2 lambda (w^2 - v^2),

    because the data term depends on (w, v) only through the product w v. For matrices the same
    computation gives <G_l, W_l> - <G_{l+1}, W_{l+1}> = 2 lambda (||W_l||^2 - ||W_{l+1}||^2): at an
    approximate stationary point the imbalance is bounded by |G| |W| / lambda. Returns
    dict(lhs, rhs, residual) with residual = lhs - rhs simplified (0).
    """
    w, v, x = sp.symbols("w v x", positive=True)
    y = sp.Symbol("y", real=True)
    lam = sp.Symbol("lambda", positive=True)
    loss = (v * w * x - y) ** 2 / 2 + lam * (w**2 + v**2)
    lhs = sp.expand(w * sp.diff(loss, w) - v * sp.diff(loss, v))
    rhs = 2 * lam * (w**2 - v**2)
    return dict(lhs=lhs, rhs=rhs, residual=sp.simplify(lhs - rhs), symbols=(w, v, x, y, lam))


def parallel_penalty(depth: int, num_subnets: int):
    """Weight decay of a parallel network after minimizing over each subnetwork's rescalings.

    lambda * sum_j sum_l ||W_{j,l}||^2 >= lambda * L * sum_j c_j^{2/L} with c_j = prod_l ||W_{j,l}||,
    an l^p quasi-norm penalty with p = 2/L on the coefficient vector c. Returns
    dict(penalty, p, coefficients=(c_1..c_M), lam).
    """
    if int(num_subnets) != num_subnets or num_subnets < 1:
        raise ValueError(f"num_subnets={num_subnets!r} must be a positive integer")
    layer_norm_symbols(depth)  # validates depth
    lam = sp.Symbol("lambda", positive=True)
    coeffs = sp.symbols(f"c1:{int(num_subnets) + 1}", positive=True)
    p = sp.Rational(2, depth)
    return dict(penalty=lam * depth * sum(c**p for c in coeffs), p=p, coefficients=coeffs, lam=lam)


def split_cost():
    """Cost of spreading one coefficient c over k identical subnetworks under an l^p penalty.

    k * (c / k)^p = k^{1-p} c^p: increasing in k for p < 1 (depth L > 2: concentrate on few
    subnetworks), constant for p = 1 (L = 2), decreasing for p > 1. Returns
    dict(cost, dcost_dk, symbols=(k, c, p)).
    """
    k, c, p = sp.symbols("k c p", positive=True)
    cost = sp.simplify(k * (c / k) ** p)
    return dict(cost=cost, dcost_dk=sp.simplify(sp.diff(cost, k)), symbols=(k, c, p))


def lp_threshold():
    """Scalar l^p proximal problem min_{c >= 0} (c - z)^2 / 2 + mu c^p, 0 < p < 1: a jump threshold.

    The minimizer is 0 for z < z_thr and jumps to c_thr > 0 at z = z_thr, with
    c_thr = (2 mu (1 - p))^{1/(2-p)} and z_thr = c_thr (2 - p) / (2 (1 - p)). No coefficient
    in (0, c_thr) is ever optimal, and both thresholds grow with mu: a larger weight decay
    switches more subnetworks off. Returns dict(objective, c_thr, z_thr, symbols=(c, z, mu, p)).
    """
    c, z, mu, p = sp.symbols("c z mu p", positive=True)
    objective = (c - z) ** 2 / 2 + mu * c**p
    # At the threshold the nonzero stationary point has the same value as c = 0.
    z_on_tie = sp.solve(sp.Eq(objective, z**2 / 2), z)[0]
    stationary = sp.simplify(sp.diff(objective, c).subs(z, z_on_tie))
    (c_thr,) = sp.solve(stationary, c)
    c_thr = sp.simplify(c_thr)
    # z_thr = z_on_tie at c_thr; eliminating mu through c_thr^{2-p} = 2 mu (1 - p) makes it linear in c_thr.
    z_thr = sp.factor(sp.simplify(z_on_tie.subs(mu, c ** (2 - p) / (2 * (1 - p))))).subs(c, c_thr)
    return dict(objective=objective, c_thr=c_thr, z_thr=z_thr, symbols=(c, z, mu, p))
