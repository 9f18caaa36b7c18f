"""Transition to linearity: width sweeps of curvature, kernel motion and distance to the linear model.

Each function handles one architecture (one ``widths`` tuple) for a batch of seeds, jitted
once per shape; a chapter loops over widths. ``batch_size=None`` (the default) ``vmap``s over
the seeds and, within a seed, over the inputs or kernel columns, all at once. Memory then grows
like seeds x inputs x the Lanczos basis ((num_iters + 1) x P floats) or seeds x N^2 x width
(kernel columns of ``ntk_vjp_jvp``); an int runs the seeds one after another and ``batch_size``
inputs or columns of a seed at a time (``jax.lax.map``): the same results to rounding, in
bounded memory. Networks are
``overparam.models.MLPSpec`` without biases; losses are ``mse_loss`` (1/(2N) sum of squares), so
learning rates are given as a fraction of the linear model's GD threshold 2N / lambda_max(Theta_0).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from overparam.curvature import model_hessian_spectral_norm
from overparam.kernels.regression import linear_model_prediction
from overparam.kernels.empirical import ntk_layerwise, ntk_vjp_jvp
from overparam.models import MLPSpec, flatten_params, get_activation
from overparam.stats import loglog_fit
from overparam.training import batch_loss, max_stable_lr, train_gd


def _map(fn, xs, batch_size):
    """``fn`` over the leading axis of the pytree ``xs``: all at once (``vmap``), or ``batch_size`` at a time.

    An int uses ``jax.lax.map`` (a loop over chunks of ``batch_size``, vmapped within; 1: a plain loop).
    """
    if batch_size is None:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=None if batch_size == 1 else batch_size)


def _map_seeds(fn, xs, batch_size):
    """``fn`` over the seeds (leading axis of ``xs``): all at once for batch_size=None, else one after another."""
    return _map(fn, xs, None if batch_size is None else 1)


def _check_batch_size(batch_size):
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size={batch_size!r}; expected None (all at once) or a positive int")
    return batch_size


def _lanczos_keys(keys):
    """One Lanczos start key per seed (S,), drawn from the first of the S initialization ``keys``."""
    return jax.random.split(jax.random.fold_in(keys[0], 7), keys.shape[0])


def _seed_input_hessian_norms(apply_fn, params, keys, xs, num_iters, batch_size):
    """Lanczos ||d^2 apply_fn(x)/d theta^2||_2 for each seed (params, Lanczos key from ``keys``) and input: (S, M)."""
    lanczos_keys = _lanczos_keys(keys)

    def per_seed(pk):
        p, k = pk
        return _map(lambda x: model_hessian_spectral_norm(apply_fn, p, x, k, num_iters), xs, batch_size)

    return _map_seeds(per_seed, (params, lanczos_keys), batch_size)


def hessian_norm_at_init(widths, activation, keys, xs, parameterization="ntk", num_iters=30, *, batch_size=None):
    """||d^2 f(x)/d theta^2||_2 at initialization, shape (S, M): S seeds (``keys``) by M inputs ``xs`` (M, d).

    Compiled once per (widths, activation, parameterization, num_iters, batch_size, shapes of keys
    and xs). batch_size: see the module docstring (an int holds ``batch_size`` Lanczos bases at once).
    """
    return _hessian_norm_at_init(tuple(widths), activation, parameterization, num_iters, _check_batch_size(batch_size),
                                 keys, xs)


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _hessian_norm_at_init(widths, activation, parameterization, num_iters, batch_size, keys, xs):
    apply_fn = MLPSpec(widths, activation, parameterization, use_bias=False)
    return _seed_input_hessian_norms(apply_fn, apply_fn.init_ensemble(keys), keys, xs, num_iters, batch_size)


@partial(jax.tree_util.register_dataclass,
         data_fields=["ntk_change", "f_net_test", "f_lin_test", "f_init_test", "final_loss", "diverged", "lr",
                      "param_distance", "param_distance_linear", "flips_per_input"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LazyTrainingReport:
    """Per-seed outcome of training a network and its linearization identically.

    ntk_change (S,): ||Theta_T - Theta_0||_F / ||Theta_0||_F on the training inputs.
    f_net_test, f_lin_test, f_init_test (S, M): test outputs of the trained net, of the linear
    model after the same GD (closed form) and at initialization. final_loss, diverged (S,);
    lr (S,): the learning rate used (lr_fraction * 2N / lambda_max(Theta_0)).
    param_distance (S,): ||theta_T - theta_0|| (Euclidean, all parameters).
    param_distance_linear (S,): the same distance for the linear model after the same GD, exactly:
    sqrt(sum_j (1 - (1 - lr lam_j / N)^T)^2 r_j^2 / lam_j) over the eigenpairs (lam_j, u_j) of
    Theta_0 on the training set, r_j = u_j^T (y - f_0) (the displacement lies in the row space of J).
    flips_per_input (S,): number of first-layer units whose pre-activation changes sign between
    theta_0 and theta_T, averaged over the training inputs (for ReLU: units that cross the kink).
    """

    ntk_change: jax.Array
    f_net_test: jax.Array
    f_lin_test: jax.Array
    f_init_test: jax.Array
    final_loss: jax.Array
    diverged: jax.Array
    lr: jax.Array
    param_distance: jax.Array
    param_distance_linear: jax.Array
    flips_per_input: jax.Array


def frozen_pattern_apply(spec: MLPSpec, params0):
    """The two-layer ``spec`` with its activation pattern frozen at ``params0``: apply(params, x) -> (N, 1).

    f(theta; x) = v^T [h(x) * 1{h_0(x) > 0}] / sqrt(m), h = W^T x / sqrt(d) the pre-activations at
    theta and h_0 those at theta_0. For ReLU it equals the network at theta_0, with the same
    gradient and NTK there, but no unit can cross the kink: it is quadratic in theta (bilinear
    in W and v), so its Hessian is constant and its kernel moves only through the smooth terms.
    """
    if spec.num_layers != 2:
        raise ValueError(f"frozen_pattern_apply needs a two-layer spec (widths (d, m, 1)); got widths {spec.widths}")
    (_, _, w_mult0, _), (_, _, w_mult1, _) = spec.layer_scales()

    def apply(params, x):
        h = spec.trace(params, x)[1][0]
        gate = (spec.trace(params0, x)[1][0] > 0).astype(h.dtype)
        return w_mult1 * ((h * gate) @ params["layers"][1]["w"][...])

    return apply


def linear_model_distance(ntk_train, residual0, lr, num_steps):
    """||theta_T - theta_0|| of the linear model after ``num_steps`` of GD on ``mse_loss``, in closed form.

    ntk_train (N, N) = J J^T at theta_0, residual0 (N,) = y - f_0 on the training set. GD keeps the
    displacement in the row space of J; in the eigenbasis of Theta the fitted residual is
    (1 - (1 - lr lam / N)^T) r and the squared distance is its Theta^{-1}-norm.
    """
    n = ntk_train.shape[0]
    lam, u = jnp.linalg.eigh(ntk_train)
    lam = jnp.maximum(lam, 1e-30)
    r = u.T @ residual0
    a = lr * lam / n
    # 1 - (1 - a)^T, accurate for small a (expm1/log1p); the plain power where a >= 1 (unstable directions)
    fitted = jnp.where(a < 1, -jnp.expm1(num_steps * jnp.log1p(-jnp.where(a < 1, a, 0.0))), 1.0 - (1.0 - a) ** num_steps)
    return jnp.sqrt(jnp.sum(fitted**2 * r**2 / lam))


def train_vs_linear(widths, activation, keys, x_train, y_train, x_test, *, parameterization="ntk",
                    lr_fraction=0.5, num_steps=500, frozen_pattern=False, batch_size=None) -> LazyTrainingReport:
    """Train ``MLPSpec(widths, activation, parameterization, use_bias=False)`` by full-batch GD and compare with its linearization, for each seed.

    x_train (N, d), y_train (N, 1), x_test (M, d). The same lr and step count drive the network
    (``train_gd``) and the linear model (``linear_model_prediction``, exact GD in closed form).
    ``lr_fraction`` is traced: changing it does not recompile; ``num_steps`` and the architecture do.
    ``frozen_pattern=True`` trains ``frozen_pattern_apply`` instead (two layers only): the same
    network and linear model at theta_0, with the activation pattern held at initialization.
    batch_size: see the module docstring (an int: seeds one at a time, and with ``frozen_pattern``
    ``batch_size`` columns of the final kernel at a time).
    """
    if y_train.ndim != 2 or y_train.shape != (x_train.shape[0], 1):
        raise ValueError(f"y_train has shape {y_train.shape}; expected ({x_train.shape[0]}, 1)")
    if frozen_pattern and len(widths) != 3:
        raise ValueError(f"frozen_pattern=True needs widths (d, m, 1); got {tuple(widths)}")
    return _train_vs_linear(tuple(widths), activation, parameterization, int(num_steps), bool(frozen_pattern),
                            _check_batch_size(batch_size), keys, x_train, y_train, x_test, jnp.asarray(lr_fraction))


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _train_vs_linear(widths, activation, parameterization, num_steps, frozen_pattern, batch_size, keys, x_train, y_train,
                     x_test, lr_fraction):
    spec = MLPSpec(widths, activation, parameterization, use_bias=False)
    params0 = spec.init_ensemble(keys)
    n = x_train.shape[0]
    x_all = jnp.concatenate([x_train, x_test])

    def one(p0):
        k0 = ntk_layerwise(spec, p0, x_all)
        k_train = k0[:n, :n]
        lr = lr_fraction * max_stable_lr(k_train)
        net = frozen_pattern_apply(spec, p0) if frozen_pattern else spec
        result = train_gd(batch_loss(net), p0, lr, num_steps, record_every=num_steps, data=(x_train, y_train))
        k_final = (ntk_vjp_jvp(net, result.params, x_train, batch_size=batch_size) if frozen_pattern
                   else ntk_layerwise(spec, result.params, x_train))
        change = jnp.linalg.norm(k_final - k_train) / jnp.linalg.norm(k_train)
        f0 = spec(p0, x_all)[:, 0]
        _, f_lin_test = linear_model_prediction(k_train, k0[n:, :n], f0[:n], f0[n:], y_train[:, 0], lr,
                                                num_steps=num_steps)
        f_net_test = net(result.params, x_test)[:, 0]
        distance = jnp.linalg.norm(flatten_params(result.params)[0] - flatten_params(p0)[0])
        h0, h_t = spec.trace(p0, x_train)[1][0], spec.trace(result.params, x_train)[1][0]
        flips = jnp.mean(jnp.sum(jnp.sign(h0) != jnp.sign(h_t), axis=1))
        return LazyTrainingReport(change, f_net_test, f_lin_test, f0[n:], result.final_loss, result.diverged, lr,
                                  distance, linear_model_distance(k_train, y_train[:, 0] - f0[:n], lr, num_steps),
                                  flips)

    return _map_seeds(one, params0, batch_size)


def sweep_statistics(reports) -> dict[str, np.ndarray]:
    """Per-width, per-seed statistics of a width sweep: a dict of arrays of shape (W, S).

    reports: one ``LazyTrainingReport`` per width (S seeds each). Keys: ``ntk_change``,
    ``param_distance``, ``param_distance_linear``, ``flips_per_input`` (the report's fields) and
    ``gap`` (RMS over test points of f_net - f_lin).
    """
    fields = ("ntk_change", "param_distance", "param_distance_linear", "flips_per_input")
    stats = {f: np.stack([np.asarray(getattr(r, f), dtype=float) for r in reports]) for f in fields}
    stats["gap"] = np.stack([np.sqrt(np.mean(np.asarray(r.f_net_test - r.f_lin_test, dtype=float) ** 2, axis=1))
                             for r in reports])
    return stats


def per_seed_slopes(widths, values) -> np.ndarray:
    """Log-log slope against ``widths`` (W,) of each column of ``values`` (W, S): shape (S,)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[0] != len(widths):
        raise ValueError(f"values has shape {values.shape}; expected ({len(widths)}, S)")
    return np.array([loglog_fit(widths, values[:, s]).slope for s in range(values.shape[1])])


def expected_hessian_norm_two_layer(activation, widths, key, num_samples=2**20):
    """Predicted E ||d^2 f(x)/d theta^2||_2 at initialization of the two-layer net, one value per width: (W,).

    Uses the exact spectral norm (``derivations.linearity.hessian_norm_exact``): with ||x||^2 = d,
    ||H||_2 = max_{i <= m} g(v_i, z_i) / sqrt(m), g(v, z) = (|v s''| + sqrt(v^2 s''^2 + 4 s'^2)) / 2,
    v, z ~ N(0, 1) independent over units. E max_i g is computed from ``num_samples`` draws of g as
    the expected maximum of m draws from their empirical distribution,
    sum_k g_(k) [(k/n)^m - ((k-1)/n)^m]; it needs num_samples >> max(widths).
    """
    act = get_activation(activation)
    d1 = jax.vmap(jax.grad(act))
    d2 = jax.vmap(jax.grad(jax.grad(act)))
    kv, kz = jax.random.split(key)
    v = jax.random.normal(kv, (num_samples,))
    z = jax.random.normal(kz, (num_samples,))
    p, q = v * d2(z), d1(z)
    g = np.sort(np.asarray((jnp.abs(p) + jnp.sqrt(p**2 + 4 * q**2)) / 2, dtype=float))
    levels = np.arange(num_samples + 1) / num_samples
    out = []
    for m in widths:
        weights = np.diff(levels**m)   # P(the max of m draws is the k-th order statistic)
        out.append(float(weights @ g) / np.sqrt(m))
    return np.array(out)


def skip_bottleneck_init(key, d: int, m: int, k: int):
    """Params of the tanh DAG network ``skip_bottleneck_net``: a dict of N(0, 1) arrays.

    w1 (d, m), w2 (m, k), w3 (k, m), skip (m, m), v (m, 1). NTK parameterization: every
    pre-activation divides by the square root of its neuron's in-degree.
    """
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    normal = jax.random.normal
    return dict(w1=normal(k1, (d, m)), w2=normal(k2, (m, k)), w3=normal(k3, (k, m)), skip=normal(k4, (m, m)),
                v=normal(k5, (m, 1)))


def skip_bottleneck_net(params, x):
    """d -> m -> k -> m -> 1 with a skip connection from the first hidden layer into the third: (N, d) -> (N, 1).

    h1 = tanh(x W1 / sqrt(d)) (m units, in-degree d), h2 = tanh(h1 W2 / sqrt(m)) (the bottleneck,
    k units, in-degree m), h3 = tanh((h2 W3 + h1 S) / sqrt(k + m)) (m units, in-degree k + m),
    f = h3 v / sqrt(m). Without S the third layer's in-degree would be k; with it the minimum
    in-degree beyond the first layer is m.
    """
    d, m = params["w1"].shape
    k = params["w2"].shape[1]
    h1 = jnp.tanh(x @ params["w1"] / jnp.sqrt(d))
    h2 = jnp.tanh(h1 @ params["w2"] / jnp.sqrt(m))
    h3 = jnp.tanh((h2 @ params["w3"] + h1 @ params["skip"]) / jnp.sqrt(k + m))
    return h3 @ params["v"] / jnp.sqrt(m)


def hessian_norm_skip_bottleneck(d, m, k, num_iters, keys, xs, *, batch_size=None):
    """||d^2 f(x)/d theta^2||_2 of ``skip_bottleneck_net`` at initialization: (S, M) for S ``keys``, M inputs ``xs``.

    batch_size: see the module docstring.
    """
    return _hessian_norm_skip_bottleneck(d, m, k, num_iters, _check_batch_size(batch_size), keys, xs)


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _hessian_norm_skip_bottleneck(d, m, k, num_iters, batch_size, keys, xs):
    params = jax.vmap(lambda key: skip_bottleneck_init(key, d, m, k))(keys)
    return _seed_input_hessian_norms(skip_bottleneck_net, params, keys, xs, num_iters, batch_size)


@dataclasses.dataclass(frozen=True)
class NonlinearOutput:
    """f(theta; x) = phi(g(theta; x)), phi(u) = u + tanh(u) / 2, g = ``spec`` (hashable by value: a static jit argument).

    phi' in [1, 3/2] (so phi is invertible and every target is reachable) and phi'' = -tanh sech^2
    is of order one: the Hessian phi'(g) d^2 g + phi''(g) grad g grad g^T keeps an order-one rank-one
    part however wide g is. Output (N, 1) like ``spec``.
    """

    spec: MLPSpec

    def __call__(self, params, x):
        g = self.spec(params, x)
        return g + 0.5 * jnp.tanh(g)


def nonlinear_output_sweep(widths, num_steps, num_iters, keys, x_train, y_train, x_hess, *, batch_size=None):
    """Hessian norm at init (S, M) and loss ratio L_T / L_0 after GD (S,) for ``NonlinearOutput`` of a two-layer ReLU net.

    lr = 1/2 * 2N / lambda_max(K_f(theta_0)), the same rule as ``train_vs_linear``. batch_size: see
    the module docstring (an int: seeds one at a time, ``batch_size`` Lanczos runs and kernel columns at a time).
    """
    return _nonlinear_output_sweep(tuple(widths), num_steps, num_iters, _check_batch_size(batch_size), keys, x_train,
                                   y_train, x_hess)


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _nonlinear_output_sweep(widths, num_steps, num_iters, batch_size, keys, x_train, y_train, x_hess):
    net = NonlinearOutput(MLPSpec(widths, "relu", "ntk", use_bias=False))
    params0 = net.spec.init_ensemble(keys)
    lanczos_keys = _lanczos_keys(keys)

    def one(pk):
        p0, key = pk
        hess = _map(lambda x: model_hessian_spectral_norm(net, p0, x, key, num_iters), x_hess, batch_size)
        lr = 0.5 * max_stable_lr(ntk_vjp_jvp(net, p0, x_train, batch_size=batch_size))
        result = train_gd(batch_loss(net), p0, lr, num_steps, record_every=num_steps, data=(x_train, y_train))
        loss0 = batch_loss(net)(p0, x_train, y_train)
        return hess, result.final_loss / loss0

    return _map_seeds(one, (params0, lanczos_keys), batch_size)
