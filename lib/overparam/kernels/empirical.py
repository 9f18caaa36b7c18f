"""Empirical kernels of a finite network: the neural tangent kernel, its per-layer parts, the NNGP covariance.

This module is the book's one implementation of the empirical tangent kernel; every chapter (the
catapult's loss-normalized kernel, the Fisher's dual Gram, natural gradient's function-space
operator, the SGD spike tracker) calls it.

Convention (all functions here): for a network f(params, x) with d_out = K outputs,

    Theta(x, x') = (1/K) sum_k  < d f_k(x)/d params , d f_k(x')/d params >

i.e. the gradient inner product summed over all parameters (no 1/P), averaged over outputs
(the trace of the K x K kernel divided by K). For K = 1 this is the usual empirical NTK and
the Gram matrix Theta(X, X) = J J^T of the Jacobian J (N, P). For an MLP at initialization
the K x K kernel is close to Theta(x, x') * I_K, which the trace-average recovers. The full
(NK, NK) Gram matrix, output blocks included, is ``sum(block_grams(output_jacobian(...)))``.

``ntk(apply_fn, params, x1, x2)`` picks the implementation; the three below compute the same
quantity and the tests check them against each other:

* ``ntk_jacobian``: J1 J2^T from explicit Jacobians (reference; memory N * P).
* ``ntk_vjp_jvp``: any ``apply_fn``; NTK-vector products, column j = J1 (J2^T e_j)
  from one vjp and one jvp, optionally in batches of columns to bound memory.
* ``ntk_layerwise``: for an ``overparam.models.MLPSpec`` without normalization; per layer, the
  Gram matrix of the layer inputs times the Gram matrix of the backpropagated deltas (matrix
  products only; by far the cheapest).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from overparam.models import MLPSpec

NTK_METHODS = ("auto", "layerwise", "vjp_jvp", "jacobian")


def _output_dim(apply_fn, params, x):
    out = jax.eval_shape(apply_fn, params, x)
    if len(out.shape) != 2:
        raise ValueError(f"apply_fn returns shape {out.shape}; expected (N, d_out)")
    return out.shape[1]


# ------------------------------------------------------------------------------------ Jacobians


def output_jacobian(apply_fn, params, x, per_example: bool = True):
    """Jacobian of the stacked outputs as a pytree like params with leaves (N*K, *leaf.shape).

    Row n*K + k is d f_k(x_n) / d theta. per_example=True differentiates each example alone
    (cost ~ N single-example backward passes); it is wrong for batch-coupled networks
    (batch normalization), which need per_example=False (the whole batch, cost ~ N*K
    backward passes of the whole batch).
    """
    if per_example:
        def one(xn):
            return jax.jacrev(lambda p: apply_fn(p, xn[None])[0])(params)  # leaves (K, *shape)

        jac = jax.vmap(one)(x)  # leaves (N, K, *shape)
    else:
        jac = jax.jacrev(lambda p: apply_fn(p, x))(params)  # leaves (N, K, *shape)
    return jax.tree.map(lambda j: j.reshape(j.shape[0] * j.shape[1], *j.shape[2:]), jac)


def block_grams(jac, jac2=None):
    """Per-leaf Gram matrices J_b J2_b^T, each (N1 K, N2 K), in ``jax.tree.leaves`` order.

    jac (and jac2, default jac) from ``output_jacobian``. Their sum is the full (NK, NK) tangent
    Gram matrix; for a bias-free MLP the blocks are the layers' contributions.
    """
    jac2 = jac if jac2 is None else jac2
    flat = lambda j: j.reshape(j.shape[0], -1)
    return [flat(a) @ flat(b).T for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(jac2))]


def ntk_jacobian(apply_fn, params, x1, x2=None, *, per_example: bool = False):
    """Empirical NTK (N1, N2) by explicit Jacobian contraction J1 J2^T (trace-averaged over outputs).

    Reference implementation: materializes the Jacobians (N, d_out, P); use only for small
    models or as a check. per_example: differentiate example by example (``output_jacobian``).
    """
    j1 = output_jacobian(apply_fn, params, x1, per_example)
    j2 = j1 if x2 is None else output_jacobian(apply_fn, params, x2, per_example)
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    k = jax.tree.leaves(j1)[0].shape[0] // n1

    def contract(a, b):
        a = a.reshape(n1, k, -1)
        b = b.reshape(n2, k, -1)
        return jnp.einsum("nkp,mkp->nm", a, b)

    return sum(jax.tree.leaves(jax.tree.map(contract, j1, j2))) / k


def ntk_vjp_jvp(apply_fn, params, x1, x2=None, *, batch_size=None):
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


# ------------------------------------------------------------------------ layer-wise, for MLPs


def _check_plain_mlp(spec):
    if not isinstance(spec, MLPSpec):
        raise ValueError(f"the layer-wise kernel needs an overparam.models.MLPSpec, got {type(spec).__name__}")
    if spec.normalization != "none":
        raise ValueError(
            f"the layer-wise kernel is for networks without normalization; got normalization={spec.normalization!r}"
            " (use method='vjp_jvp' or 'jacobian')"
        )


def _activation_derivative(activation, h):
    return jax.jvp(activation, (h,), (jnp.ones_like(h),))[1]


def mlp_layer_features(spec: MLPSpec, params, x):
    """Per-layer inputs and deltas of an MLP: (acts, deltas), lists over layers l = 0..L-1.

    acts[l]: (N, n_l), the input of layer l (0-indexed); deltas[l]: (N, n_{l+1}, d_out),
    d f_k / d h_{l+1} for each output k (deltas[-1] = identity). Needs ``normalization="none"``.
    """
    _check_plain_mlp(spec)
    acts, pre = spec.trace(params, x)
    num_out = pre[-1].shape[1]
    scales = spec.layer_scales()
    delta = jnp.broadcast_to(jnp.eye(num_out, dtype=pre[-1].dtype), (x.shape[0], num_out, num_out))
    deltas = [delta]
    for l in range(spec.num_layers - 1, 0, -1):
        w = params["layers"][l]["w"][...]
        back = scales[l][2] * jnp.einsum("ij,njk->nik", w, delta)
        delta = back * _activation_derivative(spec.activation_fn, pre[l - 1])[:, :, None]
        deltas.append(delta)
    return acts, deltas[::-1]


def ntk_layerwise(spec: MLPSpec, params, x1, x2=None, *, per_layer: bool = False):
    """Empirical NTK (N1, N2) of the MLP ``spec`` at ``params``, from forward and backward passes.

    Theta(x, x') = (1/K) sum_l [w_mult_l^2 <a_l(x), a_l(x')> + b_mult_l^2] <delta_l(x), delta_l(x')>
    with a_l the layer input, delta_l = d f / d h_{l+1} (summed over the K outputs), the bias
    term only where the layer has a bias. Equals ``ntk_vjp_jvp`` to rounding. params may be
    traced (under ``jax.jit``/``jax.vmap``). per_layer=True returns the contribution of each
    layer, shape (L, N1, N2), whose sum over axis 0 is the NTK.
    """
    acts1, deltas1 = mlp_layer_features(spec, params, x1)
    acts2, deltas2 = (acts1, deltas1) if x2 is None else mlp_layer_features(spec, params, x2)
    num_out = deltas1[-1].shape[-1]
    terms = []
    for (_, _, w_mult, b_mult), a1, a2, d1, d2 in zip(spec.layer_scales(), acts1, acts2, deltas1, deltas2):
        factor = w_mult**2 * (a1 @ a2.T)
        if spec.use_bias:
            factor = factor + b_mult**2
        delta_gram = d1.reshape(d1.shape[0], -1) @ d2.reshape(d2.shape[0], -1).T
        terms.append(factor * delta_gram / num_out)
    terms = jnp.stack(terms)
    return terms if per_layer else terms.sum(axis=0)


def ntk(apply_fn, params, x1, x2=None, *, method: str = "auto", batch_size=None):
    """Empirical NTK (N1, N2) of ``apply_fn`` at ``params`` (trace-averaged over outputs; module docstring).

    method: "layerwise" (an ``MLPSpec`` without normalization), "vjp_jvp" (any apply_fn; batch_size
    bounds its memory), "jacobian" (explicit Jacobians), or "auto": layerwise where it applies,
    else vjp_jvp.
    """
    if method not in NTK_METHODS:
        raise ValueError(f"method={method!r} is not known; allowed: {', '.join(NTK_METHODS)}")
    if method == "auto":
        plain = isinstance(apply_fn, MLPSpec) and apply_fn.normalization == "none"
        method = "layerwise" if plain else "vjp_jvp"
    if method == "layerwise":
        return ntk_layerwise(apply_fn, params, x1, x2)
    if method == "jacobian":
        return ntk_jacobian(apply_fn, params, x1, x2)
    return ntk_vjp_jvp(apply_fn, params, x1, x2, batch_size=batch_size)


def ntk_top_eigenvalue(apply_fn, params, x, *, method: str = "jacobian"):
    """lambda_max(Theta(X, X)) / N: the curvature of ``mse_loss`` along the top kernel direction (scalar output).

    GD on the linearized model is stable iff lr < 2 / this value (``overparam.training.max_stable_lr``).
    The default builds Theta from per-example gradients (memory N * P plus one example's activations).
    """
    out = jax.eval_shape(apply_fn, params, x)
    if out.shape != (x.shape[0], 1):
        raise ValueError(f"apply_fn returns shape {out.shape}; expected a scalar output, ({x.shape[0]}, 1)")
    if method == "jacobian":
        gram = ntk_jacobian(apply_fn, params, x, per_example=True)
    else:
        gram = ntk(apply_fn, params, x, method=method)
    return jnp.linalg.eigvalsh(gram)[-1] / x.shape[0]


# ------------------------------------------------------------------------------------------ NNGP


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

    Build ``params_batch`` with ``MLPSpec.init_ensemble``.
    """
    outputs = jax.vmap(apply_fn, (0, None))
    out1 = outputs(params_batch, x1)
    return nngp_empirical(out1, None if x2 is None else outputs(params_batch, x2))
