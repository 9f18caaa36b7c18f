"""SymPy derivations for the curvature chapter: Hessian rank, Fisher sharpness, natural gradient.

Each function returns SymPy objects; ``tests/derivations/test_hessian_fisher.py`` checks every
result the chapter relies on against the numerical code of ``overparam.experiments.hessian_rank``,
``overparam.experiments.fisher`` and ``overparam.experiments.natural_gradient``.

Conventions: loss 1/(2N) sum (f - y)^2 (``overparam.training.mse_loss``); deep linear networks
in the library's row convention f(x) = x W_1 ... W_L; Fisher F = J^T J / N.
"""

from __future__ import annotations

import itertools
import random

import sympy as sp
from sympy.polys.matrices import DomainMatrix

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
    symbols dict). The functional formula is the general one (bottlenecks included) of the authors'
    released code; ``functional_rank_by_rotation`` derives it from the no-bottleneck case.
    """
    r, k, q, s, total, depth = sp.symbols("r K q s S L", positive=True, integer=True)
    exprs = dict(
        outer=q * (r + k - q),
        functional=2 * q * total + 2 * q * s - depth * q**2,
        full=2 * q * total + q * (r + k) - depth * q**2,
    )
    return exprs, dict(r=r, K=k, q=q, s=s, S=total, L=depth)


def no_bottleneck_functional_rank():
    """rank H_f = 2 s S - (L - 2) s^2 of the paper's theorem (every hidden width >= s), and its symbols."""
    s, total, depth = sp.symbols("s S L", positive=True, integer=True)
    return 2 * s * total - (depth - 2) * s**2, dict(s=s, S=total, L=depth)


def functional_rank_by_rotation():
    """Derive rank H_f for any widths from the no-bottleneck theorem; returns (derived, general formula, symbols).

    Step 1 (basis change). H_f is the Hessian of g = tr(Omega^T W_1 ... W_L) with Omega = X^T E / N
    of rank s = min(r, K). Invertible U, V with Omega = U^{-T} diag(I_s, 0) V^{-1} give, after the
    linear reparameterization W_1 -> U^{-1} W_1, W_L -> W_L V^{-T}, g = tr(W_1[:s] W_2 ... W_L[:, :s]):
    the other rows of W_1 and columns of W_L give zero rows of H_f. So rank H_f is the rank of the
    Hessian of the trace of a cyclic product with node widths (s, M_1, ..., M_{L-1}) (L nodes, sum
    s + S). Step 2 (rotation). tr(A_1 ... A_L) = tr(A_k ... A_L A_1 ... A_{k-1}): starting the
    cycle at a narrowest node (width q = min(s, M_i)) gives a deep linear net of input and output
    width q with Omega = I_q (rank q) and hidden widths the other L - 1 nodes, all >= q: the
    theorem applies with s -> q and S -> s + S - q. ``exact_cycle_trace_rank`` checks both steps in
    exact arithmetic; the tests check the result against float64 ranks on bottleneck shapes.
    """
    base, sym = no_bottleneck_functional_rank()
    exprs, fsym = rank_formulas()
    q, s, total, depth = fsym["q"], fsym["s"], fsym["S"], fsym["L"]
    derived = base.subs({sym["s"]: q, sym["S"]: s + total - q, sym["L"]: depth}, simultaneous=True)
    return sp.expand(derived), exprs["functional"], fsym


def exact_cycle_trace_rank(node_widths, seed: int = 0) -> int:
    """Exact rank of the Hessian of tr(W_1 W_2 ... W_L), W_l (n_{l-1}, n_l), n_L = n_0, at integer weights.

    node_widths = (n_0, ..., n_{L-1}), the cycle's node widths; integers from [-20, 20], ranks by
    exact elimination. Rotating node_widths must not change the rank (the trace is cyclic).
    """
    rng = random.Random(seed)
    n = list(node_widths) + [node_widths[0]]
    mats = [sp.Matrix(a, b, lambda i, j, l=l: sp.Symbol(f"c{l}_{i}_{j}")) for l, (a, b) in enumerate(zip(n[:-1], n[1:]))]
    params = list(itertools.chain.from_iterable(list(m) for m in mats))
    prod = mats[0]
    for m in mats[1:]:
        prod = prod * m
    point = {p: rng.randint(-20, 20) for p in params}
    return sp.hessian(prod.trace(), params).subs(point).rank()


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


