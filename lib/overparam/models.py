"""Fully connected networks in the three parameterizations of the book, and a pure view of them.

One definition serves everything: the ``MLP`` module is the finite network; ``as_function``
turns it into ``apply_fn(params, x)`` from which the Taylor models (``overparam.taylor``),
the empirical kernels (``overparam.kernels.empirical``) and the curvature (``overparam.curvature``) are
derived.

Conventions (layer l = 1..L, widths ``(n_0 = d_in, n_1, ..., n_L = d_out)``, a_0 = x):

* ``ntk``:        W_l, b_l ~ N(0, 1);  h_l = sigma_w * a_{l-1} @ W_l / sqrt(n_{l-1}) + sigma_b * b_l
* ``standard``:   W_l ~ N(0, sigma_w^2 / n_{l-1}), b_l ~ N(0, sigma_b^2);  h_l = a_{l-1} @ W_l + b_l
* ``mean_field``: as ``ntk`` except the last layer, h_L = sigma_w * a_{L-1} @ W_L / n_{L-1} + sigma_b * b_L

a_l = activation(h_l) for l < L and the output is f(x) = h_L (no activation on the output).
Each layer stores the trainable ``w`` (n_{l-1}, n_l) and ``b`` (n_l,) as ``nnx.Param`` and the
fixed multipliers ``w_mult``, ``b_mult`` in front of them, so that h_l = w_mult * a @ w + b_mult * b
in every parameterization. With ``sigma_b = 0`` in the ``ntk``/``mean_field``
parameterizations the biases exist but have no effect (b_mult = 0); ``use_bias=False``
removes them. All initial values of one network come from a single
``jax.random.normal(rngs.params(), (total,))`` draw, cut layer by layer into w then b.
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.flatten_util import ravel_pytree

PARAMETERIZATIONS = ("ntk", "standard", "mean_field")


def _quadratic(x):
    return x * x


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "erf": jax.scipy.special.erf,
    "tanh": jnp.tanh,
    "linear": lambda x: x,
    "quadratic": _quadratic,
}


def get_activation(activation: str | Callable) -> Callable:
    """Elementwise activation for a name in ``ACTIVATIONS`` or a callable (returned as is)."""
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} is not known; allowed: {', '.join(ACTIVATIONS)} or a callable"
        )
    return ACTIVATIONS[activation]


def check_parameterization(parameterization: str) -> str:
    """Return ``parameterization`` if known, else raise ValueError listing the allowed ones."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(
            f"parameterization={parameterization!r} is not known; allowed: {', '.join(PARAMETERIZATIONS)}"
        )
    return parameterization


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Widths as a tuple of positive ints with at least (d_in, d_out), else ValueError."""
    widths = tuple(widths)
    if len(widths) < 2 or any(int(n) != n or n < 1 for n in widths):
        raise ValueError(f"widths={widths!r} must be at least (d_in, d_out), all positive integers")
    return tuple(int(n) for n in widths)


def layer_scales(
    n_in: int, parameterization: str, sigma_w: float, sigma_b: float, last: bool
) -> tuple[float, float, float, float]:
    """(w_std, b_std, w_mult, b_mult) of one layer: init std of w and b, multipliers in h."""
    if parameterization == "standard":
        return sigma_w / math.sqrt(n_in), sigma_b, 1.0, 1.0
    fan = n_in if (parameterization == "mean_field" and last) else math.sqrt(n_in)
    return 1.0, 1.0, sigma_w / fan, sigma_b


class Dense(nnx.Module):
    """One affine layer h = w_mult * a @ w + b_mult * b; a: (N, n_in) -> h: (N, n_out).

    w (n_in, n_out) and b (n_out,) (or None: no bias) are the initial values of the params.
    """

    def __init__(self, w, b, *, w_mult: float, b_mult: float):
        self.w = nnx.Param(w)
        self.b = None if b is None else nnx.Param(b)
        self.w_mult = float(w_mult)
        self.b_mult = float(b_mult)

    def __call__(self, a):
        h = self.w_mult * (a @ self.w[...])
        if self.b is not None:
            h = h + self.b_mult * self.b[...]
        return h


@partial(jax.jit, static_argnums=1)
def _scaled_normals(key, shapes, stds):
    # One PRNG call for all layers, sliced and scaled, in one compiled function: compiling a
    # random kernel (and each eager op) per layer shape dominated building small networks on CPU.
    sizes = [math.prod(shape) for shape in shapes]
    z = jax.random.normal(key, (sum(sizes),))
    offsets = [0] + list(itertools.accumulate(sizes))
    return [std * z[i:j].reshape(shape) for i, j, shape, std in zip(offsets[:-1], offsets[1:], shapes, stds)]


class MLP(nnx.Module):
    """Fully connected network f: (N, d_in) -> (N, d_out); conventions in the module docstring.

    widths: (d_in, n_1, ..., n_{L-1}, d_out); activation: a name in ``ACTIVATIONS`` or an
    elementwise callable; parameterization: "ntk" | "standard" | "mean_field".
    ``self.layers[l]`` is a ``Dense`` with ``w`` (n_l, n_{l+1}), ``b`` (n_{l+1},) and the
    multipliers ``w_mult``, ``b_mult`` (0-indexed here: layers[0] maps the input).
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str | Callable = "relu",
        parameterization: str = "ntk",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
        *,
        use_bias: bool = True,
        rngs: nnx.Rngs,
    ):
        self.widths = check_widths(widths)
        self.parameterization = check_parameterization(parameterization)
        self.activation = get_activation(activation)
        self.sigma_w, self.sigma_b, self.use_bias = float(sigma_w), float(sigma_b), bool(use_bias)
        num_layers = len(self.widths) - 1
        scales = [
            layer_scales(n_in, parameterization, self.sigma_w, self.sigma_b, last=(l == num_layers - 1))
            for l, n_in in enumerate(self.widths[:-1])
        ]
        shapes = tuple(s for n_in, n_out in zip(self.widths[:-1], self.widths[1:]) for s in ((n_in, n_out), (n_out,)))
        stds = tuple(std for w_std, b_std, _, _ in scales for std in (w_std, b_std))
        arrays = _scaled_normals(rngs.params(), shapes, stds)
        layers = []
        for l, (_, _, w_mult, b_mult) in enumerate(scales):
            w, b = arrays[2 * l], arrays[2 * l + 1]
            layers.append(Dense(w, b if use_bias else None, w_mult=w_mult, b_mult=b_mult))
        self.layers = nnx.List(layers)

    def forward_trace(self, x):
        """Inputs and pre-activations of every layer: ([a_0, ..., a_{L-1}], [h_1, ..., h_L]).

        a_{l}: (N, n_l); h_l: (N, n_l). The output f(x) is the last pre-activation h_L.
        """
        x = check_inputs(x, self.widths[0])
        acts, pre = [x], []
        for l, layer in enumerate(self.layers):
            h = layer(acts[-1])
            pre.append(h)
            if l < len(self.layers) - 1:
                acts.append(self.activation(h))
        return acts, pre

    def __call__(self, x):
        """Network output f(x): (N, d_in) -> (N, d_out)."""
        return self.forward_trace(x)[1][-1]


