"""Fully connected networks of the book: one frozen, hashable description (``MLPSpec``) and its module.

One description serves everything. ``MLPSpec`` fixes the architecture and its parameterization;
from it come the Flax NNX module (``spec.module(key)``), the parameters (``spec.init(key)``,
``spec.init_ensemble(keys)``), the pure forward pass (``spec(params, x)``: the spec *is* the apply
function), the per-layer inputs and pre-activations (``spec.trace``), the empirical kernels
(``overparam.kernels.empirical``), the closed-form infinite-width kernels where they exist
(``overparam.kernels.analytic``) and the curvature (``overparam.curvature``). Because the spec is a
frozen dataclass of plain values, it is hashed by value: two equal specs passed as a static
argument of ``jax.jit`` share one compilation.

Conventions (layer l = 1..L, widths ``(n_0 = d_in, n_1, ..., n_L = d_out)``, a_0 = x):

* ``ntk``:        W_l, b_l ~ N(0, 1);  h_l = sigma_w * a_{l-1} @ W_l / sqrt(n_{l-1}) + sigma_b * b_l
* ``standard``:   W_l ~ N(0, sigma_w^2 / n_{l-1}), b_l ~ N(0, sigma_b^2);  h_l = a_{l-1} @ W_l + b_l
* ``mean_field``: as ``ntk`` except the last layer, h_L = sigma_w * a_{L-1} @ W_L / n_{L-1} + sigma_b * b_L

a_l = activation(norm(h_l)) for l < L and the output is f(x) = norm_out(h_L) (no activation on the
output). Inputs x are (N, d_in) and outputs always (N, d_out). Each layer stores the trainable ``w``
(n_{l-1}, n_l) and ``b`` (n_l,) as ``nnx.Param``; the multipliers w_mult, b_mult in front of them
(``MLPSpec.layer_scales``) are fixed, so that h_l = w_mult * a @ w + b_mult * b in every
parameterization. With ``sigma_b = 0`` in the ``ntk``/``mean_field`` parameterizations the biases
exist but have no effect (b_mult = 0); ``use_bias=False`` removes them. All initial values of one
network come from a single ``jax.random.normal(key, (total,))`` draw, cut layer by layer into w then b.

Normalization (``NORMALIZATIONS``; no learned scale or shift, eps = 1e-5 inside the square roots):

* ``"none"``: the plain network.
* ``"bn_last"``: the output standardized over the batch, per output unit (Karakida et al., 2019).
* ``"center_last"``: only the mean subtraction of ``bn_last``.
* ``"bn_middle"``: every hidden pre-activation unit standardized over the batch, before the activation.
* ``"ln_middle"``: every hidden pre-activation standardized over its units (per example), before the activation.

The batch normalizations (``BATCH_COUPLED``) couple the examples of a batch: such a network must see
the whole batch at once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from functools import partial
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.flatten_util import ravel_pytree

PARAMETERIZATIONS = ("ntk", "standard", "mean_field")
NORMALIZATIONS = ("none", "bn_last", "center_last", "bn_middle", "ln_middle")
BATCH_COUPLED = ("bn_last", "center_last", "bn_middle")
NORM_EPS = 1e-5


def _quadratic(x):
    return x * x


def _identity(x):
    return x


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "erf": jax.scipy.special.erf,
    "tanh": jnp.tanh,
    "linear": _identity,
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


def check_normalization(normalization: str) -> str:
    """Return ``normalization`` if known, else raise ValueError listing ``NORMALIZATIONS``."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(
            f"normalization={normalization!r} is not known; allowed: {', '.join(NORMALIZATIONS)}"
        )
    return normalization


def check_widths(widths: Sequence[int]) -> tuple[int, ...]:
    """Widths as a tuple of positive ints with at least (d_in, d_out), else ValueError."""
    widths = tuple(widths)
    if len(widths) < 2 or any(int(n) != n or n < 1 for n in widths):
        raise ValueError(f"widths={widths!r} must be at least (d_in, d_out), all positive integers")
    return tuple(int(n) for n in widths)


def check_inputs(x, d_in: int):
    """x as an array of shape (N, d_in), else ValueError naming the shape received."""
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ValueError(f"x has shape {x.shape}; expected (N, {d_in}) for this network")
    return x


def layer_scales(
    n_in: int, parameterization: str, sigma_w: float, sigma_b: float, last: bool
) -> tuple[float, float, float, float]:
    """(w_std, b_std, w_mult, b_mult) of one layer: init std of w and b, multipliers in h."""
    if parameterization == "standard":
        return sigma_w / math.sqrt(n_in), sigma_b, 1.0, 1.0
    fan = n_in if (parameterization == "mean_field" and last) else math.sqrt(n_in)
    return 1.0, 1.0, sigma_w / fan, sigma_b


def batch_standardize(h, center_only: bool = False):
    """(h - mean over the batch) / std over the batch, per column; h (N, n)."""
    h = h - jnp.mean(h, axis=0, keepdims=True)
    return h if center_only else h / jnp.sqrt(jnp.mean(h * h, axis=0, keepdims=True) + NORM_EPS)