def _relu_moments(v, c):
    """(E[relu(u)^2], E[relu(u) relu(u')], E[step(u) step(u')]) for (u, u') centred Gaussian, variances v, covariance c."""
    rho = c / v
    theta = sp.acos(rho)
    return v / 2, v / (2 * sp.pi) * (sp.sqrt(1 - rho**2) + (sp.pi - theta) * rho), (sp.pi - theta) / (2 * sp.pi)


def relu_fisher_moments(depth: int = 3, input_ratio=1, sigma_w2=2, input_correlation=0):
    """Karakida's order parameters kappa_1, kappa_2 of a bias-free ReLU net, in closed form.

    Network (d, M, ..., M, 1) with ``depth`` weight layers, d = input_ratio * M, standard
    parameterization w_l ~ N(0, sigma_w2 / n_{l-1}), inputs with x.x/d = 1 and overlap
    x.x'/d = ``input_correlation`` (0: independent inputs x ~ N(0, I_d) as d -> oo; may be a SymPy
    symbol). Forward order parameters q^l_1 = E[a_l^2], q^l_2 = E[a_l(x) a_l(x')] per unit
    (q^0 = (1, input_correlation)); backward ones qh^l_1, qh^l_2 = delta_l . delta_l
    summed over units (qh^L = 1):

        q^l   = relu moments of the pre-activation with variance sigma_w2 q^{l-1}_1, covariance sigma_w2 q^{l-1}_2
        qh^l  = sigma_w2 qh^{l+1} E[step(u) step(u')]      (E[step^2] = 1/2),

    and the NTK Gram Theta(x, x') = sum_l (a_{l-1}.a_{l-1}')(delta_l.delta_l') = M kappa, with
    kappa_{1,2} = sum_l (n_{l-1} / M) q^{l-1}_{1,2} qh^l_{1,2} (diagonal, off-diagonal). In the NTK
    parameterization every layer's gradient carries sigma_w2 / n_{l-1}: Theta_ntk = kappa^ntk with
    kappa^ntk = sigma_w2 sum_l q^{l-1} qh^l (no factor M). Returns dict(kappa1, kappa2, kappa1_ntk,
    kappa2_ntk, per_layer=[(term1, term2) of kappa per layer]) of exact SymPy numbers.
    """
    depth = int(depth)
    if depth < 2:
        raise ValueError(f"depth={depth} must be >= 2")
    sigma_w2, ratio = sp.nsimplify(sigma_w2), sp.nsimplify(input_ratio)
    q = [(sp.Integer(1), sp.sympify(input_correlation))]
    steps = []
    for _ in range(depth - 1):
        q1, q2, step = _relu_moments(sigma_w2 * q[-1][0], sigma_w2 * q[-1][1])
        q.append((sp.simplify(q1), sp.simplify(q2)))
        steps.append((sp.Rational(1, 2), step))
    qh = [(sp.Integer(1), sp.Integer(1))]                 # layer L
    for step in reversed(steps):                          # layers L-1, ..., 1
        qh.insert(0, (sigma_w2 * qh[0][0] * step[0], sigma_w2 * qh[0][1] * step[1]))
    fan = [ratio] + [sp.Integer(1)] * (depth - 1)
    per_layer = [(fan[l] * q[l][0] * qh[l][0], fan[l] * q[l][1] * qh[l][1]) for l in range(depth)]
    k1, k2 = (sp.nsimplify(sum(t[i] for t in per_layer)) for i in (0, 1))
    ntk = [sigma_w2 * sum(q[l][i] * qh[l][i] for l in range(depth)) for i in (0, 1)]
    return dict(kappa1=sp.simplify(k1), kappa2=sp.simplify(k2), kappa1_ntk=sp.simplify(ntk[0]),
                kappa2_ntk=sp.simplify(ntk[1]), per_layer=per_layer)


