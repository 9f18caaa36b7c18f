"""SymPy derivations for chapter 04: the AGOP of low-rank targets, and the minibatch catapult threshold.

Part 1, AGOP. For a predictor f: R^d -> R the average gradient outer product is
G_f = E_x[grad f(x) grad f(x)^T] (d, d). For a target f*(x) = g(U^T x) with U (d, r)
orthonormal columns and x ~ N(0, I_d), z = U^T x ~ N(0, I_r) and grad f* = U grad g(z), so

    G_{f*} = U M U^T,   M = E_z[grad g(z) grad g(z)^T]  (r, r),

exactly of rank <= r. ``gaussian_expectation`` evaluates E_z of a polynomial by the moments of
independent standard normals (E z^k = (k-1)!! for even k, 0 for odd k). The targets are those
of ``overparam.data.low_rank_polynomial`` (U = the first r coordinate axes).

Part 2, why small batches catapult. The loss of a minibatch B of b points is the half mean
squared error 1/(2b) sum_{i in B} (f_i - y_i)^2; for the linearized model a step multiplies
the batch residual along an eigenvector of the batch NTK Gram matrix K_B (eigenvalue mu) by
1 - eta mu / b (``overparam.derivations.catapult.linear_model_threshold`` with N = b), so the
batch step is unstable iff eta > 2 b / mu_max(K_B). For a kernel with mean off-diagonal entry
c and diagonal c + delta, K_B ~ c 1 1^T + delta I and mu_max / b = c + delta / b: the
threshold 2 / (c + delta / b) grows with b. The kernel change in a catapult is the uv-model
result of chapter 3 (``kernel_change_uv``).

Part 3, mean-square stability. The per-batch threshold concerns one batch's loss; training is
unstable when E[r r^T] of the training-set residual grows under linearized SGD (Wu, Ma & E 2018).
``batch_inclusion_probabilities`` gives the batch moments, ``mean_square_map_isotropic`` the
second-moment map on span{1 1^T, I} for K = c 1 1^T + delta I, and
``mean_square_critical_lr_isotropic`` its threshold eta_ms(b) in closed form (the numerical
threshold for any kernel is ``overparam.experiments.sgd_spikes.ms_critical_lr``).
"""

from __future__ import annotations

import sympy as sp

from overparam.derivations import catapult


# ----------------------------------------------------------------------------- part 1: AGOP
def gaussian_moment(k: int) -> sp.Integer:
    """E[z^k] for z ~ N(0, 1): (k-1)!! for even k >= 0, 0 for odd k."""
    k = int(k)
    if k < 0:
        raise ValueError(f"k={k} must be a non-negative integer")
    return sp.Integer(0) if k % 2 else sp.factorial2(k - 1) if k else sp.Integer(1)


def gaussian_expectation(expr, zs) -> sp.Expr:
    """E[expr] for a polynomial ``expr`` in the symbols ``zs``, i.i.d. N(0, 1).

    Expands into monomials and replaces each z_j^k by ``gaussian_moment(k)`` (independence makes
    the moments of a monomial factor). Other symbols in ``expr`` are treated as constants.
    """
    zs = list(zs)
    poly = sp.Poly(sp.expand(expr), *zs)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        term = coeff
        for k in powers:
            term *= gaussian_moment(k)
        total += term
    return sp.simplify(total)


def agop_gaussian(g, zs) -> sp.Matrix:
    """M = E_z[grad g(z) grad g(z)^T] (r, r) for a polynomial g of z ~ N(0, I_r)."""
    zs = list(zs)
    grad = sp.Matrix([sp.diff(g, z) for z in zs])
    outer = grad * grad.T
    return outer.applyfunc(lambda e: gaussian_expectation(e, zs))


