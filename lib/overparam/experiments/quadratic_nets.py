r"""Two-layer networks with quadratic activation, trained by gradient flow on the population risk.

Conventions (chapter 08), Gaussian inputs x ~ N(0, I_d):

=================  =========================================================================
student            f_W(x) = sum_{j=1..m} (w_j^T x)^2 = x^T A x,   A = W W^T,   W (d, m)
teacher            f*(x)  = x^T A* x,   A* = W* W*^T,   W* (d, m*)
risk (half-MSE)    R(W) = 1/2 E[(f_W(x) - f*(x))^2] = tr(D^2) + 1/2 (tr D)^2,   D = A - A*
gradient           dR/dA = 2 G,  G = D + 1/2 tr(D) I;   grad_W R = 4 G W
gradient flow      dW/dt = -4 G W,   hence   dA/dt = -4 (G A + A G)
=================  =========================================================================

``quadratic_net_apply(W, x)`` is the student on inputs x (n, d), with outputs (n, 1).
The "1/m" convention f = (1/m) sum_j (w~_j^T x)^2 is the same model with w_j = w~_j / sqrt(m),
and its flow in mean-field time (dW~/dt = -m grad_W~ R) is exactly the flow above.
A zero column w_j = 0 stays zero under the flow, so students of different widths are run
side by side (``jax.vmap``) by padding W with zero columns (``pad_columns``).

Scales used in the chapter: an *orthonormal* family has W^T W = I (A is a projection), and a
*Gaussian* family has i.i.d. N(0, v/d) entries (columns of squared norm ~ v); both give
eigenvalues of order one. The trace direction of the risk is stiff (curvature ~ tr A, of
order d, against order-one curvature for alignment), which sets the explicit step size
(``suggested_dt``).

The high-dimensional limit (orthonormal teacher and student, m = alpha d, m* = beta d,
d -> infinity) reduces to a family of 2-d flows indexed by the principal angles between the
two subspaces, coupled through one scalar (``block_flow``, ``limit_flow``); the principal
angles follow the free-projection (Wachter) law (``free_projection_law``).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

RK4_STABILITY = 2.785  # RK4 is stable for real negative eigenvalues lambda with |lambda dt| <= 2.785


# ----------------------------------------------------------------------------------- the model


def _check_w(W, name="W"):
    W = jnp.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"{name} has shape {W.shape}; expected (d, m), one column per neuron")
    return W


def quadratic_net_apply(W, x):
    """f_W(x) = sum_j (w_j^T x)^2 for the weights W (d, m) (one column per neuron) and x (n, d): returns (n, 1)."""
    W = _check_w(W)
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != W.shape[0]:
        raise ValueError(f"x has shape {x.shape}; expected (n, {W.shape[0]}) for W of shape {W.shape}")
    return jnp.sum((x @ W) ** 2, axis=1, keepdims=True)


def gram(W):
    """A = W W^T (d, d) for W (d, m)."""
    W = _check_w(W)
    return W @ W.T


def risk_from_matrices(A, A_star):
    """R = tr(D^2) + 1/2 tr(D)^2 with D = A - A* (symmetric (d, d)): the half-MSE 1/2 E (x^T D x)^2."""
    D = A - A_star
    return jnp.sum(D * D) + 0.5 * jnp.trace(D) ** 2


def population_risk(W, A_star):
    """Population half-MSE of the student W (d, m) against the teacher matrix A* (d, d)."""
    return risk_from_matrices(gram(W), A_star)


def risk_gradient(W, A_star):
    """grad_W R = 4 G W with G = D + 1/2 tr(D) I, D = W W^T - A*; shape (d, m)."""
    D = gram(W) - A_star
    G = D + 0.5 * jnp.trace(D) * jnp.eye(D.shape[0], dtype=D.dtype)
    return 4.0 * G @ W


def monte_carlo_risk(key, W, A_star, num_samples: int):
    """Monte Carlo estimate of 1/2 E[(f_W(x) - x^T A* x)^2], x ~ N(0, I_d): (mean, standard error)."""
    W = _check_w(W)
    if num_samples < 2:
        raise ValueError(f"num_samples={num_samples} must be at least 2")
    return _monte_carlo_risk(key, W, A_star, num_samples)


@partial(jax.jit, static_argnames="num_samples")
def _monte_carlo_risk(key, W, A_star, num_samples):
    x = jax.random.normal(key, (num_samples, W.shape[0]), W.dtype)
    err = quadratic_net_apply(W, x)[:, 0] - jnp.einsum("ni,ij,nj->n", x, A_star, x)
    loss = 0.5 * err**2
    return jnp.mean(loss), jnp.std(loss, ddof=1) / math.sqrt(num_samples)


# ------------------------------------------------------------------------------ initializations


def orthonormal_columns(key, d: int, m: int, dtype=None):
    """W (d, m) with orthonormal columns spanning a uniformly random (Haar) m-dim subspace; m <= d."""
    if not 1 <= m <= d:
        raise ValueError(f"m={m} orthonormal columns need 1 <= m <= d={d}")
    # QR on the host in float64: XLA's CPU QR is orders of magnitude slower at d ~ 500
    q, r = np.linalg.qr(np.asarray(jax.random.normal(key, (d, m), jnp.float32), np.float64))
    return jnp.asarray(q * np.sign(np.diagonal(r))[None, :], dtype or jnp.result_type(float))


def gaussian_columns(key, d: int, m: int, variance: float = 1.0, dtype=None):
    """W (d, m) with i.i.d. N(0, variance/d) entries: each column has squared norm ~ variance."""
    if d < 1 or m < 1:
        raise ValueError(f"d={d} and m={m} must be positive")
    return jnp.sqrt(variance / d) * jax.random.normal(key, (d, m), dtype or jnp.result_type(float))


def pad_columns(W, m_total: int):
    """W (d, m) followed by m_total - m zero columns (neurons that stay at zero under the flow)."""
    W = _check_w(W)
    if m_total < W.shape[1]:
        raise ValueError(f"m_total={m_total} is smaller than the {W.shape[1]} columns of W")
    return jnp.pad(W, ((0, 0), (0, m_total - W.shape[1])))


# -------------------------------------------------------------------- rank-deficient students


def rank_m_risk_floor(A_star, m: int) -> float:
    """min R over students of width m (rank A <= m): q + r^2/(m + 2), in float64.

    With eigenvalues lambda_1 >= lambda_2 >= ... of A*, q = sum_{i>m} lambda_i^2 and
    r = sum_{i>m} lambda_i. Zero when m >= rank A*. (Not the Eckart-Young value q: the
    trace term makes the optimum inflate the kept eigenvalues by r/(m+2).) Eigenvalues below
    1e-6 d lambda_1 (float32 rounding of a low-rank A*) are treated as zero.
    """
    if m < 0:
        raise ValueError(f"m={m} must be >= 0")
    lam = np.sort(np.linalg.eigvalsh(np.asarray(A_star, dtype=np.float64)))[::-1]
    # eigenvalues at rounding level of a float32 A* count as zero (A* has rank m* exactly)
    tol = 1e-6 * lam.size * max(lam[0], 0.0)
    tail = np.where(np.abs(lam[m:]) > tol, lam[m:], 0.0)
    return float(np.sum(tail**2) + np.sum(tail) ** 2 / (m + 2))


def rank_m_minimizer(A_star, m: int):
    """A minimizer of R over PSD A of rank <= m: sum_{i<=m} (lambda_i + r/(m+2)) u_i u_i^T (float64)."""
    if m < 1:
        raise ValueError(f"m={m} must be >= 1")
    lam, U = np.linalg.eigh(np.asarray(A_star, dtype=np.float64))
    lam, U = lam[::-1], U[:, ::-1]
    r = np.sum(lam[m:])
    kept = lam[:m] + r / (m + 2)
    return (U[:, :m] * kept) @ U[:, :m].T


# ------------------------------------------------------------------------ ODE integration (RK4)


def rk4_step(rhs: Callable, y, args, dt):
    """One classical Runge-Kutta-4 step of y' = rhs(y, args) (y any pytree)."""
    add = lambda a, b, s: jax.tree.map(lambda u, v: u + s * v, a, b)
    k1 = rhs(y, args)
    k2 = rhs(add(y, k1, dt / 2), args)
    k3 = rhs(add(y, k2, dt / 2), args)
    k4 = rhs(add(y, k3, dt), args)
    return jax.tree.map(lambda u, a, b, c, e: u + dt / 6 * (a + 2 * b + 2 * c + e), y, k1, k2, k3, k4)


