r"""Infinite-width kernels in closed form: NNGP and NTK of fully connected networks, DEQ NNGP.

Conventions (those of ``overparam.models.MLPSpec`` in the ``ntk`` parameterization). A depth-L
network has L affine layers, widths (d, n_1, ..., n_{L-1}, d_out), a_0 = x and

    h_l = sigma_w a_{l-1} W_l / sqrt(n_{l-1}) + sigma_b b_l,   W_l, b_l ~ N(0, 1),
    a_l = phi(h_l) (l < L),   f(x) = h_L.

As n_1, ..., n_{L-1} -> infinity, each output is a Gaussian process with covariance
Sigma^L (the NNGP kernel) and gradient descent moves it with the tangent kernel Theta^L (the
NTK, summed over all parameters, per output as in ``overparam.kernels.empirical``):

    Sigma^1(x, x') = sigma_w^2 x.x'/d + sigma_b^2,            Theta^1 = Sigma^1,
    Sigma^l        = sigma_w^2 E[phi(u) phi(u')] + sigma_b^2,
    Theta^l        = Sigma^l + sigma_w^2 E[phi'(u) phi'(u')] Theta^{l-1},

with (u, u') ~ N(0, [[Sigma^{l-1}(x,x), Sigma^{l-1}(x,x')], [., Sigma^{l-1}(x',x')]]).
``dual_activation`` gives the two Gaussian expectations in closed form (derived in
``overparam.derivations.kernels``): arc-cosine kernels of degree 1 and 0 for ReLU, the
arcsine kernel for erf, the identity for the linear activation. The NNGP kernel is the same
in the standard parameterization; the NTK is not (there it depends on the widths).

Every function is batched over input pairs: x1 (N1, d), x2 (N2, d) -> (N1, N2), tracking the
two diagonals Sigma(x1, x1), Sigma(x2, x2) alongside. The dtype follows the inputs: run inside
``with jax.enable_x64(True):`` with float64 inputs for float64 kernels. ``depth`` and
``activation`` are static; the variances may be traced (a sweep compiles once).

``mlp_kernels(spec, x1, x2)`` gives both kernels of the network an ``MLPSpec`` describes (its depth,
activation and scales; hidden widths are what goes to infinity) and raises ValueError where this
module has no closed form (another activation, the ``mean_field`` parameterization, normalization).

The deep equilibrium model (DEQ) with one weight matrix shared by infinitely many layers,

    z = phi(h),   h = sigma_w W z / sqrt(n) + sigma_u U x / sqrt(d) + sigma_b b,

has the NNGP kernel Sigma* = T(Sigma*), the fixed point of the same layer map
T(K) = sigma_w^2 E_K[phi(u) phi(u')] + sigma_u^2 x.x'/d + sigma_b^2 (``deq_nngp``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from overparam.kernels.empirical import ntk_layerwise
from overparam.models import MLPSpec

ANALYTIC_ACTIVATIONS = ("relu", "erf", "linear")

# sup over covariances of E[phi'(u) phi'(u')] (see derivations.kernels.contraction_constants):
# the Lipschitz constant of the layer map on the kernel, per unit sigma_w^2.
DERIVATIVE_SUP = {"relu": 0.5, "erf": 4.0 / math.pi, "linear": 1.0}


def check_activation(activation: str) -> str:
    """Return ``activation`` if it has a closed-form dual, else ValueError listing the allowed ones."""
    if activation not in ANALYTIC_ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} has no closed-form kernel here; allowed: {', '.join(ANALYTIC_ACTIVATIONS)}"
        )
    return activation


def _check_pair(x1, x2):
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"x1 has shape {x1.shape} and x2 has shape {x2.shape}; expected (N1, d) and (N2, d)")
    if not jnp.issubdtype(x1.dtype, jnp.floating):
        x1, x2 = x1.astype(jnp.result_type(float)), x2.astype(jnp.result_type(float))
    return x1, x2


def _check_depth(depth) -> int:
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth={depth!r} must be a positive integer (the number of affine layers L)")
    return int(depth)


# ------------------------------------------------------------------- Gaussian expectations
def dual_activation(activation: str, k11, k22, k12):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for (u, v) ~ N(0, [[k11, k12], [k12, k22]]).

    Broadcasts over arrays. With cos(theta) = k12 / sqrt(k11 k22):

    * relu:   sqrt(k11 k22) (sin theta + (pi - theta) cos theta) / (2 pi),  (pi - theta) / (2 pi)
      (arc-cosine kernels of degree 1 and 0 of Cho & Saul, normalized as expectations);
    * erf:    (2/pi) arcsin(2 k12 / sqrt((1 + 2 k11)(1 + 2 k22))),
              (4/pi) / sqrt((1 + 2 k11)(1 + 2 k22) - 4 k12^2);
    * linear: k12, 1.

    A zero variance (k11 k22 = 0) gives cos(theta) = 0 (u or v is then 0 almost surely).
    """
    check_activation(activation)
    if activation == "linear":
        return k12, jnp.ones_like(k12)
    if activation == "erf":
        a = (1.0 + 2.0 * k11) * (1.0 + 2.0 * k22)
        s = jnp.clip(2.0 * k12 / jnp.sqrt(a), -1.0, 1.0)
        return (2.0 / jnp.pi) * jnp.arcsin(s), (4.0 / jnp.pi) / jnp.sqrt(a - 4.0 * k12**2)
    norm = jnp.sqrt(k11 * k22)
    positive = norm > 0
    cos = jnp.clip(jnp.where(positive, k12 / jnp.where(positive, norm, 1.0), 0.0), -1.0, 1.0)
    theta = jnp.arccos(cos)
    sin = jnp.sqrt(jnp.maximum(1.0 - cos**2, 0.0))
    kappa = norm * (sin + (jnp.pi - theta) * cos) / (2.0 * jnp.pi)
    return kappa, (jnp.pi - theta) / (2.0 * jnp.pi)


