r"""Losses and the one training loop of the book (a ``lax.scan``), with GD, SGD and optax wrappers.

Loss normalization (every learning-rate threshold in the book is relative to it):

    mse_loss(pred, y) = 1/(2N) sum_{n=1..N} sum_{k=1..K} (pred[n, k] - y[n, k])^2

with N = pred.shape[0] examples and K outputs (a sum over outputs, a mean over examples).

Stability of GD, derived for this loss. For the linearized model f = f0 + J dtheta with J
(NK, P) and Theta = J J^T (NK, NK; for K = 1 the empirical NTK Gram matrix of
``overparam.kernels.empirical``, unnormalized: summed over parameters), a GD step with learning
rate lr is theta <- theta - (lr/N) J^T r, so the residual r = f - y obeys

    r_{t+1} = (I - (lr/N) Theta) r_t.

Each eigen-direction of Theta with eigenvalue lambda > 0 contracts iff |1 - lr lambda/N| < 1, so
GD is stable iff lr < 2N / lambda_max(Theta) (``max_stable_lr``). Equivalently, the loss
Hessian of the linear model is H = J^T J / N, whose nonzero eigenvalues are those of Theta/N:
lr < 2 / lambda_max(H). For K > 1 use the full (NK, NK) Gram matrix with num_examples=N; the
trace-averaged kernel of ``overparam.kernels.empirical`` equals its blocks when Theta ~ Theta_1 (x) I_K.

The loop. ``run_loop`` is the one training loop: a pure function (no ``jax.jit`` of its own, so
it traces inside a caller's ``jit``/``vmap``) that runs ``num_steps`` optimizer steps in one
``lax.scan``. What differs between the book's optimizers is passed in, not re-written:

* the step's batch: ``batches(data, t) -> tuple`` (default: the whole ``data`` tuple). Minibatches,
  per-step random keys (``fold_in(key, t)``), or samples drawn afresh (online SGD) all go here;
  ``data`` is a traced argument, never a closed-over constant;
* the update direction: ``grad_fn(params, *batch) -> (loss, direction)``, default
  ``jax.value_and_grad(loss_fn)``; a preconditioner (natural gradient) replaces it;
* the optimizer: any optax ``GradientTransformation`` applied to that direction;
* a constraint applied after each update: ``constraint(params) -> params`` (e.g. clipping);
* observations: ``observe(params)`` every ``record_every`` steps (optionally stateful,
  ``observe(params, state) -> (record, state)``), and ``on_step(params, new_params, *batch)``
  at every step.

``train_gd``, ``train_optax`` and ``train_sgd`` are jitted wrappers of ``run_loop``. Learning rate,
params0, data and key are traced, so ``jax.vmap`` over learning rates or seeds compiles once; the
loss function, optimizer and observer are static (hashed by identity: build them once and reuse
them, or make them hashable values such as an ``overparam.models.MLPSpec``).

A step t evaluates the loss (and direction) at theta_t and updates to theta_{t+1}. Divergence:
if the loss at theta_t is non-finite or above ``divergence_threshold``, or theta_{t+1} is
non-finite, the run is marked ``diverged`` at step t and the parameters stay at theta_t from then
on (no NaN propagates, nothing raises); losses recorded at steps >= the divergence step are
``inf``. ``divergence_threshold=None`` switches this off: a diverging run goes on with whatever
values it produces (non-finite ones included), as a record of the instability itself.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


# --------------------------------------------------------------------------------------- losses


def _check_same_shape(pred, y):
    if pred.shape != y.shape or pred.ndim != 2:
        raise ValueError(f"pred has shape {pred.shape} and y has shape {y.shape}; expected both (N, K)")


def mse_loss(pred, y):
    """1/(2N) sum_{n,k} (pred - y)^2 for pred, y of shape (N, K): mean over examples, sum over outputs."""
    _check_same_shape(pred, y)
    return 0.5 * jnp.sum((pred - y) ** 2) / pred.shape[0]


def softmax_cross_entropy(logits, y_onehot):
    """1/N sum_n -log softmax(logits[n])[label_n] for logits, one-hot labels of shape (N, K)."""
    _check_same_shape(logits, y_onehot)
    return -jnp.sum(y_onehot * jax.nn.log_softmax(logits, axis=-1)) / logits.shape[0]


def accuracy(pred, y):
    """Fraction classified correctly: argmax for one-hot (N, K > 1), sign for +-1 labels (N, 1)."""
    _check_same_shape(pred, y)
    if y.shape[1] == 1:
        return jnp.mean(jnp.sign(pred) == jnp.sign(y))
    return jnp.mean(jnp.argmax(pred, axis=1) == jnp.argmax(y, axis=1))


def full_batch_loss(apply_fn, x, y, loss=mse_loss):
    """loss_fn(params) = loss(apply_fn(params, x), y), for ``train_gd`` and the curvature functions."""
    return lambda params: loss(apply_fn(params, x), y)


def batch_loss(apply_fn, loss=mse_loss):
    """loss_fn(params, x, y) = loss(apply_fn(params, x), y), for ``train_sgd``."""
    return lambda params, x, y: loss(apply_fn(params, x), y)


def max_stable_lr(ntk_matrix, num_examples: int | None = None):
    """GD stability threshold 2N / lambda_max(ntk_matrix) under ``mse_loss`` (see module docstring).

    ntk_matrix: the (N, N) Gram matrix J J^T (or (NK, NK) for K outputs, then pass
    num_examples=N); num_examples defaults to ntk_matrix.shape[0].
    """
    ntk_matrix = jnp.asarray(ntk_matrix)
    if ntk_matrix.ndim != 2 or ntk_matrix.shape[0] != ntk_matrix.shape[1]:
        raise ValueError(f"ntk_matrix has shape {ntk_matrix.shape}; expected a square (N, N) matrix")
    n = ntk_matrix.shape[0] if num_examples is None else num_examples
    return 2.0 * n / jnp.linalg.eigvalsh(ntk_matrix)[-1]


# --------------------------------------------------------------------------------------- result


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["params", "losses", "steps", "step_losses", "final_loss", "diverged", "diverged_step", "records",
                 "step_records", "observer_state"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of a training run (a pytree: batched by ``jax.vmap`` like any output).

    params: final parameters (frozen at the divergence step if the run diverged).
    losses: (R,) training loss at steps[r], R = num_steps // record_every: ``full_loss`` if given,
    else the loss the step's update was computed from.
    steps: (R,) step index of each record: 0, record_every, 2 record_every, ... (before that step's update).
    step_losses: (num_steps,) the loss each update was computed from (minibatch loss for SGD).
    final_loss: () training loss at the returned params (after num_steps updates).
    diverged: () bool; diverged_step: () int32, the first bad step, or -1.
    records: ``observe`` at steps[r], stacked along a leading axis R (None without an observer);
    after a divergence they are evaluated at the frozen params.
    step_records: ``on_step`` at every step, leading axis num_steps (None without it).
    observer_state: the final state of a stateful observer (None otherwise).
    Entries of losses / step_losses / final_loss at or after the divergence step are inf.
    A run with a traced ``num_steps`` (``record_every=None``) has R = 0 and no step losses.
    """

    params: Any
    losses: jax.Array
    steps: jax.Array
    step_losses: jax.Array
    final_loss: jax.Array
    diverged: jax.Array
    diverged_step: jax.Array
    records: Any = None
    step_records: Any = None
    observer_state: Any = None


