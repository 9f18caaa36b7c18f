r"""Large learning rates: the uv model, its exact dynamics, and the three phases of a GD run.

Loss normalization (every learning-rate threshold here is relative to it): the half mean squared
error of ``overparam.training.mse_loss``, L = 1/(2N) sum_n (f(x_n) - y_n)^2; for one example
(N = 1) this is L = 1/2 (f - y)^2. The *loss-normalized kernel* is lambda = lambda_max(Theta)/N,
with Theta = J J^T the (N, N) empirical NTK Gram matrix (``overparam.kernels.empirical`` convention: summed
over parameters). Then the linearized model is GD-stable iff lr < 2/lambda_0 (lambda_0 at
initialization), and learning rates are quoted as multiples of that threshold, or as
a_0 = lr * lambda_0 (so a_0 = 2 is the linear threshold).

The uv model: f(u, v; x) = x u.v / sqrt(m) with u, v in R^m (``uv_apply``), initialized
u, v ~ N(0, I_m). On one example (x, y) its GD dynamics close on the residual r = f - y and the
kernel lambda = (|u|^2 + |v|^2) x^2 / m (derived in ``overparam.derivations.catapult``):

    r'      = r (1 - lr lambda) + lr^2 x^2 r^2 (r + y) / m
    lambda' = lambda + lr x^2 r (lr lambda r - 4 (r + y)) / m

For m -> infinity the outcome depends on a_0 = lr lambda_0 only: monotone convergence for
a_0 < 2, a catapult (the loss grows, the kernel shrinks until lr lambda < 2, then the loss
converges) for 2 < a_0 < 4, divergence for a_0 > 4.

Phases of one loss trajectory L_0, ..., L_T (``classify_phase``), with integer codes:
``DIVERGED`` (2) if it is non-finite anywhere, or L_T > L_0 (the run did not come down within
the budget); else ``CATAPULT`` (1) if max_t L_t > rise * L_0 (default rise = 1.1: a lazy run
under lr < 2/lambda_0 never rises, and rounding or the O(1/m) drift of the kernel does not
produce a 10% rise); else ``MONOTONE`` (0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from overparam.kernels.empirical import ntk_top_eigenvalue
from overparam.taylor import linearize, quadratize
from overparam.training import full_batch_loss, mse_loss, train_gd

MONOTONE, CATAPULT, DIVERGED = 0, 1, 2
PHASES = ("monotone", "catapult", "diverged")


# ------------------------------------------------------------------------------ the uv model


def uv_init(key, m: int, dtype=None):
    """Params {"u": (m,), "v": (m,)} with i.i.d. N(0, 1) entries (the uv model at initialization)."""
    if int(m) != m or m < 1:
        raise ValueError(f"m={m!r} must be a positive integer width")
    ku, kv = jax.random.split(key)
    dtype = dtype or jnp.result_type(float)
    return {"u": jax.random.normal(ku, (m,), dtype), "v": jax.random.normal(kv, (m,), dtype)}


def uv_apply(params, x):
    """uv model output f = x (u . v) / sqrt(m): x (N, 1) -> (N, 1). Exactly quadratic in the params."""
    u, v = params["u"], params["v"]
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != 1:
        raise ValueError(f"x has shape {x.shape}; the uv model takes scalar inputs, shape (N, 1)")
    return x * (jnp.dot(u, v) / jnp.sqrt(u.shape[0]))


def uv_kernel(params, x):
    """Loss-normalized kernel of the uv model on one example x (shape (1, 1)): (|u|^2 + |v|^2) x^2 / m (scalar).

    The closed form (derived in ``overparam.derivations.catapult``) of
    ``overparam.kernels.empirical.ntk_top_eigenvalue(uv_apply, params, x)``.
    """
    u, v = params["u"], params["v"]
    x = jnp.asarray(x).reshape(())
    return (jnp.sum(u**2) + jnp.sum(v**2)) * x**2 / u.shape[0]


def uv_step(r, lam, lr, x, y, m):
    """Exact one-step GD map of the uv model under L = 1/2 (f - y)^2: (r, lambda) -> (r', lambda').

    All arguments are scalars (or broadcastable arrays); m is the width (may be a traced float).
    """
    r_next = r * (1.0 - lr * lam) + lr**2 * x**2 * r**2 * (r + y) / m
    lam_next = lam + lr * x**2 * r * (lr * lam * r - 4.0 * (r + y)) / m
    return r_next, lam_next


@partial(jax.tree_util.register_dataclass, data_fields=["initial", "peak", "final", "kernel_final"], meta_fields=[])
@dataclass(frozen=True)
class PhaseSummary:
    """Summary of loss trajectories (arrays of any common shape): what ``classify_phase`` needs.

    initial: L_0; peak: max_t L_t (inf if any is non-finite); final: L_T; kernel_final: the
    loss-normalized kernel at the end (NaN where not tracked or diverged).
    """

    initial: Any
    peak: Any
    final: Any
    kernel_final: Any


def classify_phase(initial, peak, final, rise: float = 1.1):
    """Phase codes (MONOTONE 0, CATAPULT 1, DIVERGED 2) from loss summaries (same shapes).

    DIVERGED: peak or final not finite, or final > initial; CATAPULT: peak > rise * initial;
    MONOTONE: otherwise. See the module docstring for why rise = 1.1.
    """
    if not rise >= 1.0:
        raise ValueError(f"rise={rise!r} must be >= 1 (a factor above the initial loss)")
    initial, peak, final = jnp.asarray(initial), jnp.asarray(peak), jnp.asarray(final)
    diverged = ~jnp.isfinite(peak) | ~jnp.isfinite(final) | (final > initial)
    catapult = peak > rise * initial
    return jnp.where(diverged, DIVERGED, jnp.where(catapult, CATAPULT, MONOTONE)).astype(jnp.int32)


def classify_losses(losses, rise: float = 1.1):
    """Phase codes of loss trajectories losses (..., T+1) (last axis = steps 0..T)."""
    losses = jnp.asarray(losses)
    peak = jnp.where(jnp.all(jnp.isfinite(losses), axis=-1), jnp.max(losses, axis=-1), jnp.inf)
    return classify_phase(losses[..., 0], peak, losses[..., -1], rise)


def _uv_iterate(r0, lam0, lr, x, y, m, num_steps: int, divergence_factor: float, record: bool):
    """Shared scan of ``uv_step`` with freezing at divergence; records trajectories or only a summary.

    Not a training loop: it iterates the exact two-dimensional map (r, lambda) -> (r', lambda') of
    the derivation (no parameters, no gradient, no optimizer), at O(1) cost per step whatever the
    width, so that widths can be traced. That this map is GD on (u, v) is checked against
    ``overparam.training.train_gd`` in the tests.
    """
    loss0 = 0.5 * r0**2
    threshold = divergence_factor * (1.0 + loss0)

    def step(carry, _):
        r, lam, bad, peak = carry
        loss = 0.5 * r**2
        bad = bad | ~jnp.isfinite(loss) | (loss > threshold)
        out = (jnp.where(bad, jnp.inf, loss), jnp.where(bad, jnp.nan, lam)) if record else None
        r_new, lam_new = uv_step(r, lam, lr, x, y, m)
        r = jnp.where(bad, r, r_new)
        lam = jnp.where(bad, lam, lam_new)
        peak = jnp.where(bad, jnp.inf, jnp.maximum(peak, loss))
        return (r, lam, bad, peak), out

    carry0 = (r0, lam0, jnp.array(False), loss0)
    (r, lam, bad, peak), out = jax.lax.scan(step, carry0, None, length=num_steps)
    loss_t = jnp.where(bad | ~jnp.isfinite(r) | (0.5 * r**2 > threshold), jnp.inf, 0.5 * r**2)
    lam_t = jnp.where(jnp.isfinite(loss_t), lam, jnp.nan)
    peak = jnp.where(jnp.isfinite(loss_t), jnp.maximum(peak, loss_t), jnp.inf)
    return out, PhaseSummary(loss0, peak, loss_t, lam_t)


@partial(jax.jit, static_argnames=("num_steps",))
def uv_map_run(r0, lam0, lr, x, y, m, num_steps: int, divergence_factor: float = 1e8):
    """Iterate ``uv_step`` num_steps times: (losses (T+1,), kernels (T+1,)), L = r^2 / 2.

    Once the loss is non-finite or above divergence_factor * (1 + L_0), the state freezes and
    later entries are inf (losses) / NaN (kernels). All inputs may be traced: ``jax.vmap``
    over learning rates, widths and initial conditions compiles once.
    """
    (losses, lams), last = _uv_iterate(r0, lam0, lr, x, y, m, num_steps, divergence_factor, record=True)
    return jnp.append(losses, last.final), jnp.append(lams, last.kernel_final)


@partial(jax.jit, static_argnames=("num_steps",))
def uv_map_summary(r0, lam0, lr, x, y, m, num_steps: int, divergence_factor: float = 1e8) -> "PhaseSummary":
    """Like ``uv_map_run`` but keeps only the ``PhaseSummary`` (no trajectory: cheap to vmap widely)."""
    return _uv_iterate(r0, lam0, lr, x, y, m, num_steps, divergence_factor, record=False)[1]


def uv_init_invariants(key, m):
    """(U, V, P) = (|u|^2, |v|^2, u.v) of ``uv_init(key', m)`` sampled exactly in distribution, m traced.

    The Gram matrix of [u v] (m, 2) is Wishart(m, I_2); by the Bartlett decomposition it is
    A A^T with A = [[c1, 0], [n, c2]], c1^2 ~ chi^2_m, c2^2 ~ chi^2_{m-1}, n ~ N(0, 1). Costs O(1)
    in m, so widths can be a traced array (``jax.vmap`` over widths and seeds compiles once).
    For m = 1, c2 = 0 (u and v are parallel). Not the same draws as ``uv_init`` with the same key.
    """
    k_gamma, k_normal = jax.random.split(key)
    m = jnp.asarray(m, dtype=jnp.result_type(float))
    # one gamma call for both chi-squares (each call compiles a rejection loop)
    chi_sq = 2.0 * jax.random.gamma(k_gamma, jnp.stack([m, jnp.maximum(m - 1.0, 1.0)]) / 2.0)
    c1_sq, c2_sq = chi_sq[0], jnp.where(m > 1, chi_sq[1], 0.0)
    n = jax.random.normal(k_normal, dtype=c1_sq.dtype)
    return c1_sq, n**2 + c2_sq, jnp.sqrt(c1_sq) * n


@partial(jax.jit, static_argnames=("num_seeds",))
def _uv_initial(key, widths, num_seeds, x, y):
    def one(w, s):
        m = widths[w]
        U, V, P = uv_init_invariants(jax.random.fold_in(jax.random.fold_in(key, w), s), m)
        return x * P / jnp.sqrt(m) - y, (U + V) * x**2 / m

    ws, ss = jnp.meshgrid(jnp.arange(widths.shape[0]), jnp.arange(num_seeds), indexing="ij")
    return jax.vmap(jax.vmap(one))(ws, ss)


def uv_initial_state(key, widths, num_seeds: int, x: float = 1.0, y: float = 1.0):
    """(r0, lam0, m) arrays of shape (W, S) at initialization of uv models of each width.

    r0 = x P / sqrt(m) - y and lam0 = (U + V) x^2 / m from ``uv_init_invariants``; seed s of
    width widths[w] uses ``jax.random.fold_in(jax.random.fold_in(key, w), s)``.
    """
    widths_arr = jnp.asarray(widths, dtype=jnp.result_type(float))
    if widths_arr.ndim != 1 or bool(jnp.any(widths_arr < 1)):
        raise ValueError(f"widths={widths!r} must be a 1-D sequence of positive integers")
    r0, lam0 = _uv_initial(key, widths_arr, num_seeds, x, y)
    return r0, lam0, jnp.broadcast_to(widths_arr[:, None], r0.shape)


@dataclass(frozen=True)
class UVPhaseSweep:
    """Outcome grid of the uv model: axes (W widths, S seeds, A values of a0 = lr * lambda_0).

    phases (W, S, A) int codes; peak_ratio, final_loss (W, S, A); final_a = lr * lambda_T (NaN if diverged).
    """

    widths: np.ndarray
    a0s: np.ndarray
    phases: np.ndarray
    peak_ratio: np.ndarray
    final_loss: np.ndarray
    final_a: np.ndarray


@partial(jax.jit, static_argnames=("num_steps", "rise"))
def _uv_grid(r0, lam0, m, a0s, x, y, num_steps, rise):
    def one(r0, lam0, m, a0):
        s = uv_map_summary(r0, lam0, a0 / lam0, x, y, m, num_steps)
        return classify_phase(s.initial, s.peak, s.final, rise), s.peak / s.initial, s.final, a0 / lam0 * s.kernel_final

    over_a = jax.vmap(one, in_axes=(None, None, None, 0))
    over_runs = jax.vmap(jax.vmap(over_a, in_axes=(0, 0, 0, None)), in_axes=(0, 0, 0, None))
    return over_runs(r0, lam0, m, a0s)


def uv_phase_sweep(key, widths, a0s, num_seeds: int, num_steps: int, x: float = 1.0, y: float = 1.0,
                   rise: float = 1.1) -> UVPhaseSweep:
    """Phase of the uv model for every (width, seed, a0) with the exact map, in one vmapped scan.

    lr = a0 / lambda_0 per initialization, so a0 is exact for each run (not only on average).
    """
    if num_seeds < 1 or num_steps < 1:
        raise ValueError(f"num_seeds={num_seeds} and num_steps={num_steps} must be >= 1")
    r0, lam0, m_arr = uv_initial_state(key, widths, num_seeds, x, y)
    a0s_arr = jnp.asarray(a0s, dtype=jnp.result_type(float))
    grid = _uv_grid(r0, lam0, m_arr, a0s_arr, x, y, num_steps, float(rise))
    phases, peak_ratio, final_loss, final_a = (np.asarray(g) for g in grid)
    return UVPhaseSweep(np.asarray(widths), np.asarray(a0s), phases, peak_ratio, final_loss, final_a)


def uv_expected_phase(a0):
    """Phase predicted for m -> infinity: MONOTONE for a0 < 2, CATAPULT for 2 < a0 < 4, DIVERGED above 4."""
    a0 = np.asarray(a0)
    return np.where(a0 < 2, MONOTONE, np.where(a0 < 4, CATAPULT, DIVERGED))


def misclassified_fraction(a0s, phases, boundaries=(2.0, 4.0), window=(0.1, 0.5)):
    """Fraction of runs whose phase differs from ``uv_expected_phase`` near the boundaries.

    a0s (A,); phases (..., A). Only a0 with lo <= |a0 - b| <= hi for some boundary b count.
    Returns an array of shape phases.shape[:-2] (the last two axes, seeds and a0, are pooled),
    or a scalar for phases (S, A).
    """
    lo, hi = window
    a0s = np.asarray(a0s)
    dist = np.min(np.abs(a0s[:, None] - np.asarray(boundaries)[None, :]), axis=1)
    near = (dist >= lo) & (dist <= hi)
    if not near.any():
        raise ValueError(f"no a0 in {a0s.min()}..{a0s.max()} lies within window={window} of boundaries={boundaries}")
    wrong = np.asarray(phases)[..., near] != uv_expected_phase(a0s[near])
    return wrong.mean(axis=(-1, -2))


# ------------------------------------------------------------------- any model: lr sweeps

TAYLOR_ORDERS = (None, 1, 2)


def taylor_model(apply_fn, params0, order):
    """apply_fn itself (order None), its linearization (1) or its NQM (2) around params0."""
    if order not in TAYLOR_ORDERS:
        raise ValueError(f"order={order!r} is not allowed; allowed: {TAYLOR_ORDERS}")
    if order is None:
        return apply_fn
    return linearize(apply_fn, params0) if order == 1 else quadratize(apply_fn, params0)


@partial(jax.tree_util.register_dataclass,
         data_fields=["lrs", "lam0", "losses", "kernels", "kernel_final", "test_loss", "params"],
         meta_fields=["kernel_steps"])
@dataclass(frozen=True)
class LRSweep:
    """GD runs of one model at E learning rates (one vmapped scan), possibly for S inits.

    Shapes for one init (``gd_lr_sweep``); ``init_lr_sweep`` adds a leading axis S to each.
    lrs (E,); lam0 (): loss-normalized kernel at init; losses (E, T+1): training loss at steps
    0..T (inf from divergence on); kernel_steps (R,) (a tuple, () if not tracked) and kernels
    (E, R): loss-normalized kernel lambda_t at those steps; kernel_final (E,): lambda_T (NaN if
    diverged); test_loss (E,): ``mse_loss`` on the test set (NaN without one, inf if diverged);
    params: final params, leaves with leading axis E. ``phases(rise)`` classifies the runs.
    """

    lrs: Any
    lam0: Any
    losses: Any
    kernels: Any
    kernel_final: Any
    test_loss: Any
    params: Any
    kernel_steps: tuple = ()

    def phases(self, rise: float = 1.1):
        """Phase codes, shape of lrs (see ``classify_phase``)."""
        return np.asarray(classify_losses(self.losses, rise))


def _sweep_one_init(apply_fn, order, params0, x, y, lrs, x_test, y_test, num_steps, kernel_every, divergence_factor):
    """Untransformed body: one init, E learning rates (vmapped), Taylor model built from params0."""
    model = taylor_model(apply_fn, params0, order)
    loss_fn = full_batch_loss(model, x, y, mse_loss)
    loss0 = loss_fn(params0)
    kernel_fn = lambda p: ntk_top_eigenvalue(model, p, x)

    def run(lr):
        res = train_gd(loss_fn, params0, lr, num_steps, record_every=kernel_every or num_steps,
                       divergence_threshold=divergence_factor * (1.0 + loss0),
                       observe=kernel_fn if kernel_every else None)
        losses = jnp.append(res.step_losses, res.final_loss)
        if kernel_every:
            kernels = jnp.where(jnp.isfinite(res.losses), res.records, jnp.nan)
        else:
            kernels = jnp.zeros((0,), losses.dtype)
        return losses, kernels, res.diverged, res.params

    losses, kernels, diverged, params = jax.vmap(run)(lrs)

    # One run at a time (lax.map), not vmapped: the Jacobian and the test-set forward pass of all
    # E runs at once would need E times the memory.
    def evaluate(p):
        test = jnp.full((), jnp.nan) if x_test is None else mse_loss(model(p, x_test), y_test)
        return kernel_fn(p), test

    k_final, test = jax.lax.map(evaluate, params)
    k_final = jnp.where(diverged, jnp.nan, k_final)
    test = jnp.where(diverged, jnp.inf, test)
    return LRSweep(lrs, ntk_top_eigenvalue(apply_fn, params0, x), losses, kernels, k_final, test, params,
                   tuple(range(0, num_steps, kernel_every)) if kernel_every else ())


_STATIC = ("apply_fn", "order", "num_steps", "kernel_every")


@partial(jax.jit, static_argnames=_STATIC)
def _sweep_absolute(apply_fn, order, params0, x, y, lrs, x_test, y_test, num_steps, kernel_every, divergence_factor):
    return _sweep_one_init(apply_fn, order, params0, x, y, lrs, x_test, y_test, num_steps, kernel_every,
                           divergence_factor)


@partial(jax.jit, static_argnames=_STATIC)
def _sweep_relative(apply_fn, order, params0, x, y, a0s, x_test, y_test, num_steps, kernel_every, divergence_factor):
    def one(p0):
        lrs = a0s / ntk_top_eigenvalue(apply_fn, p0, x)
        return _sweep_one_init(apply_fn, order, p0, x, y, lrs, x_test, y_test, num_steps, kernel_every,
                               divergence_factor)

    return jax.vmap(one)(params0)


def _check_sweep_args(num_steps, kernel_every, order):
    if num_steps < 1 or kernel_every < 0 or (kernel_every and num_steps % kernel_every):
        raise ValueError(f"kernel_every={kernel_every} must be 0 or a divisor of num_steps={num_steps} (>= 1)")
    if order not in TAYLOR_ORDERS:
        raise ValueError(f"order={order!r} is not allowed; allowed: {TAYLOR_ORDERS}")


def gd_lr_sweep(apply_fn, params0, x, y, lrs, num_steps: int, *, order=None, kernel_every: int = 0,
                x_test=None, y_test=None, divergence_factor: float = 1e6) -> LRSweep:
    """Full-batch GD on mse_loss for every lr in ``lrs`` (E,): ``train_gd`` vmapped over a traced lr array.

    Trains ``taylor_model(apply_fn, params0, order)`` (the model itself for order=None).
    x (N, d), y (N, 1); optional test set for ``test_loss``. kernel_every > 0 records the
    loss-normalized kernel every that many steps (a Jacobian per record). A run stops, marked
    diverged, when its loss exceeds divergence_factor * (1 + L_0). apply_fn is static (hashed by
    identity): calls with the same apply_fn, order and shapes reuse one compilation.
    """
    _check_sweep_args(num_steps, kernel_every, order)
    lrs = jnp.asarray(lrs, dtype=jnp.result_type(float))
    return _sweep_absolute(apply_fn, order, params0, x, y, lrs, x_test, y_test, num_steps, kernel_every,
                           divergence_factor)


def init_lr_sweep(apply_fn, params0, x, y, a0s, num_steps: int, *, order=None, kernel_every: int = 0,
                  x_test=None, y_test=None, divergence_factor: float = 1e6) -> LRSweep:
    """Like ``gd_lr_sweep`` for S inits at once, with lr = a0 / lambda_0 per init (one compile).

    params0: leaves with a leading axis S (e.g. ``overparam.models.MLPSpec.init_ensemble``);
    a0s (E,): learning rates in units of 1/lambda_0 (a0 = 2 is the linear threshold 2/lambda_0),
    lambda_0 the loss-normalized kernel of apply_fn at each init. Every field of the result
    has a leading axis S. The Taylor models (order 1, 2) are built around each init inside
    the vmapped function.
    """
    _check_sweep_args(num_steps, kernel_every, order)
    a0s = jnp.asarray(a0s, dtype=jnp.result_type(float))
    return _sweep_relative(apply_fn, order, params0, x, y, a0s, x_test, y_test, num_steps, kernel_every,
                           divergence_factor)


def max_converging_multiple(multiples, phases):
    """Largest c in the sorted grid ``multiples`` (E,) with no DIVERGED run at any c' <= c.

    Returns NaN if the first run already diverged; the largest multiple if none diverged
    (then the true maximum lies beyond the grid).
    """
    multiples, phases = np.asarray(multiples), np.asarray(phases)
    order = np.argsort(multiples)
    multiples, phases = multiples[order], phases[order]
    bad = np.nonzero(phases == DIVERGED)[0]
    if bad.size == 0:
        return float(multiples[-1])
    return float(multiples[bad[0] - 1]) if bad[0] > 0 else float("nan")


# ------------------------------------------------- the network and its Taylor models, together

TAYLOR_FAMILY = {"network": None, "quadratic": 2, "linear": 1}


def taylor_family_sweep(apply_fn, params0, x, y, x_test, y_test, multiples, num_steps: int) -> dict:
    """{name: LRSweep} for the network, its NQM and its linearization at lr = c * 2/lambda_0.

    params0: S inits (leading axis S); multiples (E,): c, the learning rate in units of the
    linear threshold 2/lambda_0 (lambda_0 per init; the three models share it at init).
    Three compiles in all (one ``init_lr_sweep`` per model), each vmapped over inits and c.
    """
    a0s = 2.0 * jnp.asarray(multiples, dtype=jnp.result_type(float))
    return {name: init_lr_sweep(apply_fn, params0, x, y, a0s, num_steps, order=order, x_test=x_test, y_test=y_test)
            for name, order in TAYLOR_FAMILY.items()}


@dataclass(frozen=True)
class PhaseGrid:
    """GD outcomes over widths: phases and final lr * lambda_T, both (W, S, A); sweeps: one LRSweep per width."""

    phases: np.ndarray
    final_a: np.ndarray
    sweeps: list


def model_phase_grid(make_model, widths, x, y, a0s, num_steps: int, *, order=None, kernel_every: int = 0,
                     rise: float = 1.1) -> PhaseGrid:
    """GD at lr = a0 / lambda_0 for every width, init (S) and a0 (A): one ``init_lr_sweep`` per width.

    make_model(width) -> (apply_fn, params0 with a leading axis S), apply_fn(params, x) -> (N, 1);
    x (N, d), y (N, 1); a0s (A,). Returns phases and lr * lambda_T of shape (W, S, A).
    """
    sweeps = []
    for width in widths:
        apply_fn, params0 = make_model(width)
        sweeps.append(init_lr_sweep(apply_fn, params0, x, y, a0s, num_steps, order=order, kernel_every=kernel_every))
    phases = np.stack([sw.phases(rise) for sw in sweeps])
    final_a = np.stack([np.asarray(sw.lrs * sw.kernel_final) for sw in sweeps])
    return PhaseGrid(phases, final_a, sweeps)


def majority_phase(phases, axis=-2):
    """The most frequent phase code along ``axis`` (ties go to the larger code)."""
    phases = np.asarray(phases)
    counts = np.stack([(phases == c).sum(axis=axis) for c in (MONOTONE, CATAPULT, DIVERGED)])
    return (len(PHASES) - 1 - np.argmax(counts[::-1], axis=0)).astype(np.int32)


# ------------------------------------------- the a0 = 4 boundary of the uv model at finite width


def uv_upper_boundary(a0s, widths, r0, lam0, x: float = 1.0, y: float = 1.0, num_steps: int = 3000,
                      edge: str = "first"):
    """Where the uv map starts to diverge in the sorted grid ``a0s`` (A,), per width: array (W,).

    widths (W,); r0, lam0: the initial residual and kernel, scalars shared by all widths or
    arrays (W,) (one initialization per entry); lr = a0 / lam0. edge="first": the smallest
    diverging a0 of the grid; edge="contiguous": the lower end of the run of diverging a0 that
    ends at the top of the grid (isolated diverging a0 below it are ignored: at small widths
    the uv map has such islands well inside the catapult range). NaN where there is none.
    With y = 0 the identity 4 - a' = (4 - a)(1 + z) puts the boundary exactly at 4 at every width.
    """
    a0s = np.asarray(a0s, dtype=float)
    if a0s.ndim != 1 or a0s.size < 2 or np.any(np.diff(a0s) <= 0):
        raise ValueError(f"a0s must be a sorted 1-D grid of at least two values, got shape {a0s.shape}")
    if edge not in ("first", "contiguous"):
        raise ValueError(f"edge={edge!r} is not allowed; allowed: 'first', 'contiguous'")
    widths = jnp.asarray(widths, dtype=jnp.result_type(float))
    r0, lam0 = (jnp.broadcast_to(jnp.asarray(v, dtype=widths.dtype), widths.shape) for v in (r0, lam0))
    if bool(jnp.any(lam0 <= 0)):
        raise ValueError(f"lam0={lam0!r} must be positive")
    run = jax.vmap(jax.vmap(lambda a0, r, l, m: uv_map_summary(r, l, a0 / l, x, y, m, num_steps),
                            in_axes=(0, None, None, None)), in_axes=(None, 0, 0, 0))
    s = run(jnp.asarray(a0s), r0, lam0, widths)
    diverged = np.asarray(classify_phase(s.initial, s.peak, s.final)) == DIVERGED
    if edge == "first":
        first = np.argmax(diverged, axis=1)
        return np.where(diverged.any(axis=1), a0s[first], np.nan)
    # index after the last converging a0: the run of diverging a0 up to the end of the grid starts there
    last_ok = a0s.size - 1 - np.argmax(~diverged[:, ::-1], axis=1)
    start = np.where((~diverged).any(axis=1), last_ok + 1, 0)
    return np.where(diverged[:, -1], a0s[np.minimum(start, a0s.size - 1)], np.nan)


# ------------------------------- bias-free two-layer ReLU networks: activation flips and the NQM


def _two_layer_arrays(params):
    """(W (d, m), v (m, 1)) of a bias-free two-layer ``MLPSpec`` params tree (leaves may be nnx-wrapped)."""
    layers = params["layers"]
    if len(layers) != 2:
        raise ValueError(f"expected a two-layer network, got {len(layers)} layers")
    return jnp.asarray(layers[0]["w"][...]), jnp.asarray(layers[1]["w"][...])


def relu_flips(params0, params, x):
    """Per-input count of hidden units whose ReLU activation (w_i . x > 0) differs from params0: (N,).

    For ``MLPSpec.two_layer(d, m, "relu", ...)`` params (no biases); x (N, d).
    """
    w0, _ = _two_layer_arrays(params0)
    w, _ = _two_layer_arrays(params)
    return jnp.sum((x @ w0 > 0) != (x @ w > 0), axis=-1)


def relu_nqm_gap(params0, params, x):
    """f(params; x) - f_quad(params; x) for a bias-free two-layer ReLU net in NTK parameterization: (N, 1).

    The closed form of ``overparam.derivations.catapult.relu_unit_nqm_gap``: with h = x W / sqrt(d)
    at params, the NQM around params0 is v^T D0 h / sqrt(m) (D0 the activation pattern at params0,
    exact because the network is bilinear in (W, v) on a fixed pattern), so the gap is
    sum over the units flipped on x of v_i |h_i| / sqrt(m): zero on every input without a flip.
    """
    w0, _ = _two_layer_arrays(params0)
    w, v = _two_layer_arrays(params)
    d, m = w.shape
    h = x @ w / jnp.sqrt(d)
    flipped = (x @ w0 > 0) != (h > 0)
    return (jnp.where(flipped, jnp.abs(h), 0.0) @ v) / jnp.sqrt(m)


def param_distance(params0, params, batch_ndim: int = 0):
    """||params - params0|| over all leaves: an array of the leading ``batch_ndim`` axes of ``params``.

    params0 must broadcast against params (insert singleton axes for batch axes it lacks).
    """
    def squared(p, p0):
        diff = jnp.asarray(p) - jnp.asarray(p0)
        return jnp.sum(diff.reshape(diff.shape[:batch_ndim] + (-1,)) ** 2, axis=-1)

    return jnp.sqrt(sum(jax.tree.leaves(jax.tree.map(squared, params, params0))))


# ------------------------------------------------------------------- real data: scikit-learn digits


def to_sphere(x):
    """Rows of x (N, d) rescaled to norm sqrt(d) (the inputs of the chapter's NTK-parameterized nets)."""
    x = jnp.asarray(x)
    norms = jnp.linalg.norm(x, axis=1, keepdims=True)
    if bool(jnp.any(norms == 0)):
        raise ValueError("x has an all-zero row, which cannot be put on the sphere")
    return x / norms * jnp.sqrt(x.shape[1])


def digits_on_sphere(n_train: int, n_test: int, seed: int = 0, classes=(3, 8), centered: bool = True):
    """Two-class scikit-learn digits, targets +-1 (N, 1), inputs (N, 64) on the sphere of radius 8.

    centered=True: pixels standardized with training statistics (``overparam.data.load_digits_data``),
    so the inputs spread around the origin; centered=False: the raw non-negative pixel
    intensities, all inputs inside one orthant (a narrow cone). The split is the same for both.
    Returns ``overparam.data.Dataset`` (x_train, y_train, x_test, y_test) in float32.
    """
    from overparam.data import Dataset, load_digits_data

    if centered:
        ds = load_digits_data(n_train, n_test, seed=seed, classes=list(classes))
    else:
        ds = _raw_digits(n_train, n_test, seed, classes)
    return Dataset(to_sphere(ds.x_train), ds.y_train, to_sphere(ds.x_test), ds.y_test)


def _raw_digits(n_train, n_test, seed, classes):
    from sklearn.datasets import load_digits

    from overparam.data import _select_classes, _split_arrays

    digits = load_digits()
    x, labels, num_classes = _select_classes(digits.data, digits.target, list(classes))
    return _split_arrays(x, labels, n_train, n_test, seed, num_classes, jnp.float32, standardize=False)