def _dual_pair(activation, q1, q2, k12):
    """Layer expectations on the two diagonals (N1,), (N2,) and the cross block (N1, N2)."""
    d1, dd1 = dual_activation(activation, q1, q1, q1)
    d2, dd2 = dual_activation(activation, q2, q2, q2)
    c, dc = dual_activation(activation, q1[:, None], q2[None, :], k12)
    return (d1, d2, c), (dd1, dd2, dc)


# ------------------------------------------------------------------------ fully connected
@partial(jax.jit, static_argnames=("depth", "activation", "same"))
def _fc_layers(x1, x2, depth, activation, sigma_w, sigma_b, same=False):
    d = x1.shape[1]
    sw2, sb2 = jnp.square(sigma_w), jnp.square(sigma_b)
    q1 = sw2 * jnp.sum(x1 * x1, axis=1) / d + sb2
    q2 = sw2 * jnp.sum(x2 * x2, axis=1) / d + sb2
    k = sw2 * (x1 @ x2.T) / d + sb2
    if same:
        # x2 = x1: the diagonal is exactly q (cos theta = 1). The matmul's own rounding would put it
        # at cos = 1 - eps, where arccos ~ sqrt(2 eps) costs ~1e-4 relative on the ReLU NTK in float32.
        k = k.at[jnp.diag_indices(k.shape[0])].set(q1)

    def layer(carry, _):
        q1, q2, k, theta = carry
        (e1, e2, e), (_, _, edot) = _dual_pair(activation, q1, q2, k)
        k_next = sw2 * e + sb2
        theta = k_next + sw2 * edot * theta
        return (sw2 * e1 + sb2, sw2 * e2 + sb2, k_next, theta), (k_next, theta)

    # a scan, not a Python loop: compile time does not grow with depth
    _, (ks, thetas) = jax.lax.scan(layer, (q1, q2, k, k), None, length=depth - 1)
    return jnp.concatenate([k[None], ks]), jnp.concatenate([k[None], thetas])


