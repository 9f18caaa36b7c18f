"""Loss spikes (catapults) along an SGD trajectory, seen through the top of the tangent kernel.

Conventions. Losses are ``overparam.training.mse_loss``, L = 1/(2N) sum_i |f(x_i) - y_i|^2 over
the set they are evaluated on (a minibatch of b points for the SGD step, the whole training
set for ``train_loss``). The tangent kernel of a set X (n, d) is the Gram matrix K = J J^T
(n, n) summed over parameters (``overparam.kernels.empirical`` convention). Curvatures are reported per
point, mu_max(K) / n: that is the curvature the half-MSE loss of that set sees along the top
eigenvector, so a GD step on the set is unstable along it iff lr > 2 / (mu_max / n)
(``overparam.training.max_stable_lr``). The "top-k projected loss" of a probe set is
1/(2n) |U_k^T r|^2 with r = f(X_p) - y_p and U_k the top-k eigenvectors of K(X_p).

Batches follow ``overparam.training.sgd_batch_indices`` (the batch order of ``train_sgd`` for
the same key). A spike is found on a loss trajectory by ``detect_spikes``: the loss rises by at
least a factor ``rise`` above its running minimum (and above ``floor``), and later falls by at
least ``rise`` from its peak; ``spike_free_mask`` and ``control_window_gains`` give the spike-free
steps and windows that serve as controls.

Which batch sizes spike at all is the mean-square stability of linearized SGD: ``ms_second_moment_map``
is the map of E[r r^T] over one step, ``ms_critical_lr`` its threshold (derivation and closed form for
K = c 1 1^T + delta I in ``overparam.derivations.agop``). ``sgd_losses`` runs SGD recording only the
training loss, for sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from threadpoolctl import threadpool_limits

from overparam.curvature import top_eigs_subspace
from overparam.kernels.empirical import ntk
from overparam.training import batch_loss, minibatches, mse_loss, run_loop


# ----------------------------------------------------------------------- spike detection
@dataclass(frozen=True)
class Spike:
    """One spike of a loss trajectory: indices of the pre-spike minimum, the peak and the end.

    ``end`` is the first index after the peak where the loss is below peak / rise; ``complete``
    is False when the trajectory ended (or stopped being finite) before that.
    """

    start: int
    peak: int
    end: int
    height: float  # loss[peak] / loss[start]
    complete: bool


def detect_spikes(losses, rise: float = 2.0, floor: float = 0.0) -> list[Spike]:
    """Spikes of a 1-D loss trajectory (T,).

    A spike starts when loss[t] > rise * m and loss[t] > floor, where m is the running minimum
    of the loss since the end of the previous spike (its index is the spike's ``start``); it
    peaks at the largest loss before it ends; it ends at the first t after the peak with
    loss[t] < peak / rise, and the running minimum restarts there. ``floor`` (absolute) keeps
    the relative jitter of a loss near zero from counting as a spike. A non-finite loss ends
    the scan (a diverged run's last spike is ``complete=False``).
    """
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 1:
        raise ValueError(f"losses has shape {losses.shape}; expected one trajectory (T,)")
    if not rise > 1:
        raise ValueError(f"rise={rise} must be > 1 (a factor above the running minimum)")
    spikes: list[Spike] = []
    m, i_m = np.inf, 0
    in_spike, peak = False, 0
    for t, value in enumerate(losses):
        if not np.isfinite(value):
            if in_spike:
                spikes.append(Spike(i_m, peak, t, float(losses[peak] / losses[i_m]), False))
            return spikes
        if in_spike:
            if value > losses[peak]:
                peak = t
            elif value < losses[peak] / rise:
                spikes.append(Spike(i_m, peak, t, float(losses[peak] / losses[i_m]), True))
                in_spike, m, i_m = False, value, t
            continue
        if value < m:
            m, i_m = value, t
        elif value > rise * m and value > floor:
            in_spike, peak = True, t
    if in_spike:
        spikes.append(Spike(i_m, peak, len(losses) - 1, float(losses[peak] / losses[i_m]), False))
    return spikes


def count_spikes(losses, rise: float = 2.0, floor=0.0, complete_only: bool = True) -> np.ndarray:
    """Number of spikes of each trajectory in ``losses`` (..., T) -> integer array (...).

    floor: a scalar, or an array broadcastable to the leading shape (...) (one floor per
    trajectory, e.g. each run's initial loss).
    """
    losses = np.asarray(losses, dtype=float)
    lead = losses.shape[:-1]
    flat = losses.reshape(-1, losses.shape[-1])
    floors = np.broadcast_to(np.asarray(floor, dtype=float), lead).reshape(-1)
    counts = [
        sum(1 for s in detect_spikes(row, rise, fl) if s.complete or not complete_only)
        for row, fl in zip(flat, floors)
    ]
    return np.asarray(counts, dtype=int).reshape(lead)


def return_index(losses, spike: Spike) -> int | None:
    """First index after ``spike.peak`` where the loss is back at or below loss[spike.start], else None.

    Comparing a quantity at ``spike.start`` and at this index compares two points of the same
    run at the same training loss: what changed is due to the excursion, not to more fitting.
    """
    losses = np.asarray(losses, dtype=float)
    after = np.nonzero(losses[spike.peak:] <= losses[spike.start])[0]
    return None if after.size == 0 else int(spike.peak + after[0])


@dataclass(frozen=True)
class SpikeStats:
    """Per-spike measurements over a batch of trajectories (one entry per complete spike).

    run: index of the trajectory along the leading axis; start, peak, end: as in ``Spike``;
    height: loss[peak] / loss[start]; top_fraction: top_loss / probe_loss at the peak (the share
    of the probe loss in the top kernel eigenspace); kernel_ratio: ntk_top[end] / ntk_top[start];
    metric_gain: metric[return] - metric[start] at equal training loss (``return_index``; NaN if
    the loss never came back).
    """

    run: np.ndarray
    start: np.ndarray
    peak: np.ndarray
    end: np.ndarray
    height: np.ndarray
    top_fraction: np.ndarray
    kernel_ratio: np.ndarray
    metric_gain: np.ndarray


def spike_statistics(trace, rise: float = 5.0, floor=None, metric=None) -> SpikeStats:
    """Detect the complete spikes of every ``trace.train_loss`` row (S, T+1) and measure each.

    trace: an ``SGDTrace`` with a leading run axis (from ``sgd_trajectories``). floor: as in
    ``detect_spikes``; default (None) each run's initial training loss, so only excursions above
    the starting loss count. metric: optional (S, T+1) array (e.g. the AGOP alignment) whose
    loss-matched change across each spike is reported.
    """
    loss = np.asarray(trace.train_loss, dtype=float)
    if loss.ndim != 2:
        raise ValueError(f"trace.train_loss has shape {loss.shape}; expected (S, T+1) (use sgd_trajectories)")
    floors = loss[:, 0] if floor is None else np.broadcast_to(np.asarray(floor, dtype=float), loss.shape[:1])
    top = np.asarray(trace.top_loss, dtype=float) / np.asarray(trace.probe_loss, dtype=float)
    ntk = np.asarray(trace.ntk_top, dtype=float)
    metric = None if metric is None else np.asarray(metric, dtype=float)
    rows = []
    for i, (row, fl) in enumerate(zip(loss, floors)):
        for sp in detect_spikes(row, rise, fl):
            if not sp.complete:
                continue
            ret = return_index(row, sp)
            gain = np.nan if (metric is None or ret is None) else metric[i, ret] - metric[i, sp.start]
            rows.append((i, sp.start, sp.peak, sp.end, sp.height, top[i, sp.peak], ntk[i, sp.end] / ntk[i, sp.start], gain))
    cols = list(zip(*rows)) if rows else [()] * 8
    ints = [np.asarray(c, dtype=int) for c in cols[:4]]
    floats = [np.asarray(c, dtype=float) for c in cols[4:]]
    return SpikeStats(*ints, *floats)


def spike_windows(losses, rise: float = 5.0, floor=0.0) -> list[list[tuple[int, int]]]:
    """For each trajectory of ``losses`` (S, T): the step ranges [start, stop] covered by its spikes.

    Every detected spike counts (complete or not); a complete spike covers ``start`` to the later of
    ``end`` and its ``return_index`` (the loss back at its pre-spike level), an incomplete one to the
    end of the trajectory. floor: scalar or (S,), as in ``count_spikes``.
    """
    losses = np.asarray(losses, dtype=float)
    if losses.ndim != 2:
        raise ValueError(f"losses has shape {losses.shape}; expected (S, T)")
    floors = np.broadcast_to(np.asarray(floor, dtype=float), losses.shape[:1])
    out = []
    for row, fl in zip(losses, floors):
        spans = []
        for sp in detect_spikes(row, rise, fl):
            ret = return_index(row, sp) if sp.complete else None
            stop = len(row) - 1 if not sp.complete else max(sp.end, ret if ret is not None else len(row) - 1)
            spans.append((sp.start, stop))
        out.append(spans)
    return out


def spike_free_mask(losses, rise: float = 5.0, floor=0.0) -> np.ndarray:
    """Boolean (S, T): True at the steps of each trajectory outside every window of ``spike_windows``."""
    losses = np.asarray(losses, dtype=float)
    mask = np.ones(losses.shape, dtype=bool)
    for i, spans in enumerate(spike_windows(losses, rise, floor)):
        for a, z in spans:
            mask[i, a:z + 1] = False
    return mask


def control_window_gains(losses, metric, stats: SpikeStats, rise: float = 5.0, floor=0.0) -> np.ndarray:
    """One spike-free control window per spike of ``stats``: the change of ``metric`` across it, (num_spikes,).

    For a spike of run i with loss-matched span L = return_index - start, the control window is the
    window [s, s + L] of the same run that contains no step of any spike window (``spike_free_mask``)
    and whose first loss is closest (in log) to the spike's pre-spike loss: same run, same duration,
    same loss level, no spike. Its gain is metric[i, s + L] - metric[i, s]. The loss usually falls
    across a control window, so its gain includes ordinary fitting progress, which the spike's
    loss-matched gain excludes: the comparison is conservative for the spike. NaN where the spike
    never returned to its pre-spike loss, or no spike-free window of that length exists.
    """
    losses = np.asarray(losses, dtype=float)
    metric = np.asarray(metric, dtype=float)
    free = spike_free_mask(losses, rise, floor)
    gains = np.full(stats.run.size, np.nan)
    for j, (i, a, pk) in enumerate(zip(stats.run, stats.start, stats.peak)):
        ret = return_index(losses[i], Spike(int(a), int(pk), int(pk), 1.0, True))
        if ret is None:
            continue
        span = ret - a
        t = losses.shape[1]
        ok = [s for s in range(t - span) if free[i, s:s + span + 1].all() and np.isfinite(losses[i, s])]
        if not ok:
            continue
        ok = np.asarray(ok)
        s = ok[np.argmin(np.abs(np.log(losses[i, ok]) - np.log(losses[i, a])))]
        gains[j] = metric[i, s + span] - metric[i, s]
    return gains


# ----------------------------------------------- SGD runs that record only the training loss
def sgd_losses(apply_fn, params0, x, y, lr, keys, batch_size: int, num_steps: int):
    """Plain SGD for S seeds at once, recording only the full training loss: (losses (S, T+1), final params).

    The same updates and batches as ``sgd_trajectory`` (``overparam.training.run_loop`` with
    ``minibatches``; no divergence freeze), without the kernel measurements: cheap enough to
    sweep batch sizes and learning rates. params0 leaves (S, ...), keys (S,), lr scalar or (S,).
    """
    n = x.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be between 1 and N={n}")
    num_seeds = jax.tree.leaves(params0)[0].shape[0]
    lr = jnp.broadcast_to(jnp.asarray(lr, dtype=x.dtype), (num_seeds,))
    loss_fn = batch_loss(apply_fn, mse_loss)

    def one(p0, eta, k):
        res = run_loop(loss_fn, p0, optax.sgd(eta), num_steps, data=(x, y),
                       batches=minibatches(k, batch_size, n, num_steps), full_loss=loss_fn,
                       divergence_threshold=None)
        return jnp.append(res.losses, res.final_loss), res.params

    return jax.jit(jax.vmap(one))(params0, lr, keys)


# ---------------------------------------------------------- the top of the tangent kernel
def projected_loss(residual, eigvecs):
    """Half-MSE of the residual r (n,) or (n, 1) restricted to span(eigvecs (n, k)): |U^T r|^2 / (2n)."""
    residual = jnp.asarray(residual).reshape(-1)
    if eigvecs.shape[0] != residual.shape[0]:
        raise ValueError(f"eigvecs has {eigvecs.shape[0]} rows but the residual has {residual.shape[0]} entries")
    coeffs = eigvecs.T @ residual
    return jnp.sum(coeffs**2) / (2 * residual.shape[0])


def kernel_mean_diag(kernel):
    """(c, delta) of a kernel Gram matrix (n, n): c the mean off-diagonal entry, c + delta the mean diagonal.

    The model K ~ c 1 1^T + delta I of ``overparam.derivations.agop.batch_kernel_top``.
    """
    kernel = np.asarray(kernel, dtype=float)
    n = kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != n or n < 2:
        raise ValueError(f"kernel has shape {kernel.shape}; expected a square (n, n) matrix with n >= 2")
    diag = np.trace(kernel) / n
    off = (kernel.sum() - np.trace(kernel)) / (n * (n - 1))
    return float(off), float(diag - off)


def batch_critical_lrs(kernel, batch_size: int, key, num_batches: int = 64) -> np.ndarray:
    """2 b / mu_max(K_BB) for ``num_batches`` random batches B of b points: (num_batches,).

    kernel: the (N, N) NTK Gram matrix of the training set; each batch kernel K_BB is its
    submatrix on b indices drawn without replacement (from ``key``). The GD step on that batch's
    half-MSE is unstable along its top eigenvector iff lr exceeds this value. Eigenvalues by
    NumPy (no compilation per batch size).
    """
    kernel = np.asarray(kernel, dtype=float)
    n = kernel.shape[0]
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be between 1 and N={n}")
    idx = np.asarray(jnp.argsort(jax.random.uniform(key, (num_batches, n)), axis=1))[:, :batch_size]
    sub = kernel[idx[:, :, None], idx[:, None, :]]  # (num_batches, b, b)
    return 2.0 * batch_size / np.linalg.eigvalsh(sub)[:, -1]


# ------------------------------------------------ mean-square stability of linearized SGD
def _ms_pieces(kernel, batch_size: int):
    kernel = np.asarray(kernel, dtype=float)
    n = kernel.shape[0]
    if kernel.ndim != 2 or kernel.shape[1] != n or n < 2:
        raise ValueError(f"kernel has shape {kernel.shape}; expected a square (n, n) matrix with n >= 2")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be between 1 and N={n}")
    lam, u = np.linalg.eigh((kernel + kernel.T) / 2)
    if lam[0] <= 0:
        raise ValueError(f"kernel must be positive definite (smallest eigenvalue {lam[0]:.3g})")
    p1, p2 = batch_size / n, batch_size * (batch_size - 1) / (n * (n - 1))
    return n, lam, u, p1, p2


def ms_second_moment_map(kernel, lr, batch_size: int):
    """The map S -> E[A S A^T], A = I - (lr/b) K D_B, of linearized SGD on the residual, as a function on (N, N).

    Linearized SGD on the batch loss 1/(2b)|r_B|^2 moves the training residual by r' = A r, D_B the
    0/1 selection of a uniform b-subset (the batches are taken as independent draws: within an epoch
    they are not, a small effect for N/b >> 1). With p1 = b/N, p2 = b(b-1)/(N(N-1))
    (``overparam.derivations.agop.batch_inclusion_probabilities``):
    T(S) = S - (lr/N)(K S + S K) + (lr/b)^2 K (p2 S + (p1 - p2) diag S) K.
    """
    n, _, _, p1, p2 = _ms_pieces(kernel, batch_size)
    k = np.asarray(kernel, dtype=float)

    def t(s):
        m = p2 * s + (p1 - p2) * np.diag(np.diag(s))
        return s - (lr / n) * (k @ s + s @ k) + (lr / batch_size) ** 2 * k @ m @ k

    return t


def ms_critical_lr(kernel, batch_size: int, iters: int = 300, tol: float = 1e-7) -> float:
    """The mean-square critical learning rate of linearized SGD (Wu, Ma & E 2018) for the kernel K (N, N).

    E|r_t|^2 grows geometrically iff lr > eta_ms(b). With T = I - lr L + lr^2 Q
    (``ms_second_moment_map``; L(S) = (K S + S K)/N, Q(S) = K M(S) K / b^2), the threshold is the
    smallest lr with a PSD fixed point, lr Q(S) = L(S): eta_ms = 1 / rho(L^{-1} Q). L^{-1} Q maps PSD
    matrices to PSD matrices, so rho is found by power iteration from the identity; L^{-1} is
    diagonal in the eigenbasis of K (S_ij -> N S_ij / (lam_i + lam_j)). b = N gives 2N / mu_max(K),
    the full-batch threshold (``overparam.training.max_stable_lr``).
    """
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads only contend
        n, lam, u, p1, p2 = _ms_pieces(kernel, batch_size)
        return _ms_power_iteration(n, lam, u, p1, p2, batch_size, iters, tol)


def _ms_power_iteration(n, lam, u, p1, p2, batch_size, iters, tol):
    inv_l = n / (lam[:, None] + lam[None, :])
    s = np.eye(n) / n  # in the eigenbasis of K
    rho = 0.0
    for _ in range(iters):
        us = u @ s
        diag_s = np.einsum("ij,ij->i", us, u)                 # diag(U S U^T)
        m = p2 * s + (p1 - p2) * (u.T * diag_s) @ u            # U^T M U
        new = inv_l * (lam[:, None] * m * lam[None, :]) / batch_size**2
        new = (new + new.T) / 2
        rho_new = float(np.trace(new) / np.trace(s))
        s = new / np.trace(new)
        if abs(rho_new - rho) <= tol * rho_new:
            rho = rho_new
            break
        rho = rho_new
    return 1.0 / rho


# ------------------------------------------------------------------------ SGD trajectory
@partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "train_loss", "batch_loss", "batch_top_before", "batch_top_after", "ntk_top",
                 "probe_loss", "top_loss", "metrics"],
    meta_fields=[],
)
@dataclass(frozen=True)
class SGDTrace:
    """What ``sgd_trajectory`` records; per-step entries indexed by t = 0..T (before update t+1).

    params: final parameters. train_loss (T+1,): half-MSE on the whole training set.
    batch_loss (T,): the minibatch loss each update was computed from.
    batch_top_before, batch_top_after (T,): mu_max(K(X_{B_t})) / b at params_t and params_{t+1}: the
    curvature of the update's own batch (the update is unstable iff lr * batch_top_before > 2)
    and how the update changed it.
    ntk_top (T+1,): mu_max(K(X_p)) / n_p on the probe set. probe_loss (T+1,), top_loss (T+1,):
    half-MSE on the probe set and its part in the top-k eigenspace of K(X_p).
    metrics: pytree of (T+1, ...) from ``observe(params)``. ``jax.vmap`` adds a leading axis.
    """

    params: object
    train_loss: jnp.ndarray
    batch_loss: jnp.ndarray
    batch_top_before: jnp.ndarray
    batch_top_after: jnp.ndarray
    ntk_top: jnp.ndarray
    probe_loss: jnp.ndarray
    top_loss: jnp.ndarray
    metrics: object


def sgd_trajectory(apply_fn, params0, x, y, lr, key, batch_size: int, num_steps: int, x_probe, y_probe,
                   k_top: int = 1, observe: Callable | None = None, kernel_fn: Callable | None = None,
                   power_iters: int = 8) -> SGDTrace:
    """Plain SGD on the minibatch half-MSE, recording the kernel's top eigenvalue and projected loss each step.

    params_{t+1} = params_t - lr * grad L_{B_t}(params_t), L_B = ``mse_loss`` on the batch,
    B_t = ``sgd_batch_indices(key, N, batch_size, t)`` (the order ``train_sgd`` uses for the same
    key). apply_fn(params, x (n, d)) -> (n, d_out), e.g. an ``overparam.models.MLPSpec``.
    x (N, d), y (N, d_out); x_probe (n_p, d), y_probe (n_p, d_out) a fixed probe set for the
    kernel (``top_loss`` projects the residual of the first output). lr and key are traced
    (``jax.vmap`` over seeds and learning rates compiles once per shape).

    Runs on ``overparam.training.run_loop`` (one ``lax.scan``) with ``divergence_threshold=None``: a
    diverging run is not frozen but goes on with its huge or non-finite values (no exception), as
    a record of the instability. The top-k eigenvectors of K(X_p) are tracked by subspace iteration
    (``overparam.curvature.top_eigs_subspace``) warm-started from the previous step (the loop's
    stateful observer; ``power_iters`` per step, an exact ``eigh`` at t = 0); the batch curvatures
    (the loop's ``on_step``) by power iteration from the constant vector (the top eigenvector of a
    ReLU NTK is close to it). kernel_fn(params, x) -> (n, n) defaults to
    ``overparam.kernels.empirical.ntk`` (layer-wise for an ``MLPSpec``, NTK-vector products otherwise).
    observe: optional params -> pytree of arrays recorded at every step (e.g. AGOP alignment).
    """
    observe = observe if observe is not None else (lambda p: ())
    kernel_fn = kernel_fn or (lambda p, xx: ntk(apply_fn, p, xx))
    n, n_p = x.shape[0], x_probe.shape[0]
    if not 1 <= k_top <= n_p:
        raise ValueError(f"k_top={k_top} must be between 1 and the probe size {n_p}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be between 1 and N={n}")
    loss_fn = batch_loss(apply_fn, mse_loss)

    def probe_record(params, v):
        evals, evecs = top_eigs_subspace(kernel_fn(params, x_probe), v, power_iters)
        r = apply_fn(params, x_probe) - y_probe
        rec = dict(ntk_top=evals[0] / n_p, probe_loss=mse_loss(r, jnp.zeros_like(r)),
                   top_loss=projected_loss(r[:, 0], evecs), metrics=observe(params))
        return rec, evecs

    def batch_top(params, xb):
        ones = jnp.ones((xb.shape[0], 1), xb.dtype)
        return top_eigs_subspace(kernel_fn(params, xb), ones, power_iters)[0][0] / xb.shape[0]

    def batch_curvatures(params, new_params, xb, yb):
        return batch_top(params, xb), batch_top(new_params, xb)

    v0 = jnp.linalg.eigh(kernel_fn(params0, x_probe))[1][:, ::-1][:, :k_top]
    # the epochs' permutations drawn once before the loop (the same batches as drawing them at every step)
    res = run_loop(loss_fn, params0, optax.sgd(lr), num_steps, data=(x, y),
                   batches=minibatches(key, batch_size, n, num_steps),
                   full_loss=loss_fn, observe=probe_record, observer_state0=v0, on_step=batch_curvatures,
                   divergence_threshold=None)
    last, _ = probe_record(res.params, res.observer_state)
    recs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), res.records, last)
    top_before, top_after = res.step_records
    return SGDTrace(params=res.params, train_loss=jnp.append(res.losses, res.final_loss), batch_loss=res.step_losses,
                    batch_top_before=top_before, batch_top_after=top_after, **recs)


def sgd_trajectories(apply_fn, params0, x, y, lr, keys, batch_size: int, num_steps: int, x_probe, y_probe,
                     k_top: int = 1, observe: Callable | None = None,
                     kernel_fn: Callable | None = None) -> SGDTrace:
    """``sgd_trajectory`` for S seeds at once: params0 leaves (S, ...), keys (S,) for the batch order.

    lr: scalar or (S,). Returns an ``SGDTrace`` whose fields have a leading axis S; one compile
    per call (i.e. per batch size).
    """
    num_seeds = jax.tree.leaves(params0)[0].shape[0]
    lr = jnp.broadcast_to(jnp.asarray(lr, dtype=x.dtype), (num_seeds,))

    def one(p0, eta, k):
        return sgd_trajectory(apply_fn, p0, x, y, eta, k, batch_size, num_steps, x_probe, y_probe, k_top,
                              observe, kernel_fn)

    return jax.jit(jax.vmap(one))(params0, lr, keys)
