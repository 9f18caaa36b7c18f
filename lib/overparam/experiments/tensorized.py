"""Tensor-train (TT) factorized dense layers and a TT-MLP, as pure functions over pytrees.

A dense matrix W of shape (M, N) with M = m_1...m_d and N = n_1...n_d is stored as d cores
G_k of shape (r_{k-1}, m_k, n_k, r_k), r_0 = r_d = 1 (Oseledets 2011; Novikov et al. 2015):

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] G_2[:, i_2, j_2, :] ... G_d[:, i_d, j_d, :],

row index (i_1..i_d) and column index (j_1..j_d) both row-major (i_1 most significant), so
``x @ tt_full_matrix(cores)`` is the layer on inputs x (B, M). The forward pass never forms W:
``tt_matvec`` contracts x with one core at a time (``tt_macs`` counts its multiply-adds).
A single core (d = 1, no ranks) is an ordinary dense matrix, which is how the dense baseline
is built: one code path for both. Layers use the *standard* parameterization (entries of the
full W have variance 1/M at initialization, He-style gain for ReLU), biases start at zero;
the classification loss is the mean softmax cross-entropy over examples.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import optax

from overparam.training import run_loop, softmax_cross_entropy


def _check_modes(in_modes, out_modes, ranks):
    in_modes, out_modes, ranks = tuple(int(m) for m in in_modes), tuple(int(n) for n in out_modes), tuple(int(r) for r in ranks)
    if len(in_modes) != len(out_modes) or len(in_modes) < 1:
        raise ValueError(f"in_modes={in_modes} and out_modes={out_modes} must be non-empty and of equal length")
    if len(ranks) != len(in_modes) - 1:
        raise ValueError(f"ranks={ranks}: expected {len(in_modes) - 1} internal ranks for {len(in_modes)} modes")
    if min(in_modes + out_modes + ranks, default=1) < 1:
        raise ValueError(f"modes and ranks must be >= 1, got in_modes={in_modes}, out_modes={out_modes}, ranks={ranks}")
    return in_modes, out_modes, ranks


def tt_core_shapes(in_modes, out_modes, ranks):
    """Shapes (r_{k-1}, m_k, n_k, r_k) of the d cores, with boundary ranks r_0 = r_d = 1."""
    in_modes, out_modes, ranks = _check_modes(in_modes, out_modes, ranks)
    full = (1,) + ranks + (1,)
    return [(full[k], in_modes[k], out_modes[k], full[k + 1]) for k in range(len(in_modes))]


def tt_param_count(in_modes, out_modes, ranks) -> int:
    """Number of weights sum_k r_{k-1} m_k n_k r_k (no bias); the dense layer has M N."""
    return sum(math.prod(s) for s in tt_core_shapes(in_modes, out_modes, ranks))


def tt_macs(in_modes, out_modes, ranks) -> int:
    """Multiply-adds of ``tt_matvec`` per example: sum_k (n_1..n_{k-1}) r_{k-1} m_k n_k r_k (m_{k+1}..m_d).

    Step k contracts the running tensor (n_1..n_{k-1}, m_k..m_d, r_{k-1}) with core k over
    (m_k, r_{k-1}). For d = 1 this is M N, the dense matvec.
    """
    shapes = tt_core_shapes(in_modes, out_modes, ranks)
    total = 0
    for k, (r0, m, n, r1) in enumerate(shapes):
        total += math.prod(out_modes[:k]) * r0 * m * n * r1 * math.prod(in_modes[k + 1 :])
    return int(total)


def tt_init(key, in_modes, out_modes, ranks, gain: float = 2.0):
    """Random cores, i.i.d. Gaussian, such that each entry of the full W has variance gain / M.

    An entry of W is a sum over prod_k r_k rank paths of products of d core entries, so
    Var W = (prod_k r_k) prod_k v_k; every core gets v = (gain / (M prod_k r_k))^(1/d).
    """
    shapes = tt_core_shapes(in_modes, out_modes, ranks)
    d, big_m = len(shapes), math.prod(in_modes)
    std = (gain / (big_m * math.prod(ranks))) ** (0.5 / d)
    keys = jax.random.split(key, d)
    return [std * jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def tt_full_matrix(cores):
    """Contract the cores into the dense matrix W (M, N), row-major in (i_1..i_d) and (j_1..j_d)."""
    w = cores[0][0]  # (m_1, n_1, r_1)
    for core in cores[1:]:
        p, q, _ = w.shape
        _, m, n, s = core.shape
        w = jnp.einsum("pqr,rmns->pmqns", w, core).reshape(p * m, q * n, s)
    return w[..., 0]


def tt_matvec(cores, x):
    """x (B, M) -> x @ W (B, N) by d small contractions, never forming W (see ``tt_macs``)."""
    in_modes = [c.shape[1] for c in cores]
    if x.ndim != 2 or x.shape[1] != math.prod(in_modes):
        raise ValueError(f"x has shape {x.shape}; expected (B, {math.prod(in_modes)}) for in_modes {in_modes}")
    b = x.shape[0]
    t = x.reshape(b, 1, x.shape[1], 1)  # (B, outputs done, inputs left, rank)
    for core in cores:
        r0, m, n, r1 = core.shape
        done, left = t.shape[1], t.shape[2]
        t = t.reshape(b, done, m, left // m, r0)
        t = jnp.einsum("bpmar,rmns->bpnas", t, core).reshape(b, done * n, left // m, r1)
    return t[:, :, 0, 0]


def tt_mlp_init(key, layer_modes, ranks):
    """TT-MLP: TT layers, ReLU between them, none after the last. Params for ``tt_mlp_apply``.

    layer_modes: list of mode tuples, e.g. [(4,4,4), (4,8,8), (1,1,10)] for 64 -> 256 -> 10
    (a mode of size 1 is allowed); ranks: one internal rank r for every bond (int) or one
    tuple per layer. Modes of length 1 (ranks ()) give ordinary dense layers: the dense
    baseline is [(64,), (256,), (10,)]. The last layer uses gain 1 (logits), the others 2 (ReLU).
    Layers whose input modes differ from the previous layer's output modes: ``tt_mlp_init_layers``.
    """
    if len(layer_modes) < 2:
        raise ValueError(f"layer_modes={layer_modes}: need at least input and hidden modes")
    n_layers = len(layer_modes) - 1
    if isinstance(ranks, int):
        ranks = [(ranks,) * (len(layer_modes[l]) - 1) for l in range(n_layers)]
    if len(ranks) != n_layers:
        raise ValueError(f"ranks={ranks}: expected an int or {n_layers} tuples")
    return tt_mlp_init_layers(key, [(layer_modes[l], layer_modes[l + 1], ranks[l]) for l in range(n_layers)])


def tt_mlp_init_layers(key, layers):
    """TT-MLP from one (in_modes, out_modes, ranks) triple per layer (same params as ``tt_mlp_init``).

    Consecutive layers must agree in size (prod out_modes of layer l = prod in_modes of layer l+1),
    not in modes: a TT first layer (8, 8) -> (16, 16) can feed a dense (256,) -> (10,) readout.
    Gains: 2 (ReLU) for hidden layers, 1 for the logits.
    """
    for l in range(len(layers) - 1):
        if math.prod(layers[l][1]) != math.prod(layers[l + 1][0]):
            raise ValueError(f"layers={layers}: layer {l} outputs {math.prod(layers[l][1])} values, "
                             f"layer {l + 1} expects {math.prod(layers[l + 1][0])}")
    keys = jax.random.split(key, len(layers))
    return [
        {"cores": tt_init(keys[l], m, n, r, gain=1.0 if l == len(layers) - 1 else 2.0), "b": jnp.zeros(math.prod(n))}
        for l, (m, n, r) in enumerate(layers)
    ]


def image_layer_families(side: int = 8, hidden_modes=(16, 16), classes: int = 10):
    """First-layer factorizations of a side*side image -> hidden -> classes MLP, as layer builders.

    Returns {family: size -> layers for ``tt_mlp_init_layers``}; the readout hidden -> classes is dense.
    Input pixels are row-major (index = side * row + column), as in scikit-learn's digits.

    * "tt":      TT first layer, in-modes (side, side) = (row, column), out-modes hidden_modes,
                 rank size: W = sum_a A_a (x) B_a, a sum of `size` Kronecker products of a
                 row factor A_a (side, h_1) and a column factor B_a (side, h_2) (d = 2).
                 Weights: size * side * (h_1 + h_2).
    * "lowrank": rank-`size` matrix W = U V^T (U: (side^2, size), V: (hidden, size)), written as
                 the TT with modes (side^2, 1) -> (1, hidden). Weights: size * (side^2 + hidden).
    * "dense":   an unfactorized first layer with `size` hidden units (the narrow network).
    """
    hidden, pixels = math.prod(hidden_modes), side * side
    return {
        "tt": lambda r: [((side, side), tuple(hidden_modes), (r,)), ((hidden,), (classes,), ())],
        "lowrank": lambda r: [((pixels, 1), (1, hidden), (r,)), ((hidden,), (classes,), ())],
        "dense": lambda h: [((pixels,), (h,), ()), ((h,), (classes,), ())],
    }


def matched_dense_width(n_params: int, inputs: int = 64, classes: int = 10) -> int:
    """Hidden width h whose dense inputs -> h -> classes MLP (biases included) has the parameter count
    closest to n_params: (inputs + 1 + classes) h + classes = n_params, rounded."""
    return max(1, round((n_params - classes) / (inputs + 1 + classes)))


def tt_mlp_apply(params, x):
    """Logits (B, C) of the TT-MLP on x (B, M): h <- relu(tt_matvec(cores, h) + b), no ReLU at the end."""
    h = x
    for l, layer in enumerate(params):
        h = tt_matvec(layer["cores"], h) + layer["b"]
        if l < len(params) - 1:
            h = jax.nn.relu(h)
    return h


def tt_mlp_counts(params) -> tuple[int, int]:
    """(number of parameters incl. biases, multiply-adds per example) of a TT-MLP."""
    n_params = sum(int(a.size) for a in jax.tree.leaves(params))
    macs = 0
    for layer in params:
        shapes = [c.shape for c in layer["cores"]]
        macs += tt_macs([s[1] for s in shapes], [s[2] for s in shapes], [s[3] for s in shapes[:-1]])
    return n_params, macs


def tt_unfolding_ranks(cores, threshold: float = 0.1) -> list[int]:
    """Numerical TT ranks of the layer's weight tensor: one int per bond (d - 1 of them).

    The weight W (M, N) is the tensor T[(i_1, j_1), ..., (i_d, j_d)] of d modes of sizes
    m_k n_k; its k-th unfolding groups the first k modes as rows. A TT with bond ranks r_k has
    unfoldings of rank <= r_k, with equality for generic cores (the TT-SVD of Oseledets 2011
    recovers them). Counted here: singular values above ``threshold`` times the largest, so the
    count measures the weight itself, whatever rank the cores were given.
    """
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold={threshold}: expected a fraction of the largest singular value in [0, 1)")
    ms, ns = [int(c.shape[1]) for c in cores], [int(c.shape[2]) for c in cores]
    d = len(cores)
    t = jnp.reshape(tt_full_matrix(cores), (*ms, *ns))
    t = jnp.transpose(t, [a for k in range(d) for a in (k, d + k)])  # (m_1, n_1, m_2, n_2, ...)
    ranks = []
    for k in range(1, d):
        sv = jnp.linalg.svd(t.reshape(math.prod(ms[:k]) * math.prod(ns[:k]), -1), compute_uv=False)
        ranks.append(int(jnp.sum(sv > threshold * sv[0])))
    return ranks


def tt_teacher_task(key, layer_modes, rank: int, num_train: int, num_test: int):
    """A classification task labelled by a random TT-MLP of known bond rank (the rank-recovery test).

    The teacher is ``tt_mlp_init(key, layer_modes, rank)``, with its last bias shifted by minus the
    mean logit of each class over the training inputs, so that no class is nearly empty; inputs
    are i.i.d. N(0, 1) of size prod(layer_modes[0]). Returns (teacher, x_train (num_train, M),
    y_train one-hot (num_train, C), x_test (num_test, M), labels_test (num_test,)): the labels are
    the teacher's argmax, so a student of any rank can at best reproduce the teacher's function.
    """
    k_teacher, k_train, k_test = jax.random.split(key, 3)
    teacher = tt_mlp_init(k_teacher, layer_modes, int(rank))
    size = math.prod(layer_modes[0])
    x_train = jax.random.normal(k_train, (int(num_train), size))
    x_test = jax.random.normal(k_test, (int(num_test), size))
    shift = tt_mlp_apply(teacher, x_train).mean(0)
    teacher = teacher[:-1] + [{"cores": teacher[-1]["cores"], "b": teacher[-1]["b"] - shift}]
    classes = math.prod(layer_modes[-1])
    y_train = jax.nn.one_hot(jnp.argmax(tt_mlp_apply(teacher, x_train), 1), classes)
    labels_test = jnp.argmax(tt_mlp_apply(teacher, x_test), 1)
    return teacher, x_train, y_train, x_test, labels_test


def _tt_xent(params, x, y):
    return softmax_cross_entropy(tt_mlp_apply(params, x), y)


@partial(jax.jit, static_argnames=("lr", "num_steps"))
def _train_tt(params, x, y, lr, num_steps):
    # module level, so that every call with the same shapes (e.g. other seeds) reuses one compilation
    result = run_loop(_tt_xent, params, optax.adam(lr), num_steps, data=(x, y), record_every=num_steps,
                      divergence_threshold=None)
    return result.params, result.step_losses


def train_tt_mlp(params, x, y, lr: float, num_steps: int):
    """Full-batch Adam on the mean softmax cross-entropy -> (params, losses (num_steps,)).

    x (N, M), y one-hot (N, C); losses[t] is the loss at the parameters before update t.
    Unregularized: this is the chapter's point estimate. ``overparam.training.run_loop`` (one
    jitted scan, no divergence check) with x and y as traced data, not closed-over constants (XLA
    constant-folds those very slowly on CPU); one compilation per (shapes, lr, num_steps) serves
    every seed.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps={num_steps}: expected an integer >= 1")
    return _train_tt(params, x, y, float(lr), int(num_steps))
