"""Empirical kernels of a finite network: the neural tangent kernel and the NNGP covariance.

Convention (all functions here): for a network f(params, x) with d_out = K outputs,

    Theta(x, x') = (1/K) sum_k  < d f_k(x)/d params , d f_k(x')/d params >

i.e. the gradient inner product summed over all parameters (no 1/P), averaged over outputs
(the trace of the K x K kernel divided by K). For K = 1 this is the usual empirical NTK and
the Gram matrix Theta(X, X) = J J^T of the Jacobian J (N, P). For an MLP at initialization
the K x K kernel is close to Theta(x, x') * I_K, which the trace-average recovers.

Three implementations of the same quantity, which the tests check against each other:

* ``ntk_jacobian``: J1 J2^T from explicit Jacobians (reference; memory N * P).
* ``ntk_empirical``: any ``apply_fn``; NTK-vector products, column j = J1 (J2^T e_j)
  from one vjp and one jvp, optionally in batches of columns to bound memory.
* ``ntk_mlp_layerwise``: for ``overparam.models.MLP`` only; per layer, the Gram matrix of
  the layer inputs times the Gram matrix of the backpropagated deltas (matrix products only).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def _output_dim(apply_fn, params, x):
    out = jax.eval_shape(apply_fn, params, x)
    if len(out.shape) != 2:
        raise ValueError(f"apply_fn returns shape {out.shape}; expected (N, d_out)")
    return out.shape[1]


def ntk_jacobian(apply_fn, params, x1, x2=None):
    """Empirical NTK (N1, N2) by explicit Jacobian contraction J1 J2^T (trace-averaged over outputs).

    Reference implementation: materializes the Jacobians (N, d_out, P); use only for small
    models or as a check.
    """

    def jacobian(x):
        return jax.jacrev(lambda p: apply_fn(p, x))(params)

    j1 = jacobian(x1)
    j2 = j1 if x2 is None else jacobian(x2)

    def contract(a, b):
        a = a.reshape(a.shape[0], a.shape[1], -1)
        b = b.reshape(b.shape[0], b.shape[1], -1)
        return jnp.einsum("nkp,mkp->nm", a, b)

    k = jax.tree.leaves(j1)[0].shape[1]
    return sum(jax.tree.leaves(jax.tree.map(contract, j1, j2))) / k


def ntk_empirical(apply_fn, params, x1, x2=None, *, batch_size=None):
    """Empirical NTK (N1, N2) of any ``apply_fn(params, x) -> (N, d_out)`` (trace-averaged over outputs).

    Column (j, k) is J1_k (J2_k^T e_j): the parameter gradient of f_k(x2[j]) (one vjp) pushed
    through the network at all of x1 (one jvp). ``batch_size=None`` computes all N2 * d_out
    columns at once with ``jax.vmap`` (memory ~ N2 * d_out gradients); an int computes them
    ``batch_size`` at a time with ``jax.lax.map`` (memory ~ batch_size gradients).
    """
    x2 = x1 if x2 is None else x2
    num_out = _output_dim(apply_fn, params, x1)
    n2 = x2.shape[0]

    def column(x, k):
        grad = jax.grad(lambda p: apply_fn(p, x[None])[0, k])(params)
        _, pushed = jax.jvp(lambda p: apply_fn(p, x1), (params,), (grad,))
        return pushed[:, k]

    xs = jnp.repeat(x2, num_out, axis=0)
    ks = jnp.tile(jnp.arange(num_out), n2)
    if batch_size is None:
        cols = jax.vmap(column)(xs, ks)
    else:
        cols = jax.lax.map(lambda xk: column(*xk), (xs, ks), batch_size=batch_size)
    return cols.reshape(n2, num_out, -1).sum(axis=1).T / num_out


def _bound_model(model, params):
    if params is None:
        return model
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, params, rest)


def _activation_derivative(activation, h):
    return jax.jvp(activation, (h,), (jnp.ones_like(h),))[1]


def mlp_layer_features(model, x):
    """Per-layer inputs and deltas of an ``MLP``: (acts, deltas), lists over layers l = 0..L-1.

    acts[l]: (N, n_l), the input of ``model.layers[l]``;
    deltas[l]: (N, n_{l+1}, d_out), d f_k / d h_{l+1} for each output k (deltas[-1] = identity).
    """
    acts, pre = model.forward_trace(x)
    num_out = pre[-1].shape[1]
    delta = jnp.broadcast_to(jnp.eye(num_out, dtype=pre[-1].dtype), (x.shape[0], num_out, num_out))
    deltas = [delta]
    for l in range(len(model.layers) - 1, 0, -1):
        layer = model.layers[l]
        back = layer.w_mult * jnp.einsum("ij,njk->nik", layer.w[...], delta)
        delta = back * _activation_derivative(model.activation, pre[l - 1])[:, :, None]
        deltas.append(delta)
    return acts, deltas[::-1]


def ntk_mlp_layerwise(model, x1, x2=None, *, params=None, per_layer=False):
    """Empirical NTK (N1, N2) of an ``overparam.models.MLP`` from forward and backward passes.

    Theta(x, x') = (1/K) sum_l [w_mult_l^2 <a_l(x), a_l(x')> + b_mult_l^2] <delta_l(x), delta_l(x')>
    with a_l the layer input, delta_l = d f / d h_{l+1} (summed over the K outputs), the bias
    term only where the layer has a bias. Equals ``ntk_empirical`` to rounding.

    params: optional ``nnx.State`` of the model's ``nnx.Param`` (e.g. trained, or traced under
    ``jax.jit``/``jax.vmap``); default: the model's own. per_layer=True returns the
    contribution of each layer, shape (L, N1, N2), whose sum over axis 0 is the NTK.
    """
    model = _bound_model(model, params)
    acts1, deltas1 = mlp_layer_features(model, x1)
    acts2, deltas2 = (acts1, deltas1) if x2 is None else mlp_layer_features(model, x2)
    num_out = deltas1[-1].shape[-1]
    terms = []
    for layer, a1, a2, d1, d2 in zip(model.layers, acts1, acts2, deltas1, deltas2):
        factor = layer.w_mult**2 * (a1 @ a2.T)
        if layer.b is not None:
            factor = factor + layer.b_mult**2
        delta_gram = d1.reshape(d1.shape[0], -1) @ d2.reshape(d2.shape[0], -1).T
        terms.append(factor * delta_gram / num_out)
    terms = jnp.stack(terms)
    return terms if per_layer else terms.sum(axis=0)


def nngp_empirical(outputs1, outputs2=None):
    """Monte Carlo NNGP covariance (N1, N2) from outputs of S independent inits.

    outputs1: (S, N1, K), outputs2: (S, N2, K) (default outputs1), same seeds in the same order.
    Returns (1/(S K)) sum_{s,k} f_s,k(x) f_s,k(x'): the uncentered second moment, which is the
    covariance for the zero-mean networks of ``overparam.models`` (standard error ~ 1/sqrt(S K)).
    """
    outputs2 = outputs1 if outputs2 is None else outputs2
    if outputs1.ndim != 3 or outputs2.ndim != 3 or outputs1.shape[::2] != outputs2.shape[::2]:
        raise ValueError(
            f"outputs have shapes {outputs1.shape} and {outputs2.shape}; expected (S, N1, K) and (S, N2, K)"
        )
    s, _, k = outputs1.shape
    return jnp.einsum("snk,smk->nm", outputs1, outputs2) / (s * k)


def nngp_monte_carlo(apply_fn, params_batch, x1, x2=None):
    """NNGP covariance (N1, N2) over a batch of inits: params leaves have a leading seed axis S.

    Build ``params_batch`` with ``overparam.models.init_mlp_ensemble``.
    """
    outputs = jax.vmap(apply_fn, (0, None))
    out1 = outputs(params_batch, x1)
    return nngp_empirical(out1, None if x2 is None else outputs(params_batch, x2))