def target_polynomial(kind: str):
    """(g, zs) of the target ``overparam.data.low_rank_polynomial(x, kind)`` = g(x_1, ..., x_r).

    kind: "linear" z1; "hermite2" (z1^2 - 1)/sqrt 2; "hermite3" (z1^3 - 3 z1)/sqrt 6; "x1x2" z1 z2;
    "x1x2x3" z1 z2 z3. Each has E g = 0 and E g^2 = 1 under z ~ N(0, I_r).
    """
    z1, z2, z3 = sp.symbols("z1 z2 z3", real=True)
    table = {
        "linear": (z1, (z1,)),
        "hermite2": ((z1**2 - 1) / sp.sqrt(2), (z1,)),
        "hermite3": ((z1**3 - 3 * z1) / sp.sqrt(6), (z1,)),
        "x1x2": (z1 * z2, (z1, z2)),
        "x1x2x3": (z1 * z2 * z3, (z1, z2, z3)),
    }
    if kind not in table:
        raise ValueError(f"kind={kind!r} is not a known target; allowed: {', '.join(table)}")
    return table[kind]


TARGET_NAMES = ("linear", "hermite2", "hermite3", "x1x2", "x1x2x3")


def target_agop(kind: str, d: int) -> sp.Matrix:
    """Closed-form AGOP G_{f*} (d, d) of the target ``kind`` on x ~ N(0, I_d): diag(M, 0), rank r."""
    g, zs = target_polynomial(kind)
    r = len(zs)
    if int(d) < r:
        raise ValueError(f"d={d} must be at least the rank r={r} of target {kind!r}")
    m = agop_gaussian(g, zs)
    out = sp.zeros(int(d), int(d))
    out[:r, :r] = m
    return out


def isotropic_alignment(kind: str, d=None) -> sp.Expr:
    """Alignment <I, G*>_F / (|I|_F |G*|_F) = tr G* / (sqrt(d) |G*|_F): what an isotropic AGOP scores.

    A network at a rotation-invariant initialization has E G_model proportional to I, so this is
    the alignment to expect before any feature learning. ``d`` may be symbolic (default: d).
    """
    g, zs = target_polynomial(kind)
    m = agop_gaussian(g, zs)
    d = sp.Symbol("d", positive=True) if d is None else sp.sympify(d)
    fro = sp.sqrt(sum(e**2 for e in m))
    return sp.simplify(m.trace() / (sp.sqrt(d) * fro))




# --------------------------------------------------------- part 2: minibatch catapult threshold
def batch_kernel_top(b=None):
    """(mu_max / b, eta_crit(b)) for a batch kernel K = c 1 1^T + delta I of b points.

    K 1 = (c b + delta) 1, so the top eigenvalue per point is c + delta / b and the critical
    learning rate of the batch loss 1/(2b)|f - y|^2 is 2 / (c + delta / b): it grows with b, so
    at one learning rate the small batches are the ones beyond their threshold. ``b`` may be a
    number or symbolic (default: the symbol b).
    """
    c, delta = sp.symbols("c delta", positive=True)
    b = sp.Symbol("b", positive=True) if b is None else sp.sympify(b)
    mu_max = c * b + delta  # K 1 = (c b + delta) 1, the top eigenvalue for c > 0
    _, eta_max = catapult.linear_model_threshold()  # 2 N / mu for the loss 1/(2N)|f - y|^2
    sym = {s.name: s for s in eta_max.free_symbols}
    eta_crit = eta_max.subs({sym["N"]: b, sym["mu"]: mu_max})
    return sp.simplify(mu_max / b), sp.simplify(eta_crit)


def batch_kernel_eigs(b: int):
    """Eigenvalues {eigenvalue: multiplicity} of c 1 1^T + delta I (b, b), computed by SymPy."""
    c, delta = sp.symbols("c delta", positive=True)
    k = c * sp.ones(int(b), int(b)) + delta * sp.eye(int(b))
    return k.eigenvals()


def kernel_change_uv():
    """lam' - lam of the uv model (chapter 3) with y = 0, kappa = 1, x = 1, factored.

    = eta r^2 (eta lam - 4) / m: negative in the catapult window 2 < eta lam < 4, proportional
    to the loss r^2 / 2 and to 1/m, so the kernel moves only once the loss has grown large: the
    spike. Derived from ``overparam.derivations.catapult.uv_one_step``.
    """
    _, lam_next = catapult.uv_one_step()
    subs = {catapult.y: 0, catapult.kappa: 1, catapult.x: 1}
    return sp.factor(sp.expand((lam_next - catapult.lam).subs(subs)))