# ----------------------------------------------------------------------------------------- loop


def _tree_where(cond, a, b):
    return jax.tree.map(lambda u, v: jnp.where(cond, u, v), a, b)


def _all_finite(tree):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _num_records(num_steps: int, record_every: int) -> int:
    if record_every < 1 or num_steps < record_every or num_steps % record_every:
        raise ValueError(
            f"num_steps={num_steps} must be a positive multiple of record_every={record_every}"
        )
    return num_steps // record_every


def _full_data(data, t):
    return data


def run_loop(
    loss_fn: Callable, params0, optimizer: optax.GradientTransformation, num_steps, *, data: tuple = (),
    batches: Callable | None = None, grad_fn: Callable | None = None, constraint: Callable | None = None,
    full_loss: Callable | None = None, observe: Callable | None = None, observer_state0=None,
    on_step: Callable | None = None, record_every: int | None = 1, divergence_threshold: float | None = 1e6,
) -> TrainResult:
    """The training loop: ``num_steps`` updates of ``optimizer`` in one ``lax.scan`` (see the module docstring).

    loss_fn(params, *batch) -> scalar, batch = ``batches(data, t)`` (a tuple; default ``data``).
    grad_fn(params, *batch) -> (loss, direction): default ``jax.value_and_grad(loss_fn)``.
    constraint(params) -> params: applied after every update (a projection, e.g. clipping).
    full_loss(params, *data) -> scalar: the loss recorded every ``record_every`` steps and at the
    end (default: the step loss, i.e. ``loss_fn`` on the step's batch).
    observe(params) -> pytree, recorded with the losses; with ``observer_state0`` given it is
    ``observe(params, state) -> (record, state)`` and the final state is returned.
    on_step(params, new_params, *batch) -> pytree, recorded at every step.
    record_every=None: no records at all, and ``num_steps`` may be a traced integer (a
    ``fori_loop``; every horizon shares one compilation).
    Not jitted: call it inside ``jax.jit`` (the wrappers below do).
    """
    batches = _full_data if batches is None else batches
    grad_fn = jax.value_and_grad(loss_fn) if grad_fn is None else grad_fn
    stateful = observer_state0 is not None
    check = divergence_threshold is not None
    threshold = jnp.asarray(jnp.inf if divergence_threshold is None else divergence_threshold)

    def update(carry, t):
        params, opt_state, diverged, diverged_step = carry
        batch = batches(data, t)
        loss, direction = grad_fn(params, *batch)
        updates, new_opt_state = optimizer.update(direction, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        if constraint is not None:
            new_params = constraint(new_params)
        step_record = None if on_step is None else on_step(params, new_params, *batch)
        if check:
            bad = ~jnp.isfinite(loss) | (loss > threshold) | ~_all_finite(new_params)
            diverged_step = jnp.where(bad & ~diverged, t, diverged_step)
            diverged = diverged | bad
            new_params = _tree_where(diverged, params, new_params)
            new_opt_state = _tree_where(diverged, opt_state, new_opt_state)
        return (new_params, new_opt_state, diverged, diverged_step), (loss, step_record)

    def observe_at(params, state):
        if observe is None:
            return None, state
        return observe(params, state) if stateful else (observe(params), state)

    def step_loss_at(params, t):
        return loss_fn(params, *batches(data, t))

    carry0 = (params0, optimizer.init(params0), jnp.array(False), jnp.array(-1, jnp.int32))

    if record_every is None:  # no records: a fori_loop whose length may be traced
        if on_step is not None or observe is not None:
            raise ValueError("record_every=None records nothing: drop observe / on_step, or give record_every")
        carry = jax.lax.fori_loop(0, num_steps, lambda t, c: update(c, t)[0], carry0)
        params, _, diverged, diverged_step = carry
        final = full_loss(params, *data) if full_loss is not None else step_loss_at(params, num_steps)
        empty = jnp.zeros((0,), jnp.result_type(final))
        return TrainResult(params=params, losses=empty, steps=jnp.zeros((0,), jnp.int32), step_losses=empty,
                           final_loss=jnp.where(diverged, jnp.inf, final), diverged=diverged,
                           diverged_step=diverged_step)

    num_records = _num_records(num_steps, record_every)

    def block(state, t0):
        carry, obs_state = state
        record, obs_state = observe_at(carry[0], obs_state)
        block_loss = None if full_loss is None else full_loss(carry[0], *data)
        carry, (step_losses, step_records) = jax.lax.scan(update, carry, t0 + jnp.arange(record_every, dtype=jnp.int32))
        block_loss = step_losses[0] if block_loss is None else block_loss
        return (carry, obs_state), (block_loss, record, step_losses, step_records)

    steps = record_every * jnp.arange(num_records, dtype=jnp.int32)
    ((params, _, diverged, diverged_step), obs_state), (losses, records, step_losses, step_records) = jax.lax.scan(
        block, (carry0, observer_state0), steps)

    def after_divergence(t):
        return diverged & (t >= diverged_step)

    step_losses = step_losses.reshape(num_steps)
    if step_records is not None:
        step_records = jax.tree.map(lambda a: a.reshape(num_steps, *a.shape[2:]), step_records)
    final_loss = full_loss(params, *data) if full_loss is not None else step_loss_at(params, num_steps)
    return TrainResult(
        params=params,
        losses=jnp.where(after_divergence(steps), jnp.inf, losses),
        steps=steps,
        step_losses=jnp.where(after_divergence(jnp.arange(num_steps)), jnp.inf, step_losses),
        final_loss=jnp.where(diverged, jnp.inf, final_loss),
        diverged=diverged,
        diverged_step=diverged_step,
        records=records,
        step_records=step_records,
        observer_state=obs_state if stateful else None,
    )


# ------------------------------------------------------------------------------------- wrappers


@partial(jax.jit, static_argnames=("loss_fn", "optimizer", "num_steps", "record_every", "observe"))
def _train_full_batch(loss_fn, params0, data, lr, threshold, *, optimizer, num_steps, record_every, observe):
    optimizer = optax.sgd(lr) if optimizer is None else optimizer
    return run_loop(loss_fn, params0, optimizer, num_steps, data=data, record_every=record_every,
                    divergence_threshold=threshold, observe=observe)


def train_gd(
    loss_fn: Callable, params0, lr, num_steps: int, record_every: int = 1,
    divergence_threshold: float = 1e6, observe: Callable | None = None, *, data: tuple = (),
) -> TrainResult:
    """Full-batch gradient descent theta <- theta - lr grad loss_fn(theta, *data), as one jitted scan.

    loss_fn: (params, *data) -> scalar: e.g. ``full_batch_loss(apply_fn, x, y)`` with data=(),
    or ``batch_loss(apply_fn)`` with data=(x, y) (traced: new data reuse the compilation).
    lr may be a traced array (vmap over learning rates compiles once), params0 may be batched
    under vmap. observe: params -> pytree of arrays, recorded with the losses. See ``TrainResult``.
    """
    return _train_full_batch(
        loss_fn, params0, tuple(data), jnp.asarray(lr), divergence_threshold, optimizer=None,
        num_steps=num_steps, record_every=record_every, observe=observe,
    )


def train_optax(
    loss_fn: Callable, params0, optimizer: optax.GradientTransformation, num_steps: int, record_every: int = 1,
    divergence_threshold: float = 1e6, observe: Callable | None = None, *, data: tuple = (),
) -> TrainResult:
    """Full-batch training with any optax ``optimizer`` (static: build it once), as one jitted scan.

    Same conventions as ``train_gd``; ``train_gd(loss_fn, p, lr, ...)`` equals
    ``train_optax(loss_fn, p, optax.sgd(lr), ...)``. For minibatches use ``train_sgd(optimizer=...)``.
    """
    return _train_full_batch(
        loss_fn, params0, tuple(data), None, divergence_threshold, optimizer=optimizer,
        num_steps=num_steps, record_every=record_every, observe=observe,
    )


def sgd_batch_indices(key, num_examples: int, batch_size: int, step):
    """Example indices (batch_size,) used at SGD ``step``: sampling without replacement per epoch.

    Epoch e = step // (num_examples // batch_size) uses the permutation of
    ``jax.random.fold_in(key, e)``, cut into consecutive batches; the last
    num_examples mod batch_size examples of each permutation are not used in that epoch.
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the number of examples {num_examples}")
    per_epoch = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, step // per_epoch), num_examples)
    return jax.lax.dynamic_slice(perm, ((step % per_epoch) * batch_size,), (batch_size,))


def epoch_permutations(key, num_examples: int, batch_size: int, num_steps: int):
    """The permutations ``sgd_batch_indices`` uses, one row per epoch touched by num_steps steps: (E, N) int32.

    Drawn once before the loop instead of at every step (the same keys, so the same batches).
    """
    if not 1 <= batch_size <= num_examples:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the number of examples {num_examples}")
    per_epoch = num_examples // batch_size
    num_epochs = -(-int(num_steps) // per_epoch)
    epochs = jnp.arange(max(num_epochs, 1))
    return jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), num_examples))(epochs)


def minibatches(key, batch_size: int, num_examples: int | None = None, num_steps: int | None = None):
    """``batches(data, t)`` for ``run_loop``: the rows ``sgd_batch_indices(key, N, batch_size, t)`` of every array in data.

    With num_examples and num_steps given, the epochs' permutations are drawn once, before the
    loop (``epoch_permutations``: the same batches, without a sort at every step); otherwise each
    step draws its epoch's permutation itself.
    """
    if num_examples is None or num_steps is None:
        def batches(data, t):
            idx = sgd_batch_indices(key, data[0].shape[0], batch_size, t)
            return tuple(a[idx] for a in data)

        return batches

    perms = epoch_permutations(key, num_examples, batch_size, num_steps)
    per_epoch = num_examples // batch_size

    def batches(data, t):
        row = jax.lax.dynamic_index_in_dim(perms, t // per_epoch, keepdims=False)
        idx = jax.lax.dynamic_slice(row, ((t % per_epoch) * batch_size,), (batch_size,))
        return tuple(a[idx] for a in data)

    return batches


@partial(jax.jit, static_argnames=("loss_fn", "optimizer", "batch_size", "num_steps", "record_every", "observe"))
def _train_minibatch(loss_fn, params0, x, y, lr, key, threshold, *, optimizer, batch_size, num_steps, record_every, observe):
    optimizer = optax.sgd(lr) if optimizer is None else optimizer
    batches = minibatches(key, batch_size, x.shape[0], num_steps)
    return run_loop(loss_fn, params0, optimizer, num_steps, data=(x, y), batches=batches,
                    full_loss=loss_fn, observe=observe, record_every=record_every, divergence_threshold=threshold)


def train_sgd(
    loss_fn: Callable, params0, x, y, batch_size: int, lr, num_steps: int, key, record_every: int = 1,
    divergence_threshold: float = 1e6, observe: Callable | None = None,
    optimizer: optax.GradientTransformation | None = None,
) -> TrainResult:
    """Minibatch SGD (batches from ``sgd_batch_indices``: without replacement within an epoch).

    loss_fn: (params, x_batch, y_batch) -> scalar (e.g. ``batch_loss(apply_fn)``), evaluated
    on the full (x, y) at record steps (``TrainResult.losses``) and on the minibatch at every
    step (``TrainResult.step_losses``, also the divergence check). Deterministic given key.
    optimizer: an optax transform used instead of plain SGD (then pass lr=None).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has shape {x.shape} and y has shape {y.shape}; expected the same number of rows")
    if not 1 <= batch_size <= x.shape[0]:
        raise ValueError(f"batch_size={batch_size} must be between 1 and the number of examples {x.shape[0]}")
    if (optimizer is None) == (lr is None):
        raise ValueError(f"give exactly one of lr (plain SGD) and optimizer; got lr={lr!r}, optimizer={optimizer!r}")
    return _train_minibatch(
        loss_fn, params0, x, y, None if lr is None else jnp.asarray(lr), key, divergence_threshold,
        optimizer=optimizer, batch_size=batch_size, num_steps=num_steps, record_every=record_every,
        observe=observe,
    )