def fc_kernels(x1, x2=None, depth: int = 2, activation: str = "relu", sigma_w=1.0, sigma_b=0.0, *,
               per_layer: bool = False):
    """(NNGP, NTK) of a depth-L fully connected network, each (N1, N2); see the module docstring.

    depth: L, the number of affine layers (``len(widths) - 1`` of ``MLP``); depth=1 is the
    linear model sigma_w x W / sqrt(d) + sigma_b b. per_layer=True returns (L, N1, N2) stacks
    with Sigma^l, Theta^l for l = 1..L.
    """
    same = x2 is None
    x1, x2 = _check_pair(x1, x2)
    nngps, ntks = _fc_layers(x1, x2, _check_depth(depth), check_activation(activation),
                             jnp.asarray(sigma_w, x1.dtype), jnp.asarray(sigma_b, x1.dtype), same=same)
    return (nngps, ntks) if per_layer else (nngps[-1], ntks[-1])


def nngp_fc(x1, x2=None, depth: int = 2, activation: str = "relu", sigma_w=1.0, sigma_b=0.0):
    """NNGP kernel Sigma^L(x1, x2): (N1, N2) covariance of one output of the infinite-width network."""
    return fc_kernels(x1, x2, depth, activation, sigma_w, sigma_b)[0]


def ntk_fc(x1, x2=None, depth: int = 2, activation: str = "relu", sigma_w=1.0, sigma_b=0.0):
    """NTK Theta^L(x1, x2): (N1, N2), NTK parameterization, summed over all parameters (no 1/P)."""
    return fc_kernels(x1, x2, depth, activation, sigma_w, sigma_b)[1]


def _check_closed_form(spec: MLPSpec) -> MLPSpec:
    if not isinstance(spec, MLPSpec):
        raise ValueError(f"spec must be an overparam.models.MLPSpec, got {type(spec).__name__}")
    if spec.parameterization != "ntk":
        raise ValueError(
            f"parameterization={spec.parameterization!r} has no closed-form NTK here (the standard one depends on the"
            " widths; the mean-field NNGP is degenerate): use parameterization='ntk'"
        )
    if spec.normalization != "none":
        raise ValueError(f"normalization={spec.normalization!r} has no closed-form kernel here; use 'none'")
    check_activation(spec.activation)
    return spec


def mlp_kernels(spec: MLPSpec, x1, x2=None, *, per_layer: bool = False):
    """(NNGP, NTK) of the infinite-width limit of the network ``spec``, each (N1, N2) (per output).

    The limit takes every hidden width to infinity at the spec's depth, activation, sigma_w and
    sigma_b (``fc_kernels``). ValueError where no closed form exists here (see the module docstring).
    """
    spec = _check_closed_form(spec)
    sigma_b = spec.sigma_b if spec.use_bias else 0.0
    return fc_kernels(x1, x2, spec.num_layers, spec.activation, spec.sigma_w, sigma_b, per_layer=per_layer)


# ------------------------------------------------------------------- Monte Carlo (finite width)
@partial(jax.jit, static_argnames=("spec",))
def _mlp_kernels(keys, x1, x2, spec):
    def one(key):
        layers = ntk_layerwise(spec, spec.init(key), x1, x2, per_layer=True)
        return layers[-1], layers.sum(axis=0)

    return jax.lax.map(one, keys)