def relu_kappa2_slope(depth: int = 3, input_ratio=1, sigma_w2=2):
    """d kappa_2 / d rho at rho = 0 (rho = x.x'/d, the input overlap) in both parameterizations, exact.

    Near rho = 0, Theta(x, x') = c (kappa_2 + kappa_2' rho + O(rho^2)) (c = M standard, 1 NTK). For
    inputs x ~ N(0, I_d) with gamma = N / d the matrix of overlaps x_n.x_m/d has the Marchenko-Pastur
    top eigenvalue (1 + sqrt(gamma))^2, so after centring (which removes kappa_2 1 1^T)

        lambda_max(C G C) ~ c [kappa_1 - kappa_2 + kappa_2' (2 sqrt(gamma) + gamma)] / N,

    above the bulk mean c (kappa_1 - kappa_2) / N by the spread of the bulk that the input overlaps
    cause (``centred_lambda_max``). Returns dict(kappa2_slope, kappa2_slope_ntk).
    """
    rho = sp.Symbol("rho", real=True)
    mom = relu_fisher_moments(depth, input_ratio, sigma_w2, input_correlation=rho)
    return {name: sp.nsimplify(sp.simplify(sp.diff(mom[key], rho).subs(rho, 0)))
            for name, key in (("kappa2_slope", "kappa2"), ("kappa2_slope_ntk", "kappa2_ntk"))}


def centred_lambda_max():
    """The centred lambda_max of G with the input-overlap spread, as a SymPy expression, and its symbols.

    c [kappa_1 - kappa_2 + kappa_2' (2 sqrt(gamma) + gamma)] / N with gamma = N / d (see
    ``relu_kappa2_slope``); it tends to the bulk mean c (kappa_1 - kappa_2) / N as N / d -> 0.
    """
    c, n, d, k1, k2, k2p = sp.symbols("c N d kappa_1 kappa_2 kappa_2'", positive=True)
    gamma = n / d
    return c * (k1 - k2 + k2p * (2 * sp.sqrt(gamma) + gamma)) / n, dict(c=c, N=n, d=d, kappa1=k1, kappa2=k2,
                                                                        kappa2_slope=k2p)


def fisher_value_predictions():
    """lambda_max, the bulk mean and the centred lambda_max of F in both parameterizations, as SymPy expressions.

    From G = (c / N) [(kappa1 - kappa2) I + kappa2 1 1^T] with c = M (standard) or c = 1 and
    kappa -> kappa^ntk (NTK parameterization): lambda_max = c (kappa1 + (N - 1) kappa2) / N, the other
    N - 1 eigenvalues c (kappa1 - kappa2) / N (the bulk; their mean is (tr G - lambda_max)/(N - 1)),
    and after centring the output (mean subtraction) lambda_max = c (kappa1 - kappa2) / N. The
    outlier/bulk ratio (kappa1 + (N - 1) kappa2) / (kappa1 - kappa2) does not depend on c: it is the
    same in both parameterizations. Returns (dict, symbols).
    """
    c, n, k1, k2 = sp.symbols("c N kappa_1 kappa_2", positive=True)
    out = dict(lam_max=c * (k1 + (n - 1) * k2) / n, bulk=c * (k1 - k2) / n, centered=c * (k1 - k2) / n)
    out["outlier_over_bulk"] = sp.simplify(out["lam_max"] / out["bulk"])
    return out, dict(c=c, N=n, kappa1=k1, kappa2=k2)


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


