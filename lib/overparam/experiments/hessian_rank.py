r"""Rank and structure of the loss Hessian: its outer-product (Gauss-Newton) and functional parts.

Loss (the book's ``overparam.training.mse_loss``): L(theta) = 1/(2N) sum_n ||f(theta, x_n) - y_n||^2
with outputs f (N, K) and residuals e = f - y. Its Hessian splits exactly as

    H = H_o + H_f,   H_o = (1/N) J^T J,   H_f = (1/N) sum_{n,k} e_{nk} grad^2_theta f_k(x_n),

with J (NK, P) the Jacobian of the stacked outputs. H_o is the outer-product (Gauss-Newton,
for this loss also the Fisher) part, H_f the functional part. All matrices are (P, P) in the
flat coordinates of ``jax.flatten_util.ravel_pytree(params)``.

Deep linear networks (the setting of Singh, Bachmann and Hofmann, 2021) use the library's row
convention f(x) = x @ w_1 @ ... @ w_L with w_l of shape (n_{l-1}, n_l), widths
(d = n_0, M_1, ..., M_{L-1}, K = n_L), inputs x (N, d) of rank r. With q = min(r, M_1..M_{L-1}, K)
and s = min(r, K), at generic weights and targets (verified numerically, see the tests):

    rank H_o = q (r + K - q)
    rank H_f = 2 q (M_1 + ... + M_{L-1}) + 2 q s - L q^2
    rank H   = 2 q (M_1 + ... + M_{L-1}) + q (r + K) - L q^2

The functional formula is the one of the authors' released code (dalab/hessian-rank); when every
M_i >= s it reads 2 s (M_1 + ... + M_{L-1}) - (L - 2) s^2, the form of the paper's theorem. It
covers bottlenecks (some M_i < s) because H_f is the Hessian of g = tr(Omega^T W_1 ... W_L): a
change of basis makes Omega = diag(I_s, 0), so H_f has the rank of the Hessian of the trace of a
*cyclic* product with node widths (s, M_1, ..., M_{L-1}); the trace is invariant under rotating the
cycle, so the narrowest node (width q) can be put at the input and output, where the no-bottleneck
formula applies with s = q: 2 q (s + sum M_i - q) - (L - 2) q^2, the formula above
(``functional_cycle_widths``; derivation in ``overparam.derivations.hessian_fisher``).

Ranks without a threshold: ``modular_rank`` is the exact rank of an integer matrix over the prime
field GF(p) (equal to its rank over the rationals unless p divides every non-zero maximal minor, which
two primes make negligible); ``relu_integer_hessian_ranks`` evaluates a bias-free ReLU network at
integer weights and inputs, where its Hessian parts are integer matrices computed exactly in float64.

``deep_linear_rank_formula`` returns these; ``deep_linear_hessian_parts`` builds the three
matrices in closed form (numpy float64, no autodiff, no compilation) and ``hessian_parts``
builds them by autodiff for any network (use float64: ``with jax.enable_x64(True):``).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from threadpoolctl import threadpool_limits

from overparam.curvature import hessian_full
from overparam.models import MLPSpec


@dataclasses.dataclass(frozen=True)
class HessianParts:
    """The loss Hessian and its two parts, each (P, P): ``outer`` = H_o, ``functional`` = H_f, ``full`` = H."""

    outer: np.ndarray
    functional: np.ndarray
    full: np.ndarray


@dataclasses.dataclass(frozen=True)
class HessianRanks:
    """Numerical ranks of H_o, H_f, H and the parameter count P."""

    outer: int
    functional: int
    full: int
    num_params: int


# ------------------------------------------------------------------------------------- ranks


def numerical_rank(a, rtol: float | None = None) -> int:
    """Number of singular values of ``a`` above ``rtol * sigma_max``.

    rtol defaults to max(a.shape) * eps(dtype), the convention of ``numpy.linalg.matrix_rank``;
    compute in float64 for ranks of matrices with more than a few hundred rows. A zero matrix
    has rank 0.
    """
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"a has shape {a.shape}; expected a matrix")
    if a.size == 0:
        return 0
    if rtol is None:
        rtol = max(a.shape) * np.finfo(a.dtype if np.issubdtype(a.dtype, np.floating) else float).eps
    if rtol < 0:
        raise ValueError(f"rtol={rtol} must be >= 0")
    # One BLAS thread: for matrices of this size a multi-threaded OpenBLAS is no faster alone and
    # many times slower on a shared machine (spinning threads).
    with threadpool_limits(limits=1, user_api="blas"):
        if a.shape[0] == a.shape[1] and np.linalg.norm(a - a.T) <= 1e-10 * np.linalg.norm(a):
            s = np.abs(np.linalg.eigvalsh((a + a.T) / 2))  # symmetric: eigenvalues, cheaper than an SVD
        else:
            s = np.linalg.svd(a, compute_uv=False)
    top = s.max()
    return 0 if top == 0 else int(np.sum(s > rtol * top))


def hessian_ranks(parts: HessianParts, rtol: float | None = None) -> HessianRanks:
    """``numerical_rank`` of each part (same rtol for the three)."""
    return HessianRanks(numerical_rank(parts.outer, rtol), numerical_rank(parts.functional, rtol),
                        numerical_rank(parts.full, rtol), parts.full.shape[0])


# ---------------------------------------------------------------------------------- autodiff


def hessian_parts(apply_fn, params, x, y) -> HessianParts:
    """H_o, H_f and H of the MSE loss of any ``apply_fn(params, x) -> (N, K)`` by autodiff.

    H_o = J^T J / N from the Jacobian (``jax.jacfwd``); H_f as the Hessian of
    theta -> (1/N) <stop_gradient(e), f(theta)>; H = H_o + H_f (the tests check it against
    ``jax.hessian`` of the loss). Dtype follows params and x (use float64 for ranks). Memory
    P^2 (and NK * P for J): small networks only.
    """
    n = x.shape[0]
    out_shape = jax.eval_shape(apply_fn, params, x).shape
    if out_shape != y.shape:
        raise ValueError(f"apply_fn returns shape {out_shape} but y has shape {y.shape}")

    @jax.jit
    def compute(params):
        vec, unflatten = ravel_pytree(params)
        e = jax.lax.stop_gradient(apply_fn(params, x) - y)
        jac = jax.jacfwd(lambda u: apply_fn(unflatten(u), x).reshape(-1))(vec)
        functional = hessian_full(lambda p: jnp.sum(e * apply_fn(p, x)) / n, params, max_params=vec.shape[0])
        return jac.T @ jac / n, functional

    outer, functional = (np.asarray(m) for m in compute(params))
    return HessianParts(outer, functional, outer + functional)


# ------------------------------------------------------------------------ deep linear networks


def _check_weights(weights, x, y):
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    if not weights or any(w.ndim != 2 for w in weights):
        raise ValueError("weights must be a non-empty list of matrices w_l of shape (n_{l-1}, n_l)")
    for l, (a, b) in enumerate(zip(weights[:-1], weights[1:])):
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"weights[{l}] has shape {a.shape} but weights[{l + 1}] has shape {b.shape}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != weights[0].shape[0]:
        raise ValueError(f"x has shape {x.shape}; expected (N, {weights[0].shape[0]})")
    if y.shape != (x.shape[0], weights[-1].shape[1]):
        raise ValueError(f"y has shape {y.shape}; expected ({x.shape[0]}, {weights[-1].shape[1]})")
    return weights, x, y


def _chain(weights, start, stop, n):
    """w_start @ ... @ w_{stop-1} (identity (n, n) when start == stop)."""
    out = np.eye(n)
    for w in weights[start:stop]:
        out = out @ w
    return out


def deep_linear_hessian_parts(weights: Sequence, x, y) -> HessianParts:
    """Closed-form H_o, H_f, H of the MSE loss of f(x) = x @ w_1 @ ... @ w_L (numpy float64).

    weights: [w_1 (d, M_1), ..., w_L (M_{L-1}, K)]; x (N, d); y (N, K). Coordinates: the
    row-major entries of w_1, then w_2, ... (the order of ``ravel_pytree`` on the list).
    With A_l = w_1..w_{l-1}, B_l = w_{l+1}..w_L, C_lm = w_{l+1}..w_{m-1} and
    Omega = x^T e / N (d, K):
      d f / d w_l[a, b] = (x A_l)[:, a] B_l[b, :]                         (the Jacobian J_l)
      d^2 g / d w_l[a, b] d w_m[c, c'] = (B_m Omega^T A_l)[c', a] C_lm[b, c]  for l < m,
    where g = (1/N) <e, f> is the function whose Hessian is H_f; diagonal blocks of H_f vanish
    (f is linear in each w_l separately).
    """
    weights, x, y = _check_weights(weights, x, y)
    n, num_layers = x.shape[0], len(weights)
    widths = [weights[0].shape[0]] + [w.shape[1] for w in weights]
    e = x @ _chain(weights, 0, num_layers, widths[0]) - y
    omega = x.T @ e / n
    blocks = []
    for l in range(num_layers):
        a = _chain(weights, 0, l, widths[0])              # (d, n_l_in)
        b = _chain(weights, l + 1, num_layers, widths[l + 1])  # (n_l_out, K)
        blocks.append(np.einsum("na,bk->nkab", x @ a, b).reshape(n * widths[-1], -1))
    jac = np.concatenate(blocks, axis=1)
    outer = jac.T @ jac / n
    offsets = np.concatenate([[0], np.cumsum([w.size for w in weights])])
    functional = np.zeros_like(outer)
    for l, m in itertools.combinations(range(num_layers), 2):
        a_l = _chain(weights, 0, l, widths[0])
        b_m = _chain(weights, m + 1, num_layers, widths[m + 1])
        c_lm = _chain(weights, l + 1, m, widths[l + 1])
        block = np.einsum("ea,bc->abce", b_m @ omega.T @ a_l, c_lm).reshape(weights[l].size, weights[m].size)
        functional[offsets[l]:offsets[l + 1], offsets[m]:offsets[m + 1]] = block
        functional[offsets[m]:offsets[m + 1], offsets[l]:offsets[l + 1]] = block.T
    return HessianParts(outer, functional, outer + functional)


@dataclasses.dataclass(frozen=True)
class RankFormula:
    """Predicted ranks of H_o, H_f, H of a deep linear network and its parameter count."""

    outer: int
    functional: int
    full: int
    num_params: int


def _check_formula_args(widths, r):
    widths = tuple(int(n) for n in widths)
    if len(widths) < 3 or any(n < 1 for n in widths):
        raise ValueError(f"widths={widths!r} must be (d, M_1, ..., M_{{L-1}}, K), L >= 2, all positive")
    if not 1 <= int(r) <= widths[0]:
        raise ValueError(f"r={r} must be the rank of the inputs, 1 <= r <= d = {widths[0]}")
    return widths, int(r)


def deep_linear_rank_formula(widths: Sequence[int], r: int) -> RankFormula:
    """Generic ranks of H_o, H_f, H for a deep linear net (formulas in the module docstring).

    widths: (d, M_1, ..., M_{L-1}, K) with L >= 2 weight matrices; r: rank of the inputs
    (r <= min(d, N)). Every formula holds for any widths, bottlenecks included.
    """
    widths, r = _check_formula_args(widths, r)
    hidden, k, num_layers = widths[1:-1], widths[-1], len(widths) - 1
    q, s = min(r, k, *hidden), min(r, k)
    outer = q * (r + k - q)
    functional = 2 * q * sum(hidden) + 2 * q * s - num_layers * q * q
    full = 2 * q * sum(hidden) + q * (r + k) - num_layers * q * q
    num_params = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    return RankFormula(outer, functional, full, num_params)


def random_deep_linear_problem(seed: int, widths: Sequence[int], num_examples: int, r: int):
    """(weights, x, y) at generic values: Gaussian weights w_l ~ N(0, 1/n_{l-1}), inputs of rank r, random y.

    x = z @ u with z (N, r), u (r, d) Gaussian, so rank(x) = min(r, N) almost surely; y (N, K)
    Gaussian (generic residuals). numpy float64, ``seed`` an int.
    """
    widths, r = _check_formula_args(widths, r)
    if num_examples < r:
        raise ValueError(f"num_examples={num_examples} must be >= r={r} (the rank of x is at most N)")
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal((a, b)) / np.sqrt(a) for a, b in zip(widths[:-1], widths[1:])]
    x = rng.standard_normal((num_examples, r)) @ rng.standard_normal((r, widths[0])) / np.sqrt(r)
    y = rng.standard_normal((num_examples, widths[-1]))
    return weights, x, y


def deep_linear_rank_check(seed: int, widths: Sequence[int], num_examples: int, r: int) -> dict:
    """Measured (float64 numerical rank) vs predicted ranks for one random deep linear problem.

    Returns a dict with widths, N, r, depth L, P, measured and predicted ranks of H_o, H_f, H
    and ``match`` (all three equal).
    """
    weights, x, y = random_deep_linear_problem(seed, widths, num_examples, r)
    measured = hessian_ranks(deep_linear_hessian_parts(weights, x, y))
    pred = deep_linear_rank_formula(widths, r)
    match = (measured.outer, measured.functional, measured.full) == (pred.outer, pred.functional, pred.full)
    return dict(widths=tuple(widths), N=num_examples, r=r, L=len(widths) - 1, P=measured.num_params,
                outer=measured.outer, functional=measured.functional, full=measured.full,
                outer_pred=pred.outer, functional_pred=pred.functional, full_pred=pred.full, match=bool(match))


def relu_functional_rank_one_hidden(widths: Sequence[int], r: int) -> int:
    """2 M s: rank of H_f for a bias-free one-hidden-layer ReLU net (d, M, K), s = min(r, K).

    H_f has no diagonal blocks (f is linear in w_1 at a fixed activation pattern, and in w_2); its
    bilinear form is sum_m dw_1[:, m]^T Omega_m dw_2[m, :]^T with Omega_m = x^T D_m e / N (d, K),
    D_m the diagonal 0/1 mask of unit m, dw the perturbations: a block of rank <= s per unit, so
    rank H_f <= 2 M s, the linear value, with equality at generic points.
    """
    widths, r = _check_formula_args(widths, r)
    if len(widths) != 3:
        raise ValueError(f"widths={widths!r} must be (d, M, K) for a one-hidden-layer network")
    return 2 * widths[1] * min(r, widths[2])


def mlp_hessian_ranks(key, widths: Sequence[int], x, y, activation="relu", rtol: float | None = None) -> HessianRanks:
    """Ranks of H_o, H_f, H for a bias-free ``MLPSpec(widths, activation, "ntk")`` at init.

    Params are cast to the dtype of x: pass float64 inputs under ``jax.enable_x64(True)``. The
    NTK parameterization only rescales each layer, which leaves every rank unchanged.
    """
    apply_fn = MLPSpec(tuple(widths), activation, "ntk", use_bias=False)
    params = apply_fn.init(key)
    params = jax.tree.map(lambda p: p.astype(x.dtype), params)
    return hessian_ranks(hessian_parts(apply_fn, params, x, y), rtol)


def functional_cycle_widths(widths: Sequence[int], r: int) -> tuple[int, ...]:
    """Node widths of the cyclic trace whose Hessian has the rank of H_f, rotated narrowest first.

    H_f of the deep linear net (d, M_1, ..., M_{L-1}, K) with inputs of rank r has the rank of the
    Hessian of tr(V_1 W_2 ... W_{L-1} V_L) over the cycle of node widths (s, M_1, ..., M_{L-1}),
    s = min(r, K) (module docstring). Returned rotated so that the first node is a narrowest one
    (width q): read as a deep linear net with input = output width q and hidden widths the rest,
    it has no bottleneck, and the no-bottleneck formula gives rank H_f.
    """
    widths, r = _check_formula_args(widths, r)
    nodes = (min(r, widths[-1]),) + widths[1:-1]
    start = nodes.index(min(nodes))
    return nodes[start:] + nodes[:start]


# ------------------------------------------------------------------ exact ranks, no threshold

MERSENNE_31 = 2**31 - 1   # prime; products of two residues fit in int64


def modular_rank(a, prime: int = MERSENNE_31) -> int:
    """Exact rank of an integer matrix over GF(prime) by Gaussian elimination (numpy int64).

    a: (m, n) integer-valued array (floats must hold integers exactly: |a| < 2^53). The rank over
    GF(p) is at most the rank over the rationals and equal to it unless p divides every non-zero
    maximal minor; computing with two primes and getting one answer makes a miss negligible.
    prime: a prime below 2^31 (so that a product of two residues fits in int64). Cost ~ m n min(m, n).
    """
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"a has shape {a.shape}; expected a matrix")
    if not 2 <= int(prime) < 2**31:
        raise ValueError(f"prime={prime} must be a prime in [2, 2^31)")
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or np.abs(a).max(initial=0) >= 2**53 or not np.array_equal(a, np.round(a)):
            raise ValueError("a must hold integers below 2^53 in magnitude (exactly representable)")
    m = np.mod(a.astype(np.int64), prime)
    rank, rows, cols = 0, m.shape[0], m.shape[1]
    for col in range(cols):
        if rank == rows:
            break
        nonzero = np.flatnonzero(m[rank:, col])
        if nonzero.size == 0:
            continue
        pivot = rank + nonzero[0]
        if pivot != rank:
            m[[rank, pivot]] = m[[pivot, rank]]
        inv = pow(int(m[rank, col]), prime - 2, prime)
        m[rank, col:] = (m[rank, col:] * inv) % prime
        below = m[rank + 1:, col].copy()
        hit = np.flatnonzero(below)
        if hit.size:
            rows_hit = rank + 1 + hit
            m[rows_hit, col:] = (m[rows_hit, col:] - (below[hit, None] * m[rank, col:]) % prime) % prime
        rank += 1
    return rank


def relu_integer_problem(seed: int, widths: Sequence[int], num_examples: int, value_range: int = 40,
                         max_tries: int = 100):
    """(weights, x, y) with integer entries in [-value_range, value_range] and no zero pre-activation.

    A bias-free ReLU net f = relu(relu(x w_1) ...) w_L at such a point is, near it, a polynomial in
    the weights with the activation pattern's 0/1 masks fixed, so its Jacobian and Hessian are
    integer matrices. Draws are repeated (``max_tries``) until no pre-activation is exactly zero,
    where ReLU has no derivative. numpy float64 arrays holding integers.
    """
    widths = tuple(int(n) for n in widths)
    if len(widths) < 2 or any(n < 1 for n in widths):
        raise ValueError(f"widths={widths!r} must be (d, ..., K) with positive entries")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        weights = [rng.integers(-value_range, value_range + 1, (a, b)).astype(np.float64)
                   for a, b in zip(widths[:-1], widths[1:])]
        x = rng.integers(-value_range, value_range + 1, (num_examples, widths[0])).astype(np.float64)
        y = rng.integers(-value_range, value_range + 1, (num_examples, widths[-1])).astype(np.float64)
        h, ok = x, True
        for w in weights[:-1]:
            h = h @ w
            ok = ok and bool(np.all(h != 0))
            h = np.maximum(h, 0)
        if ok:
            return weights, x, y
    raise ValueError(f"no draw without a zero pre-activation in {max_tries} tries; raise value_range")


def _relu_apply(params, x):
    h = x
    for w in params[:-1]:
        h = jnp.maximum(h @ w, 0)
    return h @ params[-1]


def relu_integer_hessian_ranks(seed: int, widths: Sequence[int], num_examples: int, value_range: int = 40,
                               primes: Sequence[int] = (MERSENNE_31, 2**31 - 19)) -> HessianRanks:
    """Exact ranks of H_o, H_f, H (loss scaled by 2N) of a bias-free ReLU net at an integer point.

    Uses ``relu_integer_problem``; J, the Hessian of <e, f> and J^T J are computed by autodiff in
    float64, where every intermediate is an integer below 2^53 (checked), i.e. exactly; ranks come
    from ``modular_rank`` with each prime in ``primes``, which must agree (ValueError otherwise). The
    common factor 1/N of the loss does not change a rank. No threshold is involved anywhere.
    """
    weights, x, y = relu_integer_problem(seed, widths, num_examples, value_range)
    with jax.enable_x64(True):
        vec, unflatten = ravel_pytree([jnp.asarray(w) for w in weights])
        xj, yj = jnp.asarray(x), jnp.asarray(y)
        out = lambda u: _relu_apply(unflatten(u), xj)  # noqa: E731
        e = jax.lax.stop_gradient(out(vec) - yj)
        jac = jax.jacfwd(lambda u: out(u).reshape(-1))(vec)
        # N H_o and N H_f: no division, so every entry is an integer
        mats = [np.asarray(jac.T @ jac), np.asarray(jax.hessian(lambda u: jnp.sum(e * out(u)))(vec))]
    for mat in mats:
        if np.abs(mat).max() >= 2**53 or not np.array_equal(mat, np.round(mat)):
            raise ValueError("the Hessian entries left the exact-integer range of float64; lower value_range")
    mats.append(mats[0] + mats[1])
    ranks = []
    for mat in mats:
        found = {modular_rank(mat, p) for p in primes}
        if len(found) != 1:
            raise ValueError(f"ranks over the primes {tuple(primes)} disagree: {sorted(found)}")
        ranks.append(found.pop())
    return HessianRanks(ranks[0], ranks[1], ranks[2], mats[0].shape[0])