def mlp_kernels_monte_carlo(key, spec: MLPSpec, x1, x2=None, num_seeds: int = 4):
    """Empirical (NNGP, NTK) of ``num_seeds`` finite networks ``spec``: each (S, N1, N2).

    Per network: the NTK is the exact empirical tangent kernel (``overparam.kernels.empirical``)
    and the NNGP estimate is the last layer's share of it, sigma_w^2 <a_{L-1}(x), a_{L-1}(x')> /
    n_{L-1} + sigma_b^2: the covariance of the output given the hidden layers. Both converge to
    ``mlp_kernels(spec)`` with fluctuations O(1/sqrt(width)) per network. A single weight layer
    has no hidden layer (the kernels are then exact). Seed s uses ``spec.init(jax.random.split(key, S)[s])``.
    One compilation per (spec, shapes).
    """
    spec = _check_closed_form(spec)
    if spec.d_out != 1:
        raise ValueError(f"widths={spec.widths}: the Monte Carlo NNGP estimate is for one output (d_out = 1)")
    x1, x2 = _check_pair(x1, x2)
    if x1.shape[1] != spec.d_in:
        raise ValueError(f"x1 has shape {x1.shape}; the network expects (N, {spec.d_in})")
    return _mlp_kernels(jax.random.split(key, num_seeds), x1, x2, spec)


def fc_kernels_monte_carlo(key, x1, x2=None, depth: int = 2, width: int = 512, activation: str = "relu",
                           sigma_w=1.0, sigma_b=0.0, num_seeds: int = 4):
    """``mlp_kernels_monte_carlo`` for the ntk-parameterized network of ``depth`` layers, hidden width ``width``, one output."""
    depth = _check_depth(depth)
    x1, x2 = _check_pair(x1, x2)
    spec = MLPSpec((x1.shape[1],) + (int(width),) * (depth - 1) + (1,), activation, "ntk", sigma_w, sigma_b)
    return mlp_kernels_monte_carlo(key, spec, x1, x2, num_seeds)


# --------------------------------------------------------------------------------- DEQ
@dataclass(frozen=True)
class DEQInfo:
    """Outcome of the DEQ fixed-point iteration.

    iterations: layer maps applied; residual: max|T(K) - K| / max|K| at the returned K;
    converged: residual <= tol; contraction: sigma_w^2 sup E[phi' phi'], the Lipschitz
    constant of the layer map in each kernel entry (< 1 guarantees a unique fixed point);
    diag1 (N1,), diag2 (N2,): Sigma*(x, x) on each input set, for the readout kernel
    ``dual_activation(activation, diag1[:, None], diag2[None, :], kernel)[0]``.
    """

    iterations: int
    residual: float
    converged: bool
    contraction: float
    diag1: jax.Array
    diag2: jax.Array


def deq_contraction(activation: str, sigma_w) -> float:
    """sigma_w^2 sup_K E_K[phi'(u) phi'(u')]: 1/2 sigma_w^2 (relu), 4/pi sigma_w^2 (erf), sigma_w^2 (linear).

    The DEQ layer map is a contraction (unique fixed point, geometric convergence) when < 1:
    sigma_w^2 < 2 for relu, sigma_w^2 < pi/4 for erf (sufficient), sigma_w^2 < 1 for linear.
    """
    return float(sigma_w) ** 2 * DERIVATIVE_SUP[check_activation(activation)]


def _deq_map(activation, state, c1, c2, c12, sw2):
    q1, q2, k = state
    (e1, e2, e), _ = _dual_pair(activation, q1, q2, k)
    return sw2 * e1 + c1, sw2 * e2 + c2, sw2 * e + c12


def _deq_input_kernel(x1, x2, sigma_u, sigma_b):
    d = x1.shape[1]
    su2, sb2 = jnp.square(sigma_u), jnp.square(sigma_b)
    c1 = su2 * jnp.sum(x1 * x1, axis=1) / d + sb2
    c2 = su2 * jnp.sum(x2 * x2, axis=1) / d + sb2
    return c1, c2, su2 * (x1 @ x2.T) / d + sb2


def _residual(new, old):
    scale = jnp.maximum(jnp.max(jnp.abs(new[0])), jnp.max(jnp.abs(new[1])))
    diff = jnp.maximum(jnp.max(jnp.abs(new[0] - old[0])), jnp.max(jnp.abs(new[1] - old[1])))
    diff = jnp.maximum(diff, jnp.max(jnp.abs(new[2] - old[2])))
    return jnp.where(jnp.isfinite(diff), diff / scale, jnp.inf)