# ------------------------------------------- part 3: mean-square stability of linearized SGD
def batch_inclusion_probabilities(n=None, b=None):
    """(p1, p2): P(i in B) and P(i, j in B) for i != j, B a uniform b-subset of N points.

    Counted as binomial ratios C(N-1, b-1)/C(N, b) and C(N-2, b-2)/C(N, b) and simplified:
    p1 = b/N, p2 = b(b-1)/(N(N-1)). E[D_B] = p1 I and E[D_B S D_B] = p2 S + (p1 - p2) diag(S)
    for the 0/1 diagonal selection matrix D_B.
    """
    n = sp.Symbol("N", positive=True, integer=True) if n is None else sp.sympify(n)
    b = sp.Symbol("b", positive=True, integer=True) if b is None else sp.sympify(b)
    total = sp.binomial(n, b)
    p1 = sp.simplify(sp.combsimp(sp.binomial(n - 1, b - 1) / total))
    p2 = sp.simplify(sp.combsimp(sp.binomial(n - 2, b - 2) / total))
    return p1, p2


def mean_square_map_isotropic():
    """The second-moment map of linearized SGD restricted to S = alpha 1 1^T + beta I, for K = c 1 1^T + delta I.

    Linearized SGD on the batch loss 1/(2b)|r_B|^2 moves the training residual r (N,) by
    r' = (I - (eta/b) K D_B) r (D_B selects the batch). Its second moment S = E[r r^T] evolves by

        T(S) = S - (eta/N)(K S + S K) + (eta/b)^2 K (p2 S + (p1 - p2) diag S) K

    (``batch_inclusion_probabilities``). For K = c 1 1^T + delta I the map keeps the algebra
    spanned by E = 1 1^T (E^2 = N E) and I, where the Perron (PSD) eigenvector lies by symmetry.
    Returns (T2, L2, Q2): 2x2 matrices acting on (alpha, beta), with T2 = I - eta L2 + eta^2 Q2.
    """
    n, b = sp.symbols("N b", positive=True)
    c, delta, eta = sp.symbols("c delta eta", positive=True)
    p1, p2 = batch_inclusion_probabilities(n, b)
    alpha, beta = sp.symbols("alpha beta")

    def mul(u, v):  # (u_E E + u_I I)(v_E E + v_I I), E^2 = N E
        return (u[0] * v[0] * n + u[0] * v[1] + u[1] * v[0], u[1] * v[1])

    k, s = (c, delta), (alpha, beta)
    ks, sk = mul(k, s), mul(s, k)
    lin = tuple((ks[i] + sk[i]) / n for i in range(2))          # L(S) = (K S + S K)/N
    m = (p2 * alpha, p2 * beta + (p1 - p2) * (alpha + beta))     # diag(S) = (alpha + beta) I
    quad = tuple(e / b**2 for e in mul(mul(k, m), k))            # Q(S) = K M K / b^2

    def as_matrix(pair):
        return sp.Matrix([[sp.expand(e).coeff(alpha), sp.expand(e).coeff(beta)] for e in pair])

    l2, q2 = as_matrix(lin), as_matrix(quad)
    return sp.simplify(sp.eye(2) - eta * l2 + eta**2 * q2), l2.applyfunc(sp.simplify), q2.applyfunc(sp.simplify)


def mean_square_critical_lr_isotropic():
    """eta_ms(b) (a SymPy expression in N, b, c, delta): the learning rate above which E|r|^2 of linearized SGD grows, for K = c 1 1^T + delta I.

    The smallest eta > 0 where T2 has eigenvalue 1: det(eta Q2 - L2) = 0, i.e. eta = 1 / rho(L2^{-1} Q2)
    (``mean_square_map_isotropic``). Compare the per-batch threshold 2/(c + delta/b) of
    ``batch_kernel_top`` and the full-batch one 2N/(c N + delta): eta_ms lies between them.
    """
    _, l2, q2 = mean_square_map_isotropic()
    eta = sp.Symbol("eta", positive=True)
    roots = [sp.simplify(r) for r in sp.solve(sp.Eq((eta * q2 - l2).det(), 0), eta)]
    n, b, c, delta = sp.symbols("N b c delta", positive=True)
    sample = {n: 100, b: 10, c: 1, delta: 1}  # the smaller root is the threshold (same branch for all c, delta > 0)
    return min(roots, key=lambda r: float(r.subs(sample)))