def layer_standardize(h):
    """(h - mean over units) / std over units, per example (row); h (N, n)."""
    h = h - jnp.mean(h, axis=1, keepdims=True)
    return h / jnp.sqrt(jnp.mean(h * h, axis=1, keepdims=True) + NORM_EPS)


def _normalize_hidden(h, normalization: str):
    if normalization == "bn_middle":
        return batch_standardize(h)
    if normalization == "ln_middle":
        return layer_standardize(h)
    return h


def _normalize_output(h, normalization: str):
    if normalization in ("bn_last", "center_last"):
        return batch_standardize(h, center_only=(normalization == "center_last"))
    return h


# ------------------------------------------------------------------------------ the description


@dataclasses.dataclass(frozen=True)
class MLPSpec:
    """A fully connected network, described by value (frozen, hashable); conventions in the module docstring.

    widths: (d_in, n_1, ..., n_{L-1}, d_out); activation: a name in ``ACTIVATIONS`` (hashed by
    value) or an elementwise callable (hashed by identity); parameterization: "ntk" | "standard" |
    "mean_field"; sigma_w, sigma_b: weight and bias scales; use_bias: False removes the biases;
    normalization: one of ``NORMALIZATIONS``.

    ``spec(params, x)`` is the forward pass (N, d_in) -> (N, d_out) for params from ``spec.init``.
    """

    widths: tuple[int, ...]
    activation: str | Callable = "relu"
    parameterization: str = "ntk"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    use_bias: bool = True
    normalization: str = "none"

    def __post_init__(self):
        set_ = partial(object.__setattr__, self)
        set_("widths", check_widths(self.widths))
        get_activation(self.activation)
        check_parameterization(self.parameterization)
        check_normalization(self.normalization)
        set_("sigma_w", float(self.sigma_w))
        set_("sigma_b", float(self.sigma_b))
        set_("use_bias", bool(self.use_bias))

    @classmethod
    def two_layer(cls, d: int, m: int, activation="relu", parameterization: str = "ntk") -> "MLPSpec":
        """f(x) = v^T sigma(W x / sqrt(d)) / sqrt(m): widths (d, m, 1), no biases, sigma_w = 1.

        W (d, m) and v (m, 1) ~ N(0, 1) in the ``ntk`` parameterization; the parameter count is
        exactly m * (d + 1). ``mean_field`` divides the output by m instead of sqrt(m).
        """
        return cls((d, m, 1), activation, parameterization, sigma_w=1.0, sigma_b=0.0, use_bias=False)

    def replace(self, **changes) -> "MLPSpec":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def d_in(self) -> int:
        return self.widths[0]

    @property
    def d_out(self) -> int:
        return self.widths[-1]

    @property
    def num_layers(self) -> int:
        """L, the number of weight layers."""
        return len(self.widths) - 1

    @property
    def num_params(self) -> int:
        """Number of trainable scalars: sum_l n_{l-1} n_l (+ n_l with biases)."""
        return sum(a * b + (b if self.use_bias else 0) for a, b in zip(self.widths[:-1], self.widths[1:]))

    @property
    def activation_fn(self) -> Callable:
        return get_activation(self.activation)

    def layer_scales(self) -> tuple[tuple[float, float, float, float], ...]:
        """Per layer (w_std, b_std, w_mult, b_mult), layers 0..L-1 (0-indexed: layer 0 maps the input)."""
        return tuple(
            layer_scales(n_in, self.parameterization, self.sigma_w, self.sigma_b, last=(l == self.num_layers - 1))
            for l, n_in in enumerate(self.widths[:-1])
        )

    # ---- parameters
    def module(self, key) -> "MLP":
        """The NNX module with its parameters drawn from ``key`` (a typed or raw PRNG key)."""
        return MLP(self, rngs=nnx.Rngs(params=key))

    def init(self, key):
        """Params (``nnx.State`` of the module's ``nnx.Param``) from ``key``: jitted and pure (``jax.vmap`` works).

        Equal to ``nnx.state(spec.module(key), nnx.Param)``; one compilation per spec. An int key
        means ``jax.random.key(key)``.
        """
        return _init_params(jax.random.key(key) if isinstance(key, int) else key, self)

    def init_ensemble(self, keys):
        """Params of len(keys) independent inits, leaves with a leading seed axis (S, ...), compiled once.

        keys: (S, 2) raw or (S,) typed keys; seed s gives ``spec.init(keys[s])``. Batch the forward
        pass with ``jax.vmap(spec, (0, None))``.
        """
        return _init_ensemble(keys, self)

    # ---- the forward pass
    def trace(self, params, x):
        """Inputs and pre-activations of every layer: ([a_0, ..., a_{L-1}], [h_1, ..., h_L]).

        a_l: (N, n_l), the (normalized, activated) input of layer l+1; h_l: (N, n_l) before any
        normalization. The output f(x) is the normalized last pre-activation (``spec(params, x)``).
        """
        return _forward_trace(self, _layer_arrays(params), x)

    def __call__(self, params, x):
        """Network output f(x): (N, d_in) -> (N, d_out), for params with the structure of ``spec.init``."""
        return _normalize_output(self.trace(params, x)[1][-1], self.normalization)


