"""Parallel networks of narrow depth-L ReLU subnetworks (and a ResNet variant) under weight decay.

A *parallel network* (Zhang & Wang, ICLR 2023) is a sum of M independent subnetworks,

    f(x) = b + sum_{j=1..M} f_j(x),   f_j(x) = W_{j,L}^T relu(W_{j,L-1}^T ... relu(W_{j,1}^T [x; 1])),

each of depth L and width w. Conventions (every function in this module):

* The input gets a constant 1 appended, so the first layer's bias is a row of W_{j,1};
  hidden layers have no bias. Each f_j is then positively homogeneous of degree 1 in each
  layer: multiplying W_{j,l} by alpha_l > 0 with prod_l alpha_l = 1 leaves f_j unchanged,
  which is the symmetry behind ``overparam.derivations.weight_decay``.
* The output bias b is a scalar, not penalized (it carries the mean of y).
* Weight decay is L2 in the loss: ``penalized_loss`` = mse_loss + lam * sum_{j,l} ||W_{j,l}||_F^2
  (``l2_penalty``), with ``mse_loss`` = 1/(2N) sum (f - y)^2 from ``overparam.training``.
* Standard (fan-in) initialization, W_l ~ N(0, 2 / fan_in) for hidden layers and N(0, 1 / (fan_in M))
  for the output layer, so f(x) = O(1) at initialization for any M. The layer norms therefore
  start *unbalanced* (||W_1||, ||W_2|| ~ sqrt(w), ||W_L|| ~ 1/sqrt(M)). ``knots=(lo, hi)``
  moves the first-layer bias so that each first-layer unit has its kink at a uniform point of
  [lo, hi] (a data-range initialization, as for splines); the weight rows keep their draw.

params is a dict {"layers": (W_1 (M, d_in + 1, w), W_2 (M, w, w), ..., W_L (M, w, d_out)), "bias": (d_out,)}.

The ResNet variant (``resnet_init`` / ``resnet_apply``) keeps the same params layout, but the
blocks act in sequence on a residual stream h in R^r, h_0 = [x; 1; 0] (r = d_in + 2):
h_j = h_{j-1} + g_j(h_{j-1}) with g_j a depth-L block of the same form (W_{j,1}: (r, w), W_{j,L}:
(w, r)) and the output f(x) = b + last coordinate of h_M. Every block is positively homogeneous
in its own layers, so the rescaling argument and the balance carry over block by block (a
stationary point has equal layer norms within each block), and the minimal weight decay over
rescalings is still lam L sum_j c_j^{2/L}. The *dictionary* reading does not carry over: the
blocks compose, so f is not a linear combination sum_j c_j phi_j of fixed unit-scale functions
phi_j, and sum_j c_j^{2/L} is not an l^{2/L} quasi-norm of the coefficients of an expansion of f
(a block's effect depends on the blocks before and after it). Sparsity of the active blocks is
then an empirical observation for the ResNet, not a consequence of the l^p theorem.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from overparam import training


# ------------------------------------------------------------------------------------ target


def doppler(t, eps: float = 0.2):
    """Doppler-like function on t in [0, 1]: sqrt(t (1 - t)) sin(2 pi (1 + eps) / (t + eps)).

    Smooth on the right, oscillating ever faster towards t = 0 (local frequency ~ 1/(t + eps)^2):
    the standard example of inhomogeneous smoothness (Donoho & Johnstone use eps = 0.05, which
    is unresolvable with a few hundred samples; eps = 0.2 keeps the wiggles resolvable).
    """
    t = jnp.asarray(t)
    return jnp.sqrt(jnp.clip(t * (1 - t), 0.0)) * jnp.sin(2 * jnp.pi * (1 + eps) / (t + eps))


def spiky_wave(t):
    """A smooth wave with two sharp spikes on t in [0, 1]: 0.5 sin(2 pi t) + tri((t - 0.2)/0.03) - tri((t - 0.35)/0.02).

    tri(u) = max(0, 1 - |u|): a spike of height 1 and half-width 0.03 at t = 0.2 and a dip of
    depth 1 and half-width 0.02 at t = 0.35. Inhomogeneous smoothness of the simplest kind: a
    kernel needs a bandwidth ~0.01 for the spikes and ~0.1 for the wave; a sparse sum of
    ReLU pieces needs a handful of kinks for each spike and few for the wave.
    """
    t = jnp.asarray(t)

    def tri(u):
        return jnp.maximum(0.0, 1.0 - jnp.abs(u))

    return 0.5 * jnp.sin(2 * jnp.pi * t) + tri((t - 0.2) / 0.03) - tri((t - 0.35) / 0.02)


TARGETS = {"doppler": doppler, "spiky": spiky_wave}


def regression_data(key, target: str, num_train: int, noise: float, num_test: int = 1000):
    """Noisy samples of a target in ``TARGETS`` on a uniform random design, and a clean test grid.

    Returns (x_train (n, 1), y_train (n, 1), x_test (num_test, 1), f_test (num_test, 1)) with the
    network input x = 2 t - 1 in [-1, 1] (t in [0, 1] the target's argument); y = f + noise * N(0, 1);
    the test grid is uniform in t and f_test is noise-free (test MSE = estimation error).
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not known; allowed: {', '.join(TARGETS)}")
    if num_train < 1 or noise < 0 or num_test < 1:
        raise ValueError(f"num_train={num_train}, num_test={num_test} must be >= 1 and noise={noise} >= 0")
    return _sample(key, target, int(num_train), noise, int(num_test))


@partial(jax.jit, static_argnames=("target", "num_train", "num_test"))
def _sample(key, target, num_train, noise, num_test):
    f = TARGETS[target]
    z = jax.random.normal(key, (2, num_train))
    t = jnp.sort(jax.scipy.stats.norm.cdf(z[0]))  # uniform design (one random call: cheaper to compile)
    y = f(t) + noise * z[1]
    t_test = jnp.linspace(0.0, 1.0, num_test)
    return (2 * t - 1)[:, None], y[:, None], (2 * t_test - 1)[:, None], f(t_test)[:, None]


# ---------------------------------------------------------------------------------- networks


def _check_sizes(num_subnets, width, depth):
    for name, value in (("num_subnets", num_subnets), ("width", width), ("depth", depth)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if depth < 2:
        raise ValueError(f"depth={depth} must be >= 2 (at least one hidden ReLU layer)")


@partial(jax.jit, static_argnames=("fan_ins", "fan_outs", "num_subnets", "knots"))
def _init_layers(key, fan_ins, fan_outs, num_subnets, out_scale, knots=None):
    # One jitted normal draw for everything: each distinct jax.random call costs ~1 s of compile on CPU.
    shapes = [(num_subnets, n_in, n_out) for n_in, n_out in zip(fan_ins, fan_outs)]
    sizes = [int(np.prod(s)) for s in shapes]
    z = jax.random.normal(key, (sum(sizes) + num_subnets * fan_outs[0],))
    layers, start = [], 0
    for l, (shape, size) in enumerate(zip(shapes, sizes)):
        last = l == len(shapes) - 1
        std = np.sqrt((1.0 / num_subnets if last else 2.0) / shape[1]) * (out_scale if last else 1.0)
        layers.append(std * z[start : start + size].reshape(shape))
        start += size
    if knots is not None:
        # first-layer unit i of subnetwork j has its kink at x = u ~ U(knots): bias row = -u * weight row
        lo, hi = knots
        u = lo + (hi - lo) * jax.scipy.stats.norm.cdf(z[start:].reshape(num_subnets, 1, fan_outs[0]))
        layers[0] = layers[0].at[:, -1:, :].set(-u * layers[0][:, :1, :])
    return tuple(layers)


def parallel_init(key, num_subnets: int, width: int, depth: int, d_in: int = 1, d_out: int = 1, out_scale: float = 1.0,
                  knots=None):
    """Params of a parallel network of ``num_subnets`` subnetworks of width ``width`` and depth ``depth``.

    Layout and initialization in the module docstring; ``out_scale`` multiplies the output
    layer's init std. Pure in ``key`` (``jax.vmap`` over keys works).
    """
    _check_sizes(num_subnets, width, depth)
    fan_ins = (d_in + 1,) + (width,) * (depth - 1)
    fan_outs = (width,) * (depth - 1) + (d_out,)
    knots = None if knots is None else (float(knots[0]), float(knots[1]))
    layers = _init_layers(key, fan_ins, fan_outs, int(num_subnets), out_scale, knots)
    return {"layers": layers, "bias": jnp.zeros((d_out,))}


def _block(layers, z):
    """One subnetwork on feature-major inputs: z (n_in, N) -> (n_out, N); layers: (n_in, n_out) matrices.

    Feature-major (N last) because XLA on CPU runs the batched tiny matmuls of many narrow
    subnetworks ~3x faster this way than with N first.
    """
    for w in layers[:-1]:
        z = jax.nn.relu(jnp.einsum("...kj,...kn->...jn", w, z))
    return jnp.einsum("...kj,...kn->...jn", layers[-1], z)


def _with_one(x):
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x has shape {x.shape}; expected (N, d_in)")
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)


@jax.jit
def subnet_outputs(params, x):
    """Each subnetwork's output f_j(x): (M, N, d_out) for x (N, d_in)."""
    xt = _with_one(x)
    if xt.shape[1] != params["layers"][0].shape[1]:
        raise ValueError(f"x has {x.shape[1]} features; this network takes {params['layers'][0].shape[1] - 1}")
    # layers carry the subnetwork axis M in front: one batched einsum per layer
    return jnp.swapaxes(_block(params["layers"], xt.T[None]), 1, 2)


@jax.jit
def parallel_apply(params, x):
    """f(x) = b + sum_j f_j(x): (N, d_out) for x (N, d_in)."""
    return params["bias"] + subnet_outputs(params, x).sum(axis=0)


def resnet_init(key, num_blocks: int, width: int, depth: int, d_in: int = 1, out_scale: float = 1.0):
    """Params of the ResNet variant: ``num_blocks`` residual blocks on a stream of size d_in + 2.

    Same layout as ``parallel_init`` with W_{j,1}: (r, w) and W_{j,L}: (w, r), r = d_in + 2; the
    output is the last stream coordinate (d_out = 1).
    """
    _check_sizes(num_blocks, width, depth)
    r = d_in + 2
    fan_ins = (r,) + (width,) * (depth - 1)
    fan_outs = (width,) * (depth - 1) + (r,)
    return {"layers": _init_layers(key, fan_ins, fan_outs, int(num_blocks), out_scale), "bias": jnp.zeros((1,))}


@jax.jit
def resnet_apply(params, x):
    """ResNet variant: h_0 = [x; 1; 0], h_j = h_{j-1} + g_j(h_{j-1}), f = b + h_M[:, -1:] -> (N, 1)."""
    xt = _with_one(x)
    r = params["layers"][0].shape[1]
    if xt.shape[1] + 1 != r:
        raise ValueError(f"x has {x.shape[1]} features; this network takes {r - 2}")
    h0 = jnp.concatenate([xt, jnp.zeros((xt.shape[0], 1), xt.dtype)], axis=1).T  # (r, N)

    def step(h, layers):
        return h + _block(layers, h), None

    h, _ = jax.lax.scan(step, h0, params["layers"], unroll=4)
    return params["bias"] + h[-1][:, None]


# --------------------------------------------------------------------------- norms, balance


@jax.jit
def l2_penalty(params):
    """sum_{j,l} ||W_{j,l}||_F^2 over all layers of all subnetworks (the output bias excluded)."""
    return sum(jnp.sum(w**2) for w in params["layers"])


@jax.jit
def layer_norms(params):
    """Frobenius norms ||W_{j,l}||: (M, L); works for parallel and ResNet params (and under vmap)."""
    return jnp.stack([jnp.sqrt(jnp.sum(w**2, axis=(-2, -1))) for w in params["layers"]], axis=-1)


@jax.jit
def subnet_scales(params):
    """c_j = prod_l ||W_{j,l}||: (M,). |f_j(x)| <= c_j ||[x; 1]||, and weight decay acts as L c_j^{2/L}."""
    return jnp.prod(layer_norms(params), axis=-1)


@partial(jax.jit, static_argnames=("rel_threshold", "abs_threshold"))
def active_subnets(params, rel_threshold: float = 1e-2, abs_threshold: float = 1e-8):
    """Boolean (M,): subnetworks with c_j >= rel_threshold * max_k c_k and c_j > abs_threshold.

    c_j = prod_l ||W_{j,l}|| bounds the subnetwork's output on inputs of norm ~1
    (||[x; 1]|| <= sqrt(2) for x in [-1, 1]). Weight decay drives switched-off subnetworks
    towards 0 (by many orders of magnitude in practice), and the l^p thresholding of ``derivations.weight_decay.lp_threshold``
    leaves a gap between them and the active ones; a subnetwork below 1% of the largest (the
    default) is either switched off or still on its way there.
    """
    if not 0 < rel_threshold < 1:
        raise ValueError(f"rel_threshold={rel_threshold!r} must be in (0, 1)")
    c = subnet_scales(params)
    return (c >= rel_threshold * c.max(axis=-1, keepdims=True)) & (c > abs_threshold)


def num_active(params, rel_threshold: float = 1e-2) -> jax.Array:
    """Number of active subnetworks (``active_subnets``); batched params give a batch of counts."""
    return active_subnets(params, rel_threshold).sum(axis=-1)


@jax.jit
def balance_ratio(params):
    """max_l ||W_{j,l}|| / min_l ||W_{j,l}|| for each subnetwork: (M,), 1 = perfectly balanced (nan if all 0)."""
    norms = layer_norms(params)
    return norms.max(axis=-1) / norms.min(axis=-1)


@jax.jit
def rebalance(params):
    """The same function with every subnetwork's layers rescaled to equal norms (prod_l ||W_{j,l}||)^{1/L}.

    Multiplies W_{j,l} by alpha_{j,l} = (prod_k ||W_{j,k}||)^{1/L} / ||W_{j,l}|| (prod_l alpha_{j,l} = 1),
    which leaves each f_j unchanged (positive homogeneity) and lowers ``l2_penalty`` to its
    minimum over rescalings, L * sum_j c_j^{2/L}. Subnetworks with a zero layer are left as they are.
    """
    norms = layer_norms(params)
    depth = norms.shape[-1]
    target = jnp.prod(norms, axis=-1, keepdims=True) ** (1.0 / depth)
    alpha = jnp.where(norms > 0, target / jnp.where(norms > 0, norms, 1.0), 1.0)
    alpha = jnp.where(jnp.all(norms > 0, axis=-1, keepdims=True), alpha, 1.0)
    layers = tuple(w * alpha[..., l, None, None] for l, w in enumerate(params["layers"]))
    return {**params, "layers": layers}


@partial(jax.jit, static_argnames=("rel_threshold",))
def worst_active_balance(params, rel_threshold: float = 1e-2):
    """Largest ``balance_ratio`` among the active subnetworks (nan if none is active)."""
    active = active_subnets(params, rel_threshold)
    ratio = jnp.where(active, balance_ratio(params), 0.0)
    return jnp.where(active.any(axis=-1), ratio.max(axis=-1), jnp.nan)


# ---------------------------------------------------------------------------------- training


def penalized_loss(apply_fn, x, y, lam):
    """loss(params) = mse_loss(apply_fn(params, x), y) + lam * l2_penalty(params)."""
    return lambda params: training.mse_loss(apply_fn(params, x), y) + lam * l2_penalty(params)


def train_weight_decay_sweep(apply_fn, params0, x, y, lams, optimizer, num_steps: int, record_every: int = 100):
    """Train one copy of ``params0`` per weight decay in ``lams`` (vmapped: compiles once).

    Minimizes ``penalized_loss`` (L2 *in the loss*, so a fixed point of the optimizer is a
    stationary point of mse + lam ||theta||^2, where the rescaling balance holds) with
    ``overparam.training.train_optax`` and the given optax ``optimizer``. Records the layer
    norms (M, L) every ``record_every`` steps. Returns a ``TrainResult`` with a leading axis
    len(lams) on every field; ``records`` has shape (len(lams), R, M, L).
    """
    lams = jnp.asarray(lams, dtype=jnp.float32)
    if lams.ndim != 1 or bool(jnp.any(lams < 0)):
        raise ValueError(f"lams must be a 1-D array of weight decays >= 0, got {lams}")

    def run(lam):
        return training.train_optax(
            penalized_loss(apply_fn, x, y, lam), params0, optimizer, num_steps, record_every,
            divergence_threshold=1e6, observe=layer_norms,
        )

    return jax.vmap(run)(lams)


# --------------------------------------------------------------------- polishing and balance


def polish_lbfgs(apply_fn, params, x, y, lams, num_steps: int = 2000):
    """Float64 full-batch L-BFGS on ``penalized_loss`` from each of a batch of solutions.

    ``params`` carries a leading axis len(lams) (as returned by ``train_weight_decay_sweep``);
    each copy is refined at its own weight decay with ``optax.lbfgs`` (zoom line search) for
    ``num_steps`` iterations, vmapped over the weight decays. Runs under ``jax.enable_x64``;
    returns (params, grad_norm) in float64, grad_norm (len(lams),) the norm of the full penalized
    gradient (all layers and the output bias) at the returned point.
    """
    import optax

    with jax.enable_x64(True):
        x64, y64 = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        lams64 = jnp.asarray(lams, jnp.float64)
        opt = optax.lbfgs()

        def run(p, lam):
            loss = penalized_loss(apply_fn, x64, y64, lam)
            value_and_grad = optax.value_and_grad_from_state(loss)

            def step(carry, _):
                p, state = carry
                value, grad = value_and_grad(p, state=state)
                updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
                return (optax.apply_updates(p, updates), state), None

            (p, _), _ = jax.lax.scan(step, (p, opt.init(p)), None, length=num_steps)
            g = jax.grad(loss)(p)
            return p, jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(g)))

        return jax.jit(jax.vmap(run))(p64, lams64)