@partial(jax.jit, static_argnames=("activation", "max_iter"))
def _deq_solve(x1, x2, sigma_w, sigma_u, sigma_b, tol, activation, max_iter):
    c1, c2, c12 = _deq_input_kernel(x1, x2, sigma_u, sigma_b)
    sw2 = jnp.square(sigma_w)
    state0 = (c1, c2, c12)  # Sigma^1: the first layer sees z^0 = 0

    def cond(carry):
        _, it, res = carry
        return (it < max_iter) & (res > tol)

    def body(carry):
        state, it, _ = carry
        new = _deq_map(activation, state, c1, c2, c12, sw2)
        return new, it + 1, _residual(new, state)

    state, it, res = jax.lax.while_loop(cond, body, (state0, jnp.array(1), jnp.array(jnp.inf, x1.dtype)))
    return state, it, res


def deq_nngp(x1, x2=None, sigma_w=1.0, sigma_u=1.0, sigma_b=0.0, activation: str = "relu",
             tol: float = 1e-6, max_iter: int = 1000):
    """DEQ NNGP kernel Sigma*(x1, x2) (N1, N2) by fixed-point iteration, and a ``DEQInfo``.

    Iterates K <- T(K) = sigma_w^2 E_K[phi(u) phi(u')] + sigma_u^2 x.x'/d + sigma_b^2 from
    Sigma^1 = T(0) (the first layer, z^0 = 0) until max|T(K) - K| <= tol max|K| or
    ``max_iter`` maps. Sigma* is the covariance of the equilibrium pre-activations h* of the
    DEQ of ``overparam.experiments.deep_equilibrium`` at infinite width (per unit, (1/n) h*(x).h*(x') -> Sigma*).
    Does not raise when the iteration fails to converge: check ``info.converged`` (it fails
    for relu when sigma_w^2 >= 2, where the diagonal grows without bound).
    """
    x1, x2 = _check_pair(x1, x2)
    check_activation(activation)
    if int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter={max_iter!r} must be a positive integer")
    dt = x1.dtype
    (q1, q2, k), it, res = _deq_solve(x1, x2, jnp.asarray(sigma_w, dt), jnp.asarray(sigma_u, dt),
                                      jnp.asarray(sigma_b, dt), jnp.asarray(tol, dt), activation, int(max_iter))
    res = float(res)
    info = DEQInfo(int(it), res, bool(res <= tol), deq_contraction(activation, sigma_w), q1, q2)
    return k, info


@partial(jax.jit, static_argnames=("activation", "num_layers"))
def _deq_layers(x1, x2, sigma_w, sigma_u, sigma_b, activation, num_layers):
    c1, c2, c12 = _deq_input_kernel(x1, x2, sigma_u, sigma_b)
    sw2 = jnp.square(sigma_w)

    def step(state, _):
        new = _deq_map(activation, state, c1, c2, c12, sw2)
        return new, new[2]

    _, ks = jax.lax.scan(step, (c1, c2, c12), None, length=num_layers - 1)
    return jnp.concatenate([c12[None], ks])


def deq_nngp_layers(x1, x2=None, num_layers: int = 10, sigma_w=1.0, sigma_u=1.0, sigma_b=0.0,
                    activation: str = "relu"):
    """Sigma^1..Sigma^L (L, N1, N2): the NNGP of the weight-tied network unrolled for L layers.

    At infinite width weight tying does not change the forward kernel, so Sigma^l is the
    l-th iterate of the DEQ layer map from z^0 = 0: the width-first, then depth, limit.
    """
    x1, x2 = _check_pair(x1, x2)
    dt = x1.dtype
    return _deq_layers(x1, x2, jnp.asarray(sigma_w, dt), jnp.asarray(sigma_u, dt), jnp.asarray(sigma_b, dt),
                       check_activation(activation), _check_depth(num_layers))