def check_inputs(x, d_in: int):
    """x as an array of shape (N, d_in), else ValueError naming the shape received."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"x has shape {x.shape}; expected (N, {d_in}) for this network")
    return x


def two_layer(d: int, m: int, activation="relu", parameterization: str = "ntk", *, rngs: nnx.Rngs) -> MLP:
    """f(x) = v^T sigma(W x / sqrt(d)) / sqrt(m): an ``MLP((d, m, 1))`` without biases.

    W (d, m) and v (m, 1) ~ N(0, 1) in the ``ntk`` parameterization (sigma_w = 1); the
    parameter count is exactly m * (d + 1). ``mean_field`` divides the output by m instead.
    """
    return MLP((d, m, 1), activation, parameterization, sigma_w=1.0, sigma_b=0.0, use_bias=False, rngs=rngs)


def as_function(model: nnx.Module):
    """Pure view of a module: (apply_fn, params) with ``apply_fn(params, x) == model(x)``.

    params is the ``nnx.State`` of the module's ``nnx.Param`` variables (a pytree: use
    ``jax.tree.map``, ``jax.grad``, ``jax.jvp``, ``jax.vmap`` on it); everything else in the
    module (multipliers, activation) is fixed inside ``apply_fn``. ``apply_fn`` accepts any
    params with the same structure, e.g. a trained copy or a batch under ``jax.vmap``.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params, x):
        return nnx.merge(graphdef, params, rest)(x)

    return apply_fn, params


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))


def flatten_params(params):
    """(vec, unflatten): params as one vector (P,) and the map back to the pytree."""
    return ravel_pytree(params)


def init_mlp_params(key, widths, activation="relu", parameterization="ntk", sigma_w=1.0, sigma_b=0.0, *, use_bias=True):
    """Params (``nnx.State``) of an ``MLP`` built from ``key``: jitted and pure, so ``jax.vmap`` over keys works.

    The structure matches ``as_function(MLP(widths, ...))[1]`` and the values those of
    ``MLP(..., rngs=nnx.Rngs(params=key))``; see ``init_mlp_ensemble`` for many seeds.
    """
    return _init_params(key, check_widths(widths), activation, parameterization, float(sigma_w), float(sigma_b), bool(use_bias))


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5, 6))
def _init_params(key, widths, activation, parameterization, sigma_w, sigma_b, use_bias):
    model = MLP(widths, activation, parameterization, sigma_w, sigma_b, use_bias=use_bias, rngs=nnx.Rngs(params=key))
    return nnx.state(model, nnx.Param)


def mlp_apply_fn(widths, activation="relu", parameterization="ntk", sigma_w=1.0, sigma_b=0.0, *, use_bias=True):
    """``apply_fn(params, x)`` of the ``MLP`` with this configuration, for params from ``init_mlp_params``.

    Built from an abstract model (``nnx.eval_shape``): no parameters are drawn.
    """
    template = nnx.eval_shape(
        lambda: MLP(widths, activation, parameterization, sigma_w, sigma_b, use_bias=use_bias, rngs=nnx.Rngs(0))
    )
    return as_function(template)[0]


def init_mlp_ensemble(keys, widths, activation="relu", parameterization="ntk", sigma_w=1.0, sigma_b=0.0, *, use_bias=True):
    """(apply_fn, params) for len(keys) independent inits, compiled once.

    keys: (S, 2) raw or (S,) typed keys. params leaves carry a leading seed axis (S, ...);
    apply_fn is for one set of params, so batch it with ``jax.vmap(apply_fn, (0, None))``.
    Seed s gives the same params as ``MLP(..., rngs=nnx.Rngs(params=keys[s]))``.
    """
    config = (check_widths(widths), activation, parameterization, float(sigma_w), float(sigma_b), bool(use_bias))
    params = jax.vmap(lambda k: _init_params(k, *config))(keys)
    return mlp_apply_fn(*config[:5], use_bias=use_bias), params