def _identity(y, args):
    return y


@partial(jax.jit, static_argnames=("rhs", "num_steps", "save_every", "observe"))
def rk4_integrate(rhs: Callable, y0, args, dt, num_steps: int, save_every: int = 1, observe: Callable = _identity):
    """Integrate y' = rhs(y, args) with fixed-step RK4 in one ``lax.scan``.

    rhs, observe: static functions (define them once at module level: they are hashed by
    identity). Returns (obs, y_final): obs stacks observe(y, args) at t = k * save_every * dt,
    k = 0..num_steps // save_every (the initial state included). dt, y0 and args are traced,
    so ``jax.vmap`` over them compiles once.
    """
    if num_steps < 1 or save_every < 1 or num_steps % save_every:
        raise ValueError(f"num_steps={num_steps} must be a positive multiple of save_every={save_every}")

    def inner(y, _):
        return rk4_step(rhs, y, args, dt), None

    def outer(y, _):
        y, _ = jax.lax.scan(inner, y, None, length=save_every)
        return y, observe(y, args)

    y_final, obs = jax.lax.scan(outer, y0, None, length=num_steps // save_every)
    obs = jax.tree.map(lambda o0, o: jnp.concatenate([o0[None], o]), observe(y0, args), obs)
    return obs, y_final


# ------------------------------------------------------------------- population gradient flow


def _flow_rhs(W, A_star):
    return -risk_gradient(W, A_star)


def _flow_observe(W, A_star):
    return population_risk(W, A_star), jnp.sum(W * W)


@dataclasses.dataclass(frozen=True)
class FlowResult:
    """times (S,), risks (S,) and traces tr A (S,) along the flow (saved every ``save_every``
    steps), final W (d, m)."""

    times: jax.Array
    risks: jax.Array
    traces: jax.Array
    W: jax.Array


jax.tree_util.register_dataclass(FlowResult, data_fields=["times", "risks", "traces", "W"], meta_fields=[])


def suggested_dt(A0, A_star, safety: float = 0.5) -> float:
    """A stable RK4 step for the flow started at A0 = W0 W0^T: safety * 2.785 / L.

    L = 4 (tr A0 + tr A*) + 8 (||A0||_2 + ||A*||_2) bounds the largest curvature of R along the
    trajectory (trace direction ~ 4 tr A, alignment directions ~ 8 ||A||_2; R decreases along the
    flow, so A stays within the initial scale). Returns a Python float (host computation).
    """
    A0, A_star = np.asarray(A0, np.float64), np.asarray(A_star, np.float64)
    norm = lambda A: float(np.max(np.abs(np.linalg.eigvalsh(A))))
    L = 4 * (np.trace(A0) + np.trace(A_star)) + 8 * (norm(A0) + norm(A_star))
    return safety * RK4_STABILITY / max(L, 1e-12)


def gradient_flow(W0, A_star, dt, num_steps: int, save_every: int = 1) -> FlowResult:
    """Gradient flow dW/dt = -grad_W R from W0 (d, m) against the teacher A* (d, d), by RK4.

    Records R and tr A every ``save_every`` steps (times k * save_every * dt). Works under ``jax.vmap``
    over W0, A_star and dt (one compilation per shape).
    """
    W0 = _check_w(W0, "W0")
    if A_star.shape != (W0.shape[0], W0.shape[0]):
        raise ValueError(f"A_star has shape {A_star.shape}; expected ({W0.shape[0]}, {W0.shape[0]})")
    (risks, traces), W = rk4_integrate(_flow_rhs, W0, A_star, dt, num_steps, save_every, _flow_observe)
    times = jnp.arange(num_steps // save_every + 1) * save_every * dt
    return FlowResult(times, risks, traces, W)


# --------------------------------------------------------------- high-dimensional limit (blocks)


@dataclasses.dataclass(frozen=True)
class ProjectionLaw:
    """Law of the squared cosines of the principal angles between independent uniformly random
    subspaces of dimensions alpha d (student) and beta d (teacher), as d -> infinity.

    Masses are per dimension (fractions of d): ``continuous_mass`` spread on [lower, upper] with
    density ``free_projection_density``, ``intersection`` at cos^2 = 1, plus ``student_only``
    = max(alpha - beta, 0) and ``teacher_only`` = max(beta - alpha, 0) unpaired directions.
    """

    alpha: float
    beta: float
    lower: float
    upper: float
    continuous_mass: float
    intersection: float
    student_only: float
    teacher_only: float


def free_projection_law(alpha: float, beta: float) -> ProjectionLaw:
    """The limiting principal-angle law of two free projections of traces alpha, beta in (0, 1]."""
    for name, v in (("alpha", alpha), ("beta", beta)):
        if not 0 < v <= 1:
            raise ValueError(f"{name}={v} must be in (0, 1] (subspace dimension / d)")
    center = alpha + beta - 2 * alpha * beta
    half = 2 * math.sqrt(alpha * beta * (1 - alpha) * (1 - beta))
    inter = max(alpha + beta - 1, 0.0)
    return ProjectionLaw(alpha, beta, max(center - half, 0.0), min(center + half, 1.0),
                         min(alpha, beta) - inter, inter, max(alpha - beta, 0.0), max(beta - alpha, 0.0))


def free_projection_density(c, law: ProjectionLaw):
    """Density (per dimension) of squared cosines c in (lower, upper): sqrt((u - c)(c - l)) / (2 pi c (1 - c))."""
    c = np.asarray(c, dtype=np.float64)
    inside = np.clip((law.upper - c) * (c - law.lower), 0.0, None)
    return np.sqrt(inside) / (2 * np.pi * c * (1 - c))


def projection_law_quadrature(law: ProjectionLaw, num_nodes: int):
    """Nodes c_k and weights (masses) for integrals against the law's continuous part.

    Substituting c = (u + l)/2 - (u - l)/2 cos(phi) makes the integrand sin(phi)^2 / (c (1 - c)),
    bounded even when l = 0 (alpha = beta); the midpoint rule in phi is then spectrally accurate.
    Weights sum to ``continuous_mass`` up to quadrature error. Returns numpy float64 arrays.
    """
    if num_nodes < 2:
        raise ValueError(f"num_nodes={num_nodes} must be at least 2")
    phi = (np.arange(num_nodes) + 0.5) * np.pi / num_nodes
    half = (law.upper - law.lower) / 2
    c = (law.upper + law.lower) / 2 - half * np.cos(phi)
    w = (np.pi / num_nodes) * half**2 * np.sin(phi) ** 2 / (2 * np.pi * c * (1 - c))
    return c, w


def principal_cos2(U, U_star):
    """Squared cosines (descending, min(m, m*) of them) of the principal angles between span(U) and
    span(U_star), both with orthonormal columns; computed on the host in float64, returned as numpy."""
    M = np.asarray(U, np.float64).T @ np.asarray(U_star, np.float64)
    return np.clip(np.linalg.svd(M, compute_uv=False) ** 2, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class BlockState:
    """Reduced state: blocks (K, 2) = student vector in each (teacher, other) plane; student_only (scalar)."""

    blocks: jax.Array
    student_only: jax.Array


jax.tree_util.register_dataclass(BlockState, data_fields=["blocks", "student_only"], meta_fields=[])


def _block_traces(y: BlockState, masses):
    """Normalized (per-dimension) tr A, tr D, tr D^2, tr(D A) of the reduced state."""
    weights, student_mass, teacher_mass = masses
    b, s = y.blocks, y.student_only
    n2 = jnp.sum(b**2, axis=1)
    w1 = b[:, 0] ** 2
    trA = weights @ n2 + student_mass * s**2
    trD = weights @ (n2 - 1) + student_mass * s**2 - teacher_mass
    trD2 = weights @ (n2**2 - 2 * w1 + 1) + student_mass * s**4 + teacher_mass
    trDA = weights @ (n2**2 - w1) + student_mass * s**4
    return trA, trD, trD2, trDA


def _multiplier(y, args):
    masses, d, limit = args
    trA, trD, _, trDA = _block_traces(y, masses)
    if limit:  # d -> infinity: tr A is conserved, lambda is its Lagrange multiplier
        return -trDA / trA
    return 0.5 * d * trD


def _block_rhs(y: BlockState, args):
    lam = _multiplier(y, args)
    b, s = y.blocks, y.student_only
    n2 = jnp.sum(b**2, axis=1, keepdims=True)
    e1 = jnp.array([1.0, 0.0], b.dtype)
    db = -4.0 * (n2 * b - e1 * b + lam * b)
    ds = -4.0 * (s**3 + lam * s)
    return BlockState(db, ds)


def _block_risk(y, args):
    masses, d, limit = args
    _, trD, trD2, _ = _block_traces(y, masses)
    return trD2 if limit else trD2 + 0.5 * d * trD**2


def block_flow(cos2, weights, student_only, teacher_only, s2, dt, num_steps: int, save_every: int = 1, d=None):
    """Reduced gradient flow for an orthonormal teacher (A* a projection) and a student started at
    A0 = s2 * (a projection), returning (times, normalized risk R/d along the flow, final BlockState).

    cos2 (K,): squared cosines of the principal angles (one 2-d block each, mass ``weights`` (K,)
    per dimension; zero weights pad to a common K); ``student_only`` / ``teacher_only``:
    per-dimension masses of unpaired student and teacher directions. In block k the student
    vector starts at sqrt(s2) (sqrt c_k, sqrt(1-c_k)) and follows
    dw/dt = -4 (w w^T - e1 e1^T + lambda I) w; unpaired student directions follow
    ds/dt = -4 (s^3 + lambda s). The blocks are coupled only through the scalar lambda:
    d given: lambda = tr(D)/2 = d <tr D>/2, the exact reduction of the d-dim flow (weights 1/d);
    d None: the d -> infinity limit, lambda = -<tr DA>/<tr A> keeps tr A fixed (start on tr A = tr A*).
    All arguments but num_steps, save_every and whether d is None are traced (``jax.vmap`` works).
    """
    cos2 = jnp.asarray(cos2)
    weights = jnp.asarray(weights, cos2.dtype)
    if cos2.ndim != 1 or weights.shape != cos2.shape:
        raise ValueError(f"cos2 has shape {cos2.shape} and weights {weights.shape}; expected equal 1-d shapes")
    root = jnp.sqrt(jnp.asarray(s2, cos2.dtype))
    y0 = BlockState(root * jnp.stack([jnp.sqrt(cos2), jnp.sqrt(jnp.clip(1 - cos2, 0.0))], axis=1), root)
    masses = (weights, jnp.asarray(student_only, cos2.dtype), jnp.asarray(teacher_only, cos2.dtype))
    limit = d is None
    args = (masses, jnp.asarray(0.0 if limit else d, cos2.dtype), limit)
    risks, y = _block_integrate(y0, args, dt, num_steps, save_every)
    times = jnp.arange(num_steps // save_every + 1) * save_every * dt
    return times, risks, y


def _block_integrate(y0, args, dt, num_steps, save_every):
    masses, d, limit = args
    rhs, risk = (_limit_rhs, _limit_risk) if limit else (_finite_rhs, _finite_risk)
    return rk4_integrate(rhs, y0, (masses, d), dt, num_steps, save_every, risk)


# rk4_integrate hashes rhs by identity: one module-level function per case
def _finite_rhs(y, args):
    return _block_rhs(y, (*args, False))


def _limit_rhs(y, args):
    return _block_rhs(y, (*args, True))


def _finite_risk(y, args):
    return _block_risk(y, (*args, False))


def _limit_risk(y, args):
    return _block_risk(y, (*args, True))


def limit_flow(alpha: float, beta: float, dt: float, num_steps: int, save_every: int = 1, num_nodes: int = 256):
    """High-dimensional limit of the flow for an orthonormal teacher of width beta d and an
    orthonormal student of width alpha d scaled to tr A0 = tr A* (A0 = (beta/alpha) P0).

    Returns (times, r(t) = lim R/d, final BlockState). Strong recovery (r -> 0) iff alpha >= beta;
    below, r -> (beta - alpha) beta / alpha.
    """
    law = free_projection_law(alpha, beta)
    c, w = projection_law_quadrature(law, num_nodes)
    if law.intersection > 0:
        c, w = np.append(c, 1.0), np.append(w, law.intersection)
    dtype = jnp.result_type(float)
    return block_flow(jnp.asarray(c, dtype), jnp.asarray(w, dtype), law.student_only,
                      law.teacher_only, beta / alpha, dt, num_steps, save_every, d=None)


def limit_risk_floor(alpha: float, beta: float) -> float:
    """lim_{d->inf} rank_m_risk_floor(P*, alpha d) / d = (beta - alpha) beta / alpha for alpha < beta, else 0."""
    return max(beta - alpha, 0.0) * beta / alpha


# ------------------------------------------------------------------------------ experiments


INITS = ("orthonormal", "gaussian")


def teacher_student(key, d: int, m_star: int, m: int, init: str = "orthonormal"):
    """(W0 (d, m), A* (d, d)) for one teacher-student pair, scaled so that tr A0 = tr A* (in expectation).

    init "orthonormal": W* and W0/sqrt(m*/m) have orthonormal columns (independent Haar subspaces),
    so A* is a rank-m* projection and A0 = (m*/m) P0. "gaussian": W* has N(0, 1/d) entries and
    W0 N(0, (m*/m)/d) entries (general position, eigenvalues spread around one).
    The teacher depends on ``key`` only (not on m), the student on ``key`` and m.
    """
    if init not in INITS:
        raise ValueError(f"init={init!r} is not known; allowed: {', '.join(INITS)}")
    if not (1 <= m_star <= d and 1 <= m):
        raise ValueError(f"need 1 <= m_star <= d and m >= 1; got d={d}, m_star={m_star}, m={m}")
    k_t, k_s = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1 + m)
    s2 = m_star / m
    if init == "orthonormal":
        if m > d:
            raise ValueError(f"an orthonormal student needs m <= d; got m={m}, d={d}")
        W_star, W0 = orthonormal_columns(k_t, d, m_star), math.sqrt(s2) * orthonormal_columns(k_s, d, m)
    else:
        W_star, W0 = gaussian_columns(k_t, d, m_star), gaussian_columns(k_s, d, m, variance=s2)
    return W0, W_star @ W_star.T


@dataclasses.dataclass(frozen=True)
class RecoverySweep:
    """Gradient flows for several student widths against the same teachers.

    widths (M,); times (T,); risks (S, M, T) with S seeds (one teacher each); floors (S, M) the
    rank-m minimum ``rank_m_risk_floor`` of each teacher (float64).
    """

    d: int
    m_star: int
    init: str
    widths: np.ndarray
    times: np.ndarray
    risks: np.ndarray
    floors: np.ndarray

    @property
    def final_over_initial(self):
        """R(T) / R(0), shape (S, M)."""
        return self.risks[..., -1] / self.risks[..., 0]

    @property
    def final_over_floor(self):
        """R(T) / floor for widths with a positive floor (m < m*), nan elsewhere; shape (S, M)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.floors > 0, self.risks[..., -1] / self.floors, np.nan)


def recovery_sweep(key, d: int, m_star: int, widths, init: str = "orthonormal", num_seeds: int = 2,
                   horizon: float = 40.0, num_saves: int = 200) -> RecoverySweep:
    """Run the population gradient flow to time ``horizon`` for every student width in ``widths``.

    All widths and seeds run in one ``vmap``ped RK4 scan (students padded to max(widths) with
    zero columns); one step size, the smallest ``suggested_dt`` of the batch, serves all.
    """
    widths = np.asarray(widths, dtype=int)
    if widths.ndim != 1 or widths.size == 0 or widths.min() < 1:
        raise ValueError(f"widths={widths.tolist()} must be a non-empty list of positive integers")
    m_max = int(widths.max())
    W0s, A_stars, floors = [], [], []
    for s, k in enumerate(jax.random.split(key, num_seeds)):
        for m in widths:
            W0, A_star = teacher_student(k, d, m_star, int(m), init)  # same teacher for every m
            W0s.append(pad_columns(W0, m_max))
            A_stars.append(A_star)
            floors.append(rank_m_risk_floor(A_star, int(m)))
    W0s, A_stars = jnp.stack(W0s), jnp.stack(A_stars)
    dt = min(suggested_dt(W @ W.T, A) for W, A in zip(W0s, A_stars))
    save_every = max(1, math.ceil(horizon / dt / num_saves))
    dt = horizon / (save_every * num_saves)
    res = jax.vmap(lambda W, A: gradient_flow(W, A, dt, save_every * num_saves, save_every))(W0s, A_stars)
    shape = (num_seeds, widths.size)
    return RecoverySweep(d, m_star, init, widths, np.asarray(res.times[0]),
                         np.asarray(res.risks).reshape(*shape, -1), np.asarray(floors).reshape(shape))


def orthonormal_reduced_flows(key, d: int, m: int, m_star: int, num_seeds: int, dt: float, num_steps: int,
                              save_every: int = 1, pad_to: int | None = None):
    """Exact finite-d flows for orthonormal teacher/student (``block_flow`` with the sampled
    principal angles), for ``num_seeds`` independent pairs: returns (times, R/d (S, T)).

    Equivalent to ``gradient_flow`` from ``teacher_student(..., init="orthonormal")`` at a cost
    of O(min(m, m*)) per step instead of O(d^2 m). ``pad_to`` pads the blocks with zero-weight
    ones so that several d share one compilation.
    """
    k = min(m, m_star)
    pad_to = k if pad_to is None else pad_to
    if pad_to < k:
        raise ValueError(f"pad_to={pad_to} is smaller than min(m, m_star)={k}")
    cos2 = []
    for kk in jax.random.split(key, num_seeds):
        k_t, k_s = jax.random.split(kk)
        c = principal_cos2(orthonormal_columns(k_s, d, m), orthonormal_columns(k_t, d, m_star))
        cos2.append(np.pad(c, (0, pad_to - k)))
    cos2 = jnp.asarray(np.stack(cos2), jnp.result_type(float))
    weights = jnp.broadcast_to(jnp.pad(jnp.full((k,), 1.0 / d), (0, pad_to - k)), cos2.shape)
    run = lambda c, w: block_flow(c, w, (m - k) / d, (m_star - k) / d, m_star / m, dt, num_steps, save_every, d=d)[1]
    risks = jax.vmap(run)(cos2, weights)
    return jnp.arange(num_steps // save_every + 1) * save_every * dt, risks