def push_through_commutator():
    """(J^T J + rho I) J^T - J^T (J J^T + rho I) for a matrix symbol J of any shape (n, p): expands to 0.

    Multiplying the vanishing commutator by (J^T J + rho I)^{-1} on the left and (J J^T + rho I)^{-1}
    on the right (both invertible for rho > 0) gives the push-through identity
    (J^T J + rho I)^{-1} J^T = J^T (J J^T + rho I)^{-1}, for every n and p: the P x P solve of a
    damped natural-gradient step is an n x n one. Returns (expanded commutator, symbols).
    """
    n, p = sp.symbols("n p", positive=True, integer=True)
    rho = sp.Symbol("rho", positive=True)
    jac = sp.MatrixSymbol("J", n, p)
    comm = (jac.T * jac + rho * sp.Identity(p)) * jac.T - jac.T * (jac * jac.T + rho * sp.Identity(n))
    return sp.expand(comm), dict(n=n, p=p, rho=rho, J=jac)


def _symbolic(name, rows, cols):
    return sp.Matrix(rows, cols, lambda i, j: sp.Symbol(f"{name}_{i + 1}{j + 1}", real=True))


def block_diagonal_operator(num_examples: int = 2, block_sizes=(3, 1)):
    """Function-space operator of damped block-diagonal NGD from generic Jacobian blocks, and its rho -> 0 limit.

    J = [J_1 | ... | J_B] (N, P) with symbolic blocks J_b (N, p_b); the preconditioner is
    blockdiag_b(J_b^T J_b / N + rho I) and A = J F_bd^{-1} J^T / N, computed in parameter space
    (p_b x p_b inverses). Derived: A = sum_b Theta_b (Theta_b + rho N I)^{-1} with Theta_b = J_b J_b^T
    (push-through), and as rho -> 0 each block tends to the projection on the column space of J_b:
    I when p_b >= N (Theta_b invertible), the rank-p_b projection J_b (J_b^T J_b)^{-1} J_b^T otherwise.
    Returns (A(rho), push-through form, the rho -> 0 limit of each block's term, symbols); the tests
    compare the limits with I and with the projection, and A with ``natural_gradient``'s operator.
    """
    n, rho = num_examples, sp.Symbol("rho", positive=True)
    blocks = [_symbolic(f"J{b + 1}", n, p) for b, p in enumerate(block_sizes)]
    operator = sp.zeros(n, n)
    push = sp.zeros(n, n)
    limits = []
    for jb in blocks:
        precond = jb.T * jb / n + rho * sp.eye(jb.shape[1])
        operator += jb * precond.inv() * jb.T / n
        theta = jb * jb.T
        block = (theta * (theta + rho * n * sp.eye(n)).inv()).applyfunc(sp.cancel)
        push += block
        limits.append(block.applyfunc(lambda e: sp.cancel(sp.limit(e, rho, 0))))
    return operator, push, limits, dict(rho=rho, blocks=blocks, N=n)


def layer_jacobian(a, n_out: int, last_layer: bool = False, prefix: str = ""):
    """Per-example Jacobian (N, n_in n_out) of a network's output w.r.t. one layer's weights, by the chain rule.

    The layer maps its inputs a (N, n_in) to h_n = a_n W with a symbolic W (n_in, n_out); the rest
    of the network is an unspecified function F, f(x_n) = F(h_n) (``last_layer``: F(h) = h, one
    output). SymPy differentiates f(x_n) with respect to the entries of W (row-major) and names the
    derivative dF/dh_j at h_n delta_nj: the rows come out as a_n (x) delta_n (row-major), with
    delta_n = 1 for the last layer. Returns (J, delta (N, n_out)); symbol names start with ``prefix``.
    """
    n, n_in = a.shape
    if last_layer and n_out != 1:
        raise ValueError(f"last_layer needs n_out = 1 (the output layer of a one-output net), got n_out={n_out}")
    w = _symbolic(f"{prefix}W", n_in, n_out)
    h = a * w
    delta = _symbolic(f"{prefix}delta", n, n_out)
    rows = []
    for i in range(n):
        out = h[i, 0] if last_layer else sp.Function("F")(*h[i, :])

        def name_derivative(derivative, variables, point, i=i):
            (var,) = derivative.variables
            return delta[i, list(derivative.expr.args).index(var)]

        rows.append([sp.diff(out, wij).replace(sp.Subs, name_derivative) for wij in w])
    return sp.Matrix(rows), (sp.ones(n, 1) if last_layer else delta)


