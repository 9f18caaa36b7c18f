"""Transition to linearity: width sweeps of curvature, kernel motion and distance to the linear model.

Each function handles one architecture (one ``widths`` tuple) for a batch of seeds, jitted
once per shape and ``vmap``-ed over seeds; a chapter loops over widths. Networks are
``overparam.models.MLPSpec`` without biases; losses are ``mse_loss`` (1/(2N) sum of squares), so
learning rates are given as a fraction of the linear model's GD threshold 2N / lambda_max(Theta_0).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp

from overparam.curvature import model_hessian_spectral_norm
from overparam.kernels.regression import linear_model_prediction
from overparam.kernels.empirical import ntk_layerwise
from overparam.models import MLPSpec
from overparam.training import batch_loss, max_stable_lr, train_gd


def hessian_norm_at_init(widths, activation, keys, xs, parameterization="ntk", num_iters=30):
    """||d^2 f(x)/d theta^2||_2 at initialization, shape (S, M): S seeds (``keys``) by M inputs ``xs`` (M, d).

    Compiled once per (widths, activation, parameterization, num_iters, shapes of keys and xs).
    """
    return _hessian_norm_at_init(tuple(widths), activation, parameterization, num_iters, keys, xs)


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _hessian_norm_at_init(widths, activation, parameterization, num_iters, keys, xs):
    apply_fn = MLPSpec(widths, activation, parameterization, use_bias=False)
    params = apply_fn.init_ensemble(keys)
    lanczos_keys = jax.random.split(jax.random.fold_in(keys[0], 7), keys.shape[0])

    def per_seed(p, k):
        return jax.vmap(lambda x: model_hessian_spectral_norm(apply_fn, p, x, k, num_iters))(xs)

    return jax.vmap(per_seed)(params, lanczos_keys)


@partial(jax.tree_util.register_dataclass,
         data_fields=["ntk_change", "f_net_test", "f_lin_test", "f_init_test", "final_loss", "diverged", "lr"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LazyTrainingReport:
    """Per-seed outcome of training a network and its linearization identically.

    ntk_change (S,): ||Theta_T - Theta_0||_F / ||Theta_0||_F on the training inputs.
    f_net_test, f_lin_test, f_init_test (S, M): test outputs of the trained net, of the linear
    model after the same GD (closed form) and at initialization. final_loss, diverged (S,);
    lr (S,): the learning rate used (lr_fraction * 2N / lambda_max(Theta_0)).
    """

    ntk_change: jax.Array
    f_net_test: jax.Array
    f_lin_test: jax.Array
    f_init_test: jax.Array
    final_loss: jax.Array
    diverged: jax.Array
    lr: jax.Array


def train_vs_linear(widths, activation, keys, x_train, y_train, x_test, *, parameterization="ntk",
                    lr_fraction=0.5, num_steps=500) -> LazyTrainingReport:
    """Train ``MLPSpec(widths, activation, parameterization, use_bias=False)`` by full-batch GD and compare with its linearization, for each seed.

    x_train (N, d), y_train (N, 1), x_test (M, d). The same lr and step count drive the network
    (``train_gd``) and the linear model (``linear_model_prediction``, exact GD in closed form).
    ``lr_fraction`` is traced: changing it does not recompile; ``num_steps`` and the architecture do.
    """
    if y_train.ndim != 2 or y_train.shape != (x_train.shape[0], 1):
        raise ValueError(f"y_train has shape {y_train.shape}; expected ({x_train.shape[0]}, 1)")
    return _train_vs_linear(tuple(widths), activation, parameterization, int(num_steps), keys, x_train, y_train,
                            x_test, jnp.asarray(lr_fraction))


@partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _train_vs_linear(widths, activation, parameterization, num_steps, keys, x_train, y_train, x_test, lr_fraction):
    spec = MLPSpec(widths, activation, parameterization, use_bias=False)
    params0 = spec.init_ensemble(keys)
    n = x_train.shape[0]
    x_all = jnp.concatenate([x_train, x_test])

    def one(p0):
        k0 = ntk_layerwise(spec, p0, x_all)
        k_train = k0[:n, :n]
        lr = lr_fraction * max_stable_lr(k_train)
        result = train_gd(batch_loss(spec), p0, lr, num_steps, record_every=num_steps, data=(x_train, y_train))
        k_final = ntk_layerwise(spec, result.params, x_train)
        change = jnp.linalg.norm(k_final - k_train) / jnp.linalg.norm(k_train)
        f0 = spec(p0, x_all)[:, 0]
        _, f_lin_test = linear_model_prediction(k_train, k0[n:, :n], f0[:n], f0[n:], y_train[:, 0], lr,
                                                num_steps=num_steps)
        f_net_test = spec(result.params, x_test)[:, 0]
        return LazyTrainingReport(change, f_net_test, f_lin_test, f0[n:], result.final_loss, result.diverged, lr)

    return jax.vmap(one)(params0)