def _layer_arrays(params):
    """[(w, b or None)] per layer from an ``nnx.State`` (or a dict) with ``params["layers"][l]["w"|"b"]``."""
    layers = params["layers"]
    out = []
    for l in range(len(layers)):
        layer = layers[l]
        w = layer["w"][...]
        b = layer["b"][...] if "b" in layer else None
        out.append((w, b))
    return out


def _forward_trace(spec: MLPSpec, layers, x):
    x = check_inputs(x, spec.d_in)
    act = spec.activation_fn
    acts, pre = [x], []
    for l, ((w, b), (_, _, w_mult, b_mult)) in enumerate(zip(layers, spec.layer_scales())):
        h = w_mult * (acts[-1] @ w)
        if b is not None:
            h = h + b_mult * b
        pre.append(h)
        if l < spec.num_layers - 1:
            acts.append(act(_normalize_hidden(h, spec.normalization)))
    return acts, pre


# ------------------------------------------------------------------------------------ the module


class Dense(nnx.Module):
    """One affine layer's parameters: w (n_in, n_out) and b (n_out,) (or None: no bias), as ``nnx.Param``."""

    def __init__(self, w, b):
        self.w = nnx.Param(w)
        self.b = None if b is None else nnx.Param(b)


@partial(jax.jit, static_argnums=1)
def _scaled_normals(key, shapes, stds):
    # One PRNG call for all layers, sliced and scaled, in one compiled function: compiling a
    # random kernel (and each eager op) per layer shape dominated building small networks on CPU.
    sizes = [math.prod(shape) for shape in shapes]
    z = jax.random.normal(key, (sum(sizes),))
    offsets = [0] + list(itertools.accumulate(sizes))
    return [std * z[i:j].reshape(shape) for i, j, shape, std in zip(offsets[:-1], offsets[1:], shapes, stds)]


class MLP(nnx.Module):
    """The NNX module of an ``MLPSpec``: f: (N, d_in) -> (N, d_out); conventions in the module docstring.

    ``self.layers[l]`` is a ``Dense`` with ``w`` (n_l, n_{l+1}) and ``b`` (n_{l+1},) (0-indexed:
    layers[0] maps the input); ``self.spec`` is the description. The forward pass is the spec's.
    """

    def __init__(self, spec: MLPSpec, *, rngs: nnx.Rngs):
        if not isinstance(spec, MLPSpec):
            raise ValueError(f"spec must be an MLPSpec, got {type(spec).__name__}")
        self.spec = spec
        widths = spec.widths
        shapes = tuple(s for n_in, n_out in zip(widths[:-1], widths[1:]) for s in ((n_in, n_out), (n_out,)))
        stds = tuple(std for w_std, b_std, _, _ in spec.layer_scales() for std in (w_std, b_std))
        arrays = _scaled_normals(rngs.params(), shapes, stds)
        self.layers = nnx.List(
            [Dense(arrays[2 * l], arrays[2 * l + 1] if spec.use_bias else None) for l in range(spec.num_layers)]
        )

    def _arrays(self):
        return [(layer.w[...], None if layer.b is None else layer.b[...]) for layer in self.layers]

    def forward_trace(self, x):
        """``spec.trace`` with the module's own parameters."""
        return _forward_trace(self.spec, self._arrays(), x)

    def __call__(self, x):
        """Network output f(x): (N, d_in) -> (N, d_out)."""
        return _normalize_output(self.forward_trace(x)[1][-1], self.spec.normalization)


@partial(jax.jit, static_argnums=1)
def _init_params(key, spec: MLPSpec):
    return nnx.state(MLP(spec, rngs=nnx.Rngs(params=key)), nnx.Param)


@partial(jax.jit, static_argnums=1)
def _init_ensemble(keys, spec: MLPSpec):
    return jax.vmap(lambda k: _init_params(k, spec))(keys)


# ------------------------------------------------------------------------------ any nnx module


def as_function(model: nnx.Module):
    """Pure view of any NNX module: (apply_fn, params) with ``apply_fn(params, x) == model(x)``.

    params is the ``nnx.State`` of the module's ``nnx.Param`` variables (a pytree: use
    ``jax.tree.map``, ``jax.grad``, ``jax.jvp``, ``jax.vmap`` on it); everything else is fixed
    inside ``apply_fn``. For an ``MLP`` this is ``(model.spec, params)``: the spec is the apply
    function, hashed by value.
    """
    params = nnx.state(model, nnx.Param)
    if isinstance(model, MLP):
        return model.spec, params
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params, x):
        return nnx.merge(graphdef, params, rest)(x)

    return apply_fn, params


def param_count(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(leaf.size for leaf in jax.tree.leaves(params)))


def flatten_params(params):
    """(vec, unflatten): params as one vector (P,) and the map back to the pytree."""
    return ravel_pytree(params)