def _domain_matrix(matrix, domain):
    return DomainMatrix.from_list_sympy(*matrix.shape, matrix.tolist()).convert_to(domain)


def _field(*matrices):
    """QQ(symbols): the field of rational functions in the free symbols of ``matrices``."""
    gens = sorted(set().union(*(m.free_symbols for m in matrices)), key=str)
    return sp.QQ.frac_field(*gens) if gens else sp.QQ


def rational_zero(matrix) -> bool:
    """True iff every entry of ``matrix`` (rational functions) is identically zero, decided exactly in QQ(symbols)."""
    return _domain_matrix(matrix, _field(matrix)).is_zero_matrix


def column_space_projection(z):
    """Orthogonal projection (N, N) on the column space of a symbolic z (N, k), from a basis of that space.

    B = the pivot columns of z (exact elimination in QQ(entries): generic entries) and
    P = B (B^T B)^{-1} B^T; the identity when z has rank N, never assumed to be.
    """
    zf = _domain_matrix(z, _field(z))
    _, pivots = zf.rref()
    basis = DomainMatrix.hstack(*[zf.extract(list(range(z.shape[0])), [p]) for p in pivots])
    return (basis * (basis.transpose() * basis).inv() * basis.transpose()).to_Matrix()


def _lowest_power(poly, index):
    """(k, c): the lowest power k of generator ``index`` in ``poly`` and its coefficient c (that generator set to 0)."""
    terms = {}
    for monom, coeff in poly.terms():
        rest = monom[:index] + (0,) + monom[index + 1:]
        terms.setdefault(monom[index], {})[rest] = coeff
    k = min(terms)
    return k, poly.ring.from_dict(terms[k])