def balance_certificate(apply_fn, params, x, y, lam, rel_threshold: float = 1e-2):
    """The exact imbalance identity and the balance bound it implies, for one solution.

    Rescaling layers l and l+1 of block j by (alpha, 1/alpha) leaves the data loss unchanged,
    so <grad_l mse, W_l> = <grad_{l+1} mse, W_{l+1}>, and with G = grad(mse + lam ||W||^2):

        ||W_l||^2 - ||W_{l+1}||^2 = (<G_l, W_l> - <G_{l+1}, W_{l+1}>) / (2 lam)      (exact),
        |D_{j,l}| <= (||G_l|| ||W_l|| + ||G_{l+1}|| ||W_{l+1}||) / (2 lam) =: B_{j,l}.

    Chaining over l, max_l ||W_l||^2 - min_l ||W_l||^2 <= sum_l B_{j,l}, hence the certified
    ratio bound max/min <= sqrt(1 + sum_l B_{j,l} / min_l ||W_l||^2). Returns a dict of arrays:
    ``imbalance`` and ``identity`` (M, L - 1) (equal up to rounding), ``bound_ratio`` (M,)
    (nan where a layer norm is 0), ``ratio`` (M,) the measured ``balance_ratio``, ``active`` (M,)
    and ``worst_bound`` / ``worst_ratio`` (max over active blocks). Works for parallel and
    ResNet params (one solution: no leading sweep axis); use float64 for small lam.
    """
    g = jax.grad(penalized_loss(apply_fn, x, y, lam))(params)["layers"]
    w = params["layers"]
    inner = jnp.stack([jnp.sum(gl * wl, axis=(-2, -1)) for gl, wl in zip(g, w)], axis=-1)
    gnorm = jnp.stack([jnp.sqrt(jnp.sum(gl**2, axis=(-2, -1))) for gl in g], axis=-1)
    wnorm = layer_norms(params)
    imbalance = wnorm[:, :-1] ** 2 - wnorm[:, 1:] ** 2
    identity = (inner[:, :-1] - inner[:, 1:]) / (2 * lam)
    bound = (gnorm[:, :-1] * wnorm[:, :-1] + gnorm[:, 1:] * wnorm[:, 1:]) / (2 * lam)
    nmin = wnorm.min(axis=-1)
    bound_ratio = jnp.where(nmin > 0, jnp.sqrt(1 + bound.sum(axis=-1) / jnp.where(nmin > 0, nmin, 1.0) ** 2), jnp.nan)
    active = active_subnets(params, rel_threshold)
    ratio = balance_ratio(params)
    return dict(imbalance=imbalance, identity=identity, bound_ratio=bound_ratio, ratio=ratio, active=active,
                worst_bound=jnp.max(jnp.where(active, bound_ratio, 0.0)),
                worst_ratio=jnp.max(jnp.where(active, ratio, 0.0)))
