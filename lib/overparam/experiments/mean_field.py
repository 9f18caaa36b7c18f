r"""Two-layer networks in the mean-field scaling trained by online SGD, and how independent runs differ.

Model (the ``mean_field`` parameterization of ``overparam.models``, tanh, no biases):

    f(x) = (1/N) sum_{k=1..N} v_k tanh(w_k^T x / sqrt(d)),   w_k ~ N(0, I_d),  v_k ~ N(0, 1),

so each neuron theta_k = (w_k, v_k) is a particle and f is an average over the particles'
empirical measure. Data: x ~ N(0, I_d), targets y = f*(x) from a fixed two-layer tanh teacher
(NTK parameterization, k* neurons). Online SGD, a fresh minibatch of B samples per step:

    theta_k <- theta_k - eta * N * grad_{theta_k} L_B,    L_B = 1/(2B) sum_b (f(x_b) - y_b)^2,

i.e. ``params - eta * N * grad``: the factor N undoes the 1/N of the output, so each particle
moves by O(eta) whatever N ("mean-field learning rate" eta). Step n sits at time t = n eta;
runs are compared at a fixed time horizon T (T / eta steps).

Two step-size regimes, eta_N = eta0 (N0 / N)^kappa (``step_size``):
kappa > 0 (the step vanishes as N grows): the particles follow a deterministic mean-field flow,
and two independent runs differ by O(N^-1/2) (initial sampling) + O(eta_N^1/2) (SGD noise);
kappa = 0 (constant step): the SGD noise is common to all particles (every neuron sees the same
minibatch), does not average out over N, and keeps independent runs apart at O(eta^1/2). The
limit is then a common-noise mean-field dynamics with a *random* limiting measure (the stochastic
modified flows of Gess, Kassing and Konarovskyi). It is not the non-vanishing-step regime of De
Bortoli et al. (2020): their continuous-time model gives every neuron an independent noise, and
its limiting measure, hence f, is deterministic in both of their regimes.

Propagation of chaos (``coupling_experiment``): the first layer only is trained, as in De Bortoli
et al.; an N-particle system and a reference system of n_ref >> N particles start from the same
first N particles and see the same minibatches (a synchronous coupling); the reference's first N
particles stand in for independent McKean-Vlasov particles driven by the limit field (the limit
conditional on the common minibatch noise), and sqrt(mean_k |w_k^N(T) - w_k^ref(T)|^2) bounds
the Wasserstein-2 distance between the particle system and that limit.

Padding: a particle with w_k = 0 and v_k = 0 has zero gradient and contributes nothing, so a
width-N student is stored as a width-N_pad network whose last N_pad - N particles are zero;
its output is (N_pad / N) times the padded network's (``student_apply``), which is exactly
f above. All widths then share one compiled training loop.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from overparam.models import MLPSpec
from overparam.training import mse_loss, run_loop


def student_spec(d: int, width: int) -> MLPSpec:
    """The padded student network: width ``width`` mean-field tanh MLP (d, width, 1) without biases.

    ``student_spec(d, width)(params, x)`` is (1/width) sum_k v_k tanh(w_k^T x / sqrt d), (n, d) -> (n, 1);
    ``student_apply`` rescales it to the student's N live particles.
    """
    return MLPSpec((d, width, 1), "tanh", "mean_field", use_bias=False)


def student_init(keys, d: int, N: int, width: int | None = None):
    """Params of len(keys) independent mean-field students of N particles (leading axis = run),
    stored with ``width`` >= N slots (default N); slots N..width-1 hold zero particles.

    keys: (runs,) typed or (runs, 2) raw keys. Layer 0 holds w (runs, d, width), layer 1 holds
    v (runs, width, 1). The first N particles have the same law for any width (w_k ~ N(0, I_d),
    v_k ~ N(0, 1)).
    """
    width = N if width is None else width
    if d < 1 or N < 1 or width < N:
        raise ValueError(f"need d >= 1 and 1 <= N <= width; got d={d}, N={N}, width={width}")
    return _init_padded(keys, N, d, width)


@partial(jax.jit, static_argnums=(2, 3))
def _init_padded(keys, N, d: int, width: int):
    """Params of padded students (one compilation per (d, width); N traced)."""
    params = student_spec(d, width).init_ensemble(keys)
    live = (jnp.arange(width) < N).astype(jnp.float32)
    w, v = params["layers"][0]["w"], params["layers"][1]["w"]   # nnx.Param (runs, d, width), (runs, width, 1)
    w[...] = w[...] * live[None, None, :]
    v[...] = v[...] * live[None, :, None]
    return params


def student_apply(params, x, N):
    """f(x) (n, 1) of one student with N live particles, x (n, d): (width / N) ``student_spec(d, width)(params, x)``.

    params: one run of ``student_init`` (no leading run axis); d and width are read off its shapes,
    N may be traced. This is exactly f = (1/N) sum_{k<N} v_k tanh(w_k^T x / sqrt d).
    """
    d, width = params["layers"][0]["w"].shape
    return student_spec(d, width)(params, x) * (width / N)


def _teacher_spec(d: int, k_star: int) -> MLPSpec:
    return MLPSpec((d, k_star, 1), "tanh", "ntk", use_bias=False)


def teacher_init(key, d: int, k_star: int):
    """Params of the teacher f*(x) = v*^T tanh(W*^T x / sqrt d) / sqrt(k*), N(0, 1) weights, from one key."""
    if k_star < 1:
        raise ValueError(f"k_star={k_star} must be positive")
    params = _teacher_spec(d, k_star).init_ensemble(key[None])
    return jax.tree.map(lambda p: p[0], params)


def teacher_apply(params, x):
    """f*(x) (n, 1) for x (n, d) and params from ``teacher_init`` (d and k* read off their shapes)."""
    return _teacher_spec(*params["layers"][0]["w"].shape)(params, x)


def particles(params, N: int | None = None):
    """The first N neurons (default: all slots) of one run as an (N, d + 1) array of particles (w_k, v_k)."""
    w = params["layers"][0]["w"][...]      # (d, width)
    v = params["layers"][1]["w"][...]      # (width, 1)
    return jnp.concatenate([w.T, v], axis=1)[:N]


def step_size(eta0: float, N, N0: int, kappa: float):
    """eta_N = eta0 (N0 / N)^kappa: kappa = 0 constant step, kappa > 0 a step that vanishes with width."""
    if eta0 <= 0 or N0 < 1 or kappa < 0:
        raise ValueError(f"need eta0 > 0, N0 >= 1, kappa >= 0; got eta0={eta0}, N0={N0}, kappa={kappa}")
    return eta0 * (N0 / np.asarray(N, dtype=float)) ** kappa


def _fresh_samples(batch_size: int, d: int):
    """``batches(data, t)`` for ``run_loop`` with data = (data_key, teacher_params): step t's
    x_t (batch_size, d) ~ N(0, I_d) from ``fold_in(data_key, t)`` and its targets ``teacher_apply`` (batch_size, 1)."""

    def batches(data, t):
        data_key, teacher_params = data
        x = jax.random.normal(jax.random.fold_in(data_key, t), (batch_size, d))
        return x, teacher_apply(teacher_params, x)

    return batches


@partial(jax.jit, static_argnames=("batch_size",))
def online_sgd(params0, teacher_params, data_key, eta, N, num_steps, *, batch_size: int):
    """Online SGD with the mean-field step (``params - eta * N * grad``) for ``num_steps`` steps -> params.

    params0: one student (``student_init`` without the run axis) with N live particles;
    teacher_params from ``teacher_init``. Step n minimizes the half-MSE
    ``mse_loss(student_apply(params, x_n, N), teacher_apply(teacher_params, x_n))`` on x_n
    (batch_size, d) drawn from ``fold_in(data_key, n)`` (``_fresh_samples``): two runs with
    the same data_key see the same samples. ``run_loop`` with plain SGD at rate eta * N, no
    divergence check and a traced horizon: params0, data_key, eta, N and num_steps are traced,
    so every width, step size and horizon at one padded shape share one compilation, and
    ``jax.vmap`` over runs works.
    """
    d = params0["layers"][0]["w"].shape[0]
    loss = lambda p, x, y: mse_loss(student_apply(p, x, N), y)
    result = run_loop(loss, params0, optax.sgd(eta * N), num_steps, data=(data_key, teacher_params),
                      batches=_fresh_samples(batch_size, d), record_every=None, divergence_threshold=None)
    return result.params


def rms_distance(f1, f2):
    """sqrt(mean (f1 - f2)^2) over test points: an estimate of ||f1 - f2||_{L2(N(0, I))}."""
    return jnp.sqrt(jnp.mean((f1 - f2) ** 2))


@dataclasses.dataclass(frozen=True)
class Discrepancy:
    """Distances ||f_a - f_b|| at time T between runs of width N (one entry per pair of runs, (2P,)):

    independent: different init and different data; same_init: one init, two data streams
    (SGD noise only); same_data: two inits, one data stream (initial sampling only).
    risk: test half-MSE of every run (4P,).
    """

    N: int
    eta: float
    num_steps: int
    independent: np.ndarray
    same_init: np.ndarray
    same_data: np.ndarray
    risk: np.ndarray


def discrepancy_experiment(key, teacher, x_test, N: int, eta: float, horizon: float, batch_size: int,
                           num_groups: int, width: int | None = None) -> Discrepancy:
    """Train 4 * num_groups students of width N to time ``horizon`` and measure their discrepancies.

    Group g uses inits i1, i2 and data streams s1, s2 and trains (i1,s1), (i2,s2), (i1,s2), (i2,s1);
    independent pairs: (i1,s1)-(i2,s2) and (i1,s2)-(i2,s1); same init: (i1,s1)-(i1,s2) and
    (i2,s2)-(i2,s1); same data: (i1,s1)-(i2,s1) and (i2,s2)-(i1,s2). teacher: params from
    ``teacher_init``; x_test (n, d). Steps: round(horizon / eta). ``width`` >= N pads the
    students (default N) so that several N share one compilation.
    """
    num_steps = int(round(horizon / eta))
    if num_steps < 1:
        raise ValueError(f"horizon={horizon} / eta={eta} gives no step")
    d = x_test.shape[1]
    k_init, k_data = jax.random.split(key)
    inits = jax.random.split(k_init, 2 * num_groups).reshape(num_groups, 2)
    streams = jax.random.split(k_data, 2 * num_groups).reshape(num_groups, 2)
    pairs = [(0, 0), (1, 1), (0, 1), (1, 0)]
    init_keys = jnp.stack([inits[:, i] for i, _ in pairs], axis=1).reshape(-1)
    data_keys = jnp.stack([streams[:, s] for _, s in pairs], axis=1).reshape(-1)
    width = N if width is None else width
    params0 = student_init(init_keys, d, N, width)
    train = lambda p, k: online_sgd(p, teacher, k, eta, N, num_steps, batch_size=batch_size)
    params = jax.vmap(train)(params0, data_keys)
    f = _outputs(params, x_test, N).reshape(num_groups, 4, -1)
    y = teacher_apply(teacher, x_test)[:, 0]
    dist = lambda a, b: np.asarray(jax.vmap(rms_distance)(f[:, a], f[:, b]))
    risk = 0.5 * np.asarray(jnp.mean((f - y) ** 2, axis=-1)).ravel()
    return Discrepancy(N, float(eta), num_steps,
                       np.concatenate([dist(0, 1), dist(2, 3)]),
                       np.concatenate([dist(0, 2), dist(1, 3)]),
                       np.concatenate([dist(0, 3), dist(1, 2)]), risk)


@jax.jit
def _outputs(params, x, N):
    return jax.vmap(lambda p: student_apply(p, x, N)[:, 0])(params)


def discrepancy_sweep(key, teacher, x_test, widths, eta0: float, kappa: float, horizon: float, batch_size: int,
                      num_groups: int) -> list[Discrepancy]:
    """``discrepancy_experiment`` for every N in ``widths`` with eta_N = eta0 (widths[0] / N)^kappa,
    all stored at width max(widths) (one compilation for the whole sweep)."""
    widths = [int(N) for N in widths]
    if not widths or min(widths) < 1:
        raise ValueError(f"widths={widths} must be a non-empty list of positive integers")
    etas = step_size(eta0, widths, widths[0], kappa)
    return [discrepancy_experiment(jax.random.fold_in(key, N), teacher, x_test, N, float(eta), horizon, batch_size,
                                   num_groups, width=max(widths)) for N, eta in zip(widths, etas)]


def rms(values) -> float:
    """Root mean square of an array (how discrepancies over pairs of runs are averaged)."""
    values = np.asarray(values, dtype=float)
    return float(np.sqrt(np.mean(values**2)))


# ---------------------------------------------------------------- propagation of chaos, first layer only
@partial(jax.jit, static_argnames=("batch_size",))
def first_layer_sgd(w0, v, teacher_params, data_key, eta, N, num_steps, *, batch_size: int):
    """Online SGD with the mean-field step on the first layer only, the output weights v frozen -> w(T).

    w0: (d, width) first-layer weights (column k is w_k), v: (width, 1) output weights; slots k >= N
    must hold v_k = 0 (they then contribute nothing and receive no gradient). The student is
    f(x) = (1/N) sum_k v_k tanh(w_k^T x / sqrt d) (``student_spec`` rescaled by width / N, as in
    ``student_apply``); the step is ``w - eta * N * grad_w`` of the half-MSE on the fresh minibatch
    of ``_fresh_samples`` (two runs with the same data_key see the same samples). ``run_loop``
    with plain SGD, no records; every argument but batch_size is traced (``jax.vmap`` over runs works).
    """
    d, width = w0.shape
    spec = student_spec(d, width)
    apply = lambda w, x: spec({"layers": {0: {"w": w}, 1: {"w": v}}}, x) * (width / N)
    loss = lambda w, x, y: mse_loss(apply(w, x), y)
    result = run_loop(loss, w0, optax.sgd(eta * N), num_steps, data=(data_key, teacher_params),
                      batches=_fresh_samples(batch_size, d), record_every=None, divergence_threshold=None)
    return result.params


@dataclasses.dataclass(frozen=True)
class Coupling:
    """Coupling distances at time T between N-particle systems and a reference of n_ref particles.

    widths: (W,) the N; coupled: (G, W) sqrt(mean_{k<N} |w_k^N(T) - w_k^ref(T)|^2) per group of
    runs, the particle system and the reference started from the same first N particles and fed the
    same minibatches; uncoupled: (G, W) the same statistic for a particle system started from
    independent particles (same data stream): what the distance is without the coupling.
    """

    widths: np.ndarray
    n_ref: int
    eta: float
    num_steps: int
    coupled: np.ndarray
    uncoupled: np.ndarray


def coupling_experiment(key, teacher, d: int, widths, n_ref: int, eta: float, horizon: float, batch_size: int,
                        num_groups: int) -> Coupling:
    """Propagation of chaos measured by synchronous coupling, first layer trained, constant step eta.

    Per group: n_ref particles (w_k ~ N(0, I_d), v_k ~ N(0, 1)) and one data stream; the reference
    trains all n_ref of them (``first_layer_sgd``, T / eta steps), each N-particle system the first
    N of them on the same stream (stored at width max(widths): one compilation for all N). Prediction
    (see chapter 8): coupling distance proportional to sqrt(1/N - 1/n_ref).
    """
    widths = [int(N) for N in widths]
    if not widths or min(widths) < 1 or max(widths) > n_ref:
        raise ValueError(f"widths={widths} must be positive integers <= n_ref={n_ref}")
    num_steps = int(round(horizon / eta))
    if num_steps < 1:
        raise ValueError(f"horizon={horizon} / eta={eta} gives no step")
    width = max(widths)
    k_init, k_other, k_data = jax.random.split(key, 3)
    ref0 = student_init(jax.random.split(k_init, num_groups), d, n_ref)
    other0 = student_init(jax.random.split(k_other, num_groups), d, width)
    w_ref0, v_ref = ref0["layers"][0]["w"][...], ref0["layers"][1]["w"][...]   # (G, d, n_ref), (G, n_ref, 1)
    w_oth0, v_oth = other0["layers"][0]["w"][...], other0["layers"][1]["w"][...]
    data_keys = jax.random.split(k_data, num_groups)
    train = jax.vmap(lambda w, v, k, N: first_layer_sgd(w, v, teacher, k, eta, N, num_steps, batch_size=batch_size),
                     (0, 0, 0, None))
    w_ref = train(w_ref0, v_ref, data_keys, n_ref)[:, :, :width]
    coupled, uncoupled = [], []
    for N in widths:
        live = (jnp.arange(width) < N).astype(w_ref0.dtype)
        dist = lambda w: np.asarray(jnp.sqrt(jnp.sum((w - w_ref) ** 2 * live, axis=(1, 2)) / N))
        coupled.append(dist(train(w_ref0[:, :, :width] * live, v_ref[:, :width] * live[:, None], data_keys, N)))
        uncoupled.append(dist(train(w_oth0 * live, v_oth * live[:, None], data_keys, N)))
    return Coupling(np.array(widths), int(n_ref), float(eta), num_steps, np.stack(coupled, 1), np.stack(uncoupled, 1))