def kfac_layer_operator(num_examples: int = 2, n_in: int = 2, n_out: int = 2, last_layer: bool = False,
                        a=None, prefix: str = ""):
    """K-FAC's function-space term for one layer, derived from its damped Kronecker factors, and N (P_a o P_delta).

    One output (K = 1). Layer inputs a (N, n_in) (symbolic unless given) and the Jacobian rows of
    ``layer_jacobian`` (deltas symbolic, or all one for the ``last_layer``). K-FAC's block is
    A_bar (x) G_bar with A_bar = a^T a / N and G_bar = delta^T delta / N, each damped as in
    ``overparam.experiments.natural_gradient`` (A_bar + rho I, G_bar + rho I), so the widths may
    exceed N (singular factors). The term J [(A_bar + rho I)^{-1} (x) (G_bar + rho I)^{-1}] J^T / N is
    formed in parameter space (inverses as adjugate / determinant, exact polynomial arithmetic) and
    its rho -> 0 limit taken entry by entry from the lowest powers of rho in numerator and
    denominator (a pole, a negative power left over, raises ValueError). The mixed-product rule
    predicts N (P_a o P_delta) (o: entrywise, P: ``column_space_projection``), computed separately;
    the tests compare the two, and the damped term with the library's. Returns (limit term,
    N (P_a o P_delta), dict(term_rho, rho, P_a, P_delta, a, delta)).
    """
    n = int(num_examples)
    a = _symbolic(f"{prefix}a", n, n_in) if a is None else a
    jac, delta = layer_jacobian(a, n_out, last_layer, prefix)
    rho = sp.Symbol("rho", positive=True)
    gens = sorted(jac.free_symbols | a.free_symbols | delta.free_symbols, key=str)
    ring = sp.ZZ[tuple(gens) + (rho,)]
    # (A_bar + rho I)^{-1} = N adj(a^T a + N rho I) / det(a^T a + N rho I), the same for G_bar
    adj_a, det_a = (_domain_matrix(a.T * a + n * rho * sp.eye(a.shape[1]), ring)).adj_det()
    adj_g, det_g = (_domain_matrix(delta.T * delta + n * rho * sp.eye(n_out), ring)).adj_det()
    ea, eg = adj_a.to_list(), adj_g.to_list()
    kron = DomainMatrix([[ea[i][k] * eg[j][l] for k in range(len(ea)) for l in range(len(eg))]
                         for i in range(len(ea)) for j in range(len(eg))], (len(ea) * len(eg),) * 2, ring)
    jd = _domain_matrix(jac, ring)
    numerator = (jd * kron * jd.transpose()) * ring.convert(n)    # N^2 / N from the two inverses and the 1/N
    denominator = det_a * det_g
    k_den, c_den = _lowest_power(denominator, len(gens))
    field = ring.get_field()
    term = []
    for row in numerator.to_list():
        term.append([])
        for entry in row:
            k_num, c_num = _lowest_power(entry, len(gens)) if entry else (k_den, entry)
            if k_num < k_den:
                raise ValueError(f"the damped K-FAC term has a pole at rho = 0 (rho^{k_num - k_den}): no finite limit")
            term[-1].append(field.convert(c_num) / field.convert(c_den) if k_num == k_den else field.zero)
    term = DomainMatrix(term, (n, n), field).to_Matrix()
    term_rho = numerator.to_Matrix() / ring.to_sympy(denominator)
    p_a, p_d = column_space_projection(a), column_space_projection(delta)
    hadamard = (n * p_a.multiply_elementwise(p_d)).applyfunc(sp.cancel)
    return term, hadamard, dict(term_rho=term_rho, rho=rho, P_a=p_a, P_delta=p_d, a=a, delta=delta)


def kfac_network_operator(num_examples: int = 2, input_dim: int = 1, width: int = 3, depth: int = 3):
    """K-FAC's function-space operator of a one-output net (d, M, ..., M, 1), layer by layer, as rho -> 0.

    Symbolic inputs x (N, d); every later layer's inputs and deltas are generic symbols (a network
    at a generic point); each layer's term from ``kfac_layer_operator``, the last with deltas all one
    (f = h_L). Nothing about the widths is assumed: with M >= N the derivation returns N diag(h) for
    the first layer (h_n = P_X[n, n], the leverage scores of x), N I for each hidden layer and I for
    the last, whose sum the chapter predicts as (1 + (L - 2) N) I + N diag(h) (``closed_form``).
    Returns dict(terms, operator, closed_form, leverage, x, layers = each layer's third return value).
    """
    n, depth = int(num_examples), int(depth)
    if depth < 2:
        raise ValueError(f"depth={depth} must be >= 2")
    x = _symbolic("x", n, input_dim)
    fan_in = [input_dim] + [width] * (depth - 1)
    terms, layers = [], []
    for l in range(depth):
        last = l == depth - 1
        term, _, info = kfac_layer_operator(n, fan_in[l], 1 if last else width, last_layer=last,
                                            a=x if l == 0 else None, prefix=f"l{l + 1}")
        terms.append(term)
        layers.append(info)
    leverage = column_space_projection(x).diagonal()
    closed = (1 + (depth - 2) * n) * sp.eye(n) + n * sp.diag(*leverage)
    return dict(terms=terms, operator=sum(terms[1:], terms[0]), closed_form=closed, leverage=leverage, x=x,
                layers=layers)