# ----------------------------------------------------------------- strict positive definiteness
def dual_series_coefficients(activation: str, num_terms: int) -> np.ndarray:
    """Power-series coefficients c_k, k = 0..num_terms-1, of the normalized dual kernel.

    relu: E[relu(u) relu(v)] = sqrt(k11 k22) sum_k c_k rho^k, rho = cos(theta), with
    c_0 = 1/(2 pi), c_1 = 1/4, c_{2m+2} = a_m / ((2m+2) 2 pi), odd c_k = 0 for k >= 3;
    erf: arcsin(t) = sum_k c_k t^k, c_{2m+1} = a_m, even c_k = 0;
    with a_m = (2m)! / (4^m (m!)^2 (2m+1)) the arcsine coefficients. All c_k >= 0 and
    infinitely many are > 0 (derived and checked in ``overparam.derivations.kernels``).
    """
    m = np.arange(num_terms)
    # a_m by the ratio a_{m+1}/a_m = (2m+1)^2 / ((2m+2)(2m+3)), a_0 = 1: stable for large m
    ratios = (2 * m[:-1] + 1) ** 2 / ((2 * m[:-1] + 2) * (2 * m[:-1] + 3))
    a = np.concatenate([[1.0], np.cumprod(ratios)])
    c = np.zeros(num_terms)
    if activation == "relu":
        c[0] = 1.0 / (2.0 * np.pi)
        if num_terms > 1:
            c[1] = 0.25
        even = np.arange(2, num_terms, 2)
        mm = (even - 2) // 2
        c[even] = a[mm] / ((2 * mm + 2) * 2.0 * np.pi)
        return c
    if activation == "erf":
        odd = np.arange(1, num_terms, 2)
        c[odd] = a[(odd - 1) // 2]
        return c
    raise ValueError(f"activation={activation!r}: series known for 'relu' and 'erf'")


def deq_min_eig_lower_bound(kernel, sigma_w, activation: str = "relu", num_terms: int = 4000) -> float:
    r"""A certified lower bound on lambda_min(Sigma*) for a DEQ NNGP kernel matrix (N, N).

    Sigma* = sigma_w^2 E[phi(u) phi(u)^T] + C with C (the input term) PSD, and by the dual
    series E[phi phi^T] = sum_k c_k D_k P^{ok} D_k with P the correlation matrix of Sigma*,
    P^{ok} its entrywise powers (PSD by the Schur product theorem), D_k diagonal. Gershgorin
    gives lambda_min(P^{ok}) >= 1 - max_i sum_{j != i} |P_ij|^k, positive for large k
    whenever all |P_ij| < 1 (distinct, non-parallel augmented inputs), so

        relu: lambda_min >= sigma_w^2 min_i q_i sum_k c_k max(0, 1 - r_k),
        erf:  lambda_min >= sigma_w^2 (2/pi) sum_k c_k s_min^{2k} max(0, 1 - r_k),

    q_i = Sigma*_ii, s_i^2 = 2 q_i / (1 + 2 q_i), r_k = max_i sum_{j != i} |P_ij|^k. Computed
    in float64 numpy. Exact for a fixed point (and very nearly so at tolerance ~1e-10).
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel has shape {kernel.shape}; expected a square (N, N) matrix")
    q = np.diag(kernel)
    p = kernel / np.sqrt(np.outer(q, q))
    off = np.abs(p[~np.eye(len(q), dtype=bool)]).reshape(len(q), len(q) - 1)
    c = dual_series_coefficients(activation, num_terms)
    ks = np.arange(num_terms)
    log_off = np.log(np.maximum(off, 1e-300))
    r = np.array([np.max(np.sum(np.exp(k * log_off), axis=1)) if k > 0 else np.inf for k in ks])
    gersh = np.maximum(0.0, 1.0 - r)
    if activation == "relu":
        return float(sigma_w**2 * q.min() * np.sum(c * gersh))
    s2 = 2.0 * q.min() / (1.0 + 2.0 * q.min())
    return float(sigma_w**2 * (2.0 / np.pi) * np.sum(c * s2**ks * gersh))
