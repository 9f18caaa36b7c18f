r"""Natural gradient descent (NGD) in function space: exact, layer-wise block-diagonal, and K-FAC.

Loss ``mse_loss`` = 1/(2N) sum (f - y)^2, residual e = f - y (N, K) flattened to (NK,), Jacobian
J (NK, P), gradient J^T e / N, Fisher F = J^T J / N, NTK Gram Theta = J J^T. Each method is a
preconditioner F_hat and a step theta <- theta - lr F_hat^{-1} grad. On the linearized network
the residual then obeys

    e <- (I - lr A) e,     A = J F_hat^{-1} J^T / N       (NK, NK): the function-space operator,

so the eigenvalues of A are the per-mode rates (``function_space_operator``):

=============  =========================================================  ==============================
method         step (damping rho > 0)                                      A (rho -> 0)
=============  =========================================================  ==============================
``gd``         F_hat = I: d theta = -lr J^T e / N                           Theta / N
``ngd``        F + rho I: d theta = -lr J^T (Theta + rho N I)^{-1} e        I  (if Theta is invertible)
``block_diag`` blockdiag_b(F_b) + rho I, one block per params leaf:         sum_b Theta_b (Theta_b + rho N)^{-1}
               d theta_b = -lr J_b^T (Theta_b + rho N I)^{-1} e             = B I if every Theta_b is invertible
``kfac``       per layer (Abar + rho I) (x) (Gbar + rho I), Abar =          sum_l N (P_{a_l} o P_{delta_l})
               w_mult^2 a^T a / N, Gbar = sum_k delta_k^T delta_k / N:      (o: entrywise product; P: projection
               d w = -lr (Abar + rho I)^{-1} grad_w (Gbar + rho I)^{-1}     on the span of the layer's inputs / deltas)
=============  =========================================================  ==============================

The exact NGD step uses the push-through identity (J^T J/N + rho)^{-1} J^T/N = J^T (J J^T + rho N)^{-1}:
an N x N solve, never a P x P one. Blocks of ``block_diag`` are the leaves of params (for a
bias-free MLP: one block per layer). K-FAC needs the layer structure of an
``overparam.models.MLPSpec`` (inputs a_l and backpropagated deltas from ``overparam.kernels.empirical``).
With every block's Gram invertible, block-diagonal NGD with lr/B equals exact NGD in function
space. K-FAC's layer l contributes N (P_{a_l} o P_{delta_l}) (``kfac_layer_terms``), a multiple of I
when one of the two projections is the identity (that Gram invertible) and the other has a constant
diagonal (equal leverage scores); it then contributes rank(other) * I. Both Grams invertible is
sufficient but not necessary: the last layer of a K = 1 net has deltas all equal to one (a rank-one
delta Gram, leverages 1/N) and contributes P_{a_{L-1}} = I once its input Gram is invertible; the
first layer, with inputs of leverage h_n = P_X[n, n], contributes N diag(h): isotropic iff all h_n
are equal, e.g. d >= N (h = 1) or an equal-leverage design with d < N (``equal_leverage_inputs``).
With hidden widths >= N: A = (1 + (L-2) N) I + N diag(h), = (1 + (L-1) N) I when h is constant 1.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from overparam.kernels.empirical import block_grams, mlp_layer_features, output_jacobian
from overparam.models import MLPSpec
from overparam.training import mse_loss, run_loop

METHODS = ("gd", "ngd", "block_diag", "kfac")


def check_method(method: str) -> str:
    """Return ``method`` if known, else ValueError listing ``METHODS``."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; allowed: {', '.join(METHODS)}")
    return method


def _check_damping(damping):
    if not float(damping) > 0:
        raise ValueError(f"damping={damping!r} must be > 0 (it regularizes the inverse of a singular Fisher)")


def _solve_psd(gram, rhs, shift):
    eye = jnp.eye(gram.shape[0], dtype=gram.dtype)
    return jnp.linalg.solve(gram + shift * eye, rhs)


# --------------------------------------------------------------------------------- K-FAC pieces


def _damped_pinv(phi, damping):
    """Q = (phi^T phi / R + rho I)^{-1} phi^T (n, R) for a feature matrix phi (R, n).

    Solved in the smaller of the two equivalent forms (the dual one is phi^T (phi phi^T / R + rho I)^{-1}):
    cost min(n, R)^3, and no 1/rho blow-up on the null space of the larger Gram.
    """
    r, n = phi.shape
    if n <= r:
        return _solve_psd(phi.T @ phi / r, phi.T, damping)
    return _solve_psd(phi @ phi.T / r, phi, damping).T


def _kfac_factors(spec: MLPSpec, params, x, damping):
    """Per layer (phi_a, Q_a, phi_D, Q_D): K-FAC's two Kronecker factors as feature matrices.

    phi_a = w_mult a (N, n_in) (scaled layer inputs) and phi_D (NK, n_out) with row (n, k) the
    delta d f_k(x_n) / d h; Abar = phi_a^T phi_a / N and Gbar = phi_D^T phi_D / N (the 1/N of
    Gbar taken over the NK rows' N examples). Q = ``_damped_pinv``: (Abar + rho)^{-1} phi_a^T etc.
    """
    acts, deltas = mlp_layer_features(spec, params, x)
    n = x.shape[0]
    out = []
    for (_, _, w_mult, _), a, delta in zip(spec.layer_scales(), acts, deltas):
        k = delta.shape[2]
        phi_a = w_mult * a
        # Gbar = sum_k delta_k^T delta_k / N: scale the NK rows by sqrt(K) so that "/ rows" is "/ N".
        phi_d = jnp.transpose(delta, (0, 2, 1)).reshape(n * k, -1)
        q_d = _damped_pinv(jnp.sqrt(k) * phi_d, damping) / jnp.sqrt(k)
        out.append((phi_a, _damped_pinv(phi_a, damping), phi_d, q_d))
    return out


def _check_kfac_model(spec):
    if not isinstance(spec, MLPSpec):
        raise ValueError(f"method='kfac' needs an overparam.models.MLPSpec as apply_fn, got {type(spec).__name__}")
    if spec.use_bias:
        raise ValueError("method='kfac' is implemented for bias-free MLPs (use_bias=False)")


def _check_args(method, damping, apply_fn):
    check_method(method)
    _check_damping(damping)
    if method == "kfac":
        _check_kfac_model(apply_fn)


def kfac_operator(spec: MLPSpec, params, x, damping):
    """Function-space operator (NK, NK) of K-FAC: sum_l (1/N) [phi_a Q_a] o [phi_D Q_D].

    phi_a Q_a = w^2 a (Abar + rho)^{-1} a^T (N, N) and phi_D Q_D = D (Gbar + rho)^{-1} D^T
    (NK, NK), entry (m k', n k); with rho -> 0 each is N times the projection on the span of the
    layer's inputs, resp. deltas (see the module docstring).
    """
    return function_space_operator("kfac", spec, params, x, damping)


def kfac_layer_terms(spec: MLPSpec, params, x, damping):
    """K-FAC's function-space operator layer by layer: a list of L arrays (NK, NK) that sum to ``kfac_operator``.

    Term l is (1/N) [phi_a Q_a] o [phi_D Q_D] -> N (P_{a_l} o P_{delta_l}) as damping -> 0 (module
    docstring: when it is a multiple of I).
    """
    _check_damping(damping)
    _check_kfac_model(spec)
    return _kfac_terms(spec, params, x, damping)


@partial(jax.jit, static_argnames=("spec",))
def _kfac_terms(spec: MLPSpec, params, x, damping):
    n = x.shape[0]
    terms = []
    for phi_a, q_a, phi_d, q_d in _kfac_factors(spec, params, x, damping):
        k = phi_d.shape[0] // n
        pa = phi_a @ q_a                                  # (N, N)
        pd = (phi_d @ q_d).reshape(n, k, n, k)            # (N, K, N, K)
        terms.append((pa[:, None, :, None] * pd).reshape(n * k, n * k) / n)
    return terms


def _kfac_operator(spec: MLPSpec, params, x, damping):
    return sum(_kfac_terms(spec, params, x, damping))


def equal_leverage_inputs(num_examples: int, input_dim: int):
    """x (N, d), d < N allowed, distinct rows, every leverage score P_X[n, n] = d / N: a harmonic frame.

    Columns sqrt(2) cos(2 pi k n / N), sqrt(2) sin(2 pi k n / N) for k = 1, ..., floor(d/2), plus the
    constant column 1 when d is odd: orthogonal columns of norm sqrt(N) (needs floor(d/2) < N/2), so
    x^T x = N I, P_X = x x^T / N and P_X[n, n] = |x_n|^2 / N = d / N for every n. Float64 under x64.
    """
    n, d = int(num_examples), int(input_dim)
    if n < 2:
        raise ValueError(f"num_examples={num_examples} must be >= 2")
    if not 1 <= d or not d // 2 < n / 2:
        raise ValueError(f"input_dim={input_dim} must be >= 1 with floor(d/2) < num_examples/2 = {n / 2}")
    angle = 2 * jnp.pi * jnp.arange(n)[:, None] * jnp.arange(1, d // 2 + 1)[None, :] / n
    cols = [jnp.ones((n, 1))] if d % 2 else []
    cols += [jnp.sqrt(2.0) * jnp.cos(angle), jnp.sqrt(2.0) * jnp.sin(angle)]
    return jnp.concatenate(cols, axis=1)


# ------------------------------------------------------------------------------ the operators


def function_space_operator(method: str, apply_fn, params, x, damping=1e-8):
    """A (NK, NK) with e <- (I - lr A) e on the linearized network (table in the module docstring).

    apply_fn(params, x) -> (N, K) must treat examples independently; ``kfac`` needs an
    ``MLPSpec`` (the layer structure). Jitted with method and apply_fn static (an ``MLPSpec`` is
    hashed by value; another callable by identity: build it once).
    """
    _check_args(method, damping, apply_fn)
    return _operator(method, apply_fn, params, x, damping)


@partial(jax.jit, static_argnames=("method", "apply_fn"))
def _operator(method, apply_fn, params, x, damping):
    n = x.shape[0]
    if method == "kfac":
        return _kfac_operator(apply_fn, params, x, damping)
    grams = block_grams(output_jacobian(apply_fn, params, x))
    if method == "gd":
        return sum(grams) / n
    if method == "ngd":
        theta = sum(grams)
        return theta @ _solve_psd(theta, jnp.eye(theta.shape[0], dtype=theta.dtype), damping * n)
    return sum(g @ _solve_psd(g, jnp.eye(g.shape[0], dtype=g.dtype), damping * n) for g in grams)


def isotropy_scale(operator):
    """Mean eigenvalue tr(A)/NK of a function-space operator: divide lr by it to compare methods."""
    return jnp.trace(operator) / operator.shape[0]


# --------------------------------------------------------------------------------- the updates


def update_direction(method: str, apply_fn, params, x, y, damping):
    """F_hat^{-1} grad loss (a pytree like params): the step is theta - lr * direction.

    Jitted like ``function_space_operator``; J @ direction = A e (the tests check it).
    """
    _check_args(method, damping, apply_fn)
    return _direction(method, apply_fn, params, x, y, damping)


@partial(jax.jit, static_argnames=("method", "apply_fn"))
def _direction(method, apply_fn, params, x, y, damping):
    n = x.shape[0]
    e = (apply_fn(params, x) - y).reshape(-1)
    if method == "kfac":
        # (Abar + rho)^{-1} grad_w (Gbar + rho)^{-1} with grad_w = phi_a^T E~ phi_D / N equals
        # Q_a E~ Q_D^T / N, where E~ (N, NK) holds e_{nk} at (n, (n, k)).
        e_nk = e.reshape(n, -1)
        directions = []
        for phi_a, q_a, phi_d, q_d in _kfac_factors(apply_fn, params, x, damping):
            e_q = jnp.einsum("nk,jnk->nj", e_nk, q_d.reshape(q_d.shape[0], n, -1))   # E~ Q_D^T (N, n_out)
            directions.append(q_a @ e_q / n)
        return _with_layer_leaves(params, directions)
    jac = output_jacobian(apply_fn, params, x)
    if method == "gd":
        return jax.tree.map(lambda j: jnp.tensordot(e, j, axes=1) / n, jac)
    if method == "ngd":
        theta = sum(block_grams(jac))
        coef = _solve_psd(theta, e, damping * n)
        return jax.tree.map(lambda j: jnp.tensordot(coef, j, axes=1), jac)

    def block(j):
        flat = j.reshape(j.shape[0], -1)
        return jnp.tensordot(_solve_psd(flat @ flat.T, e, damping * n), j, axes=1)

    return jax.tree.map(block, jac)


def _with_layer_leaves(params, directions):
    """Put per-layer weight directions into a pytree like params (bias-free MLP: one leaf per layer)."""
    leaves, treedef = jax.tree.flatten(params)
    if len(leaves) != len(directions):
        raise ValueError(f"params has {len(leaves)} leaves but the MLP has {len(directions)} layers")
    return jax.tree.unflatten(treedef, directions)


@partial(jax.tree_util.register_dataclass, data_fields=["losses", "residuals", "step_norms", "params"],
         meta_fields=[])
@dataclasses.dataclass(frozen=True)
class NGDResult:
    """losses (T+1,) and residuals (T+1, N, K) at steps 0..T; step_norms (T,) = ||theta_{t+1} - theta_t||; final params."""

    losses: jax.Array
    residuals: jax.Array
    step_norms: jax.Array
    params: object


def train_preconditioned(apply_fn, params0, x, y, method: str, lr, num_steps: int, damping=1e-8) -> NGDResult:
    """Full-batch training with one of ``METHODS`` on ``training.run_loop`` (one jitted ``lax.scan``).

    The step is theta <- theta - lr * ``update_direction`` (the preconditioned gradient is the
    loop's direction, plain SGD its optimizer). lr: a scalar (traced). Records the loss
    ``mse_loss`` and the residual at steps 0..num_steps. Non-finite steps are recorded as they are
    (NaN/inf losses), never raised: the run has no divergence check.
    """
    _check_args(method, damping, apply_fn)
    return _train_preconditioned(apply_fn, params0, x, y, jnp.asarray(lr, dtype=x.dtype), damping, method=method,
                                 num_steps=int(num_steps))


@partial(jax.jit, static_argnames=("apply_fn", "method", "num_steps"))
def _train_preconditioned(apply_fn, params0, x, y, lr, damping, *, method, num_steps):
    def loss(params, x, y):
        return mse_loss(apply_fn(params, x), y)

    def direction(params, x, y):
        return loss(params, x, y), _direction(method, apply_fn, params, x, y, damping)

    def step_norm(params, new_params, *batch):
        return jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params))))

    result = run_loop(loss, params0, optax.sgd(lr), num_steps, data=(x, y), grad_fn=direction,
                      observe=lambda p: apply_fn(p, x) - y, on_step=step_norm, divergence_threshold=None)
    e_last = apply_fn(result.params, x) - y
    losses = jnp.concatenate([result.losses, result.final_loss[None]])
    return NGDResult(losses, jnp.concatenate([result.records, e_last[None]]), result.step_records, result.params)


def mode_decay(residuals, basis):
    """|<u_k, e_t>| / |<u_k, e_0>| for the columns u_k of ``basis`` (NK, NK): array (T+1, NK).

    With basis the eigenvectors of the initial NTK Gram, this is how each NTK mode decays;
    under exact NGD every column is (1 - lr)^t on the linearized network.
    """
    coords = residuals.reshape(residuals.shape[0], -1) @ basis
    return jnp.abs(coords) / jnp.abs(coords[0])


def isotropy_deviation(residuals, rate):
    """max_t ||e_t - (1 - rate)^t e_0|| / ||(1 - rate)^t e_0||: 0 iff every mode decays at one ``rate``."""
    flat = residuals.reshape(residuals.shape[0], -1)
    factors = (1.0 - rate) ** jnp.arange(flat.shape[0], dtype=flat.dtype)
    ideal = factors[:, None] * flat[0]
    return jnp.max(jnp.linalg.norm(flat - ideal, axis=1) / jnp.linalg.norm(ideal, axis=1))


# ------------------------------------------------------------------- approximate NGD vs exact, in width


def ngd_deviation_sweep(key, widths, num_examples: int, input_dim: int, num_seeds: int, eta: float = 0.3,
                        num_steps: int = 10, damping: float = 1e-9, methods=("block_diag", "kfac"),
                        depth: int = 3) -> dict:
    """How far approximate NGD runs from exact NGD, and how far each first step lands from its linearization, vs width.

    For each width M and seed: a bias-free ReLU ``MLPSpec((d, M, ..., M, 1), "ntk")`` (``depth``
    weight layers), x on the sphere (N, d), y a noisy tanh teacher; exact NGD with lr = eta and each
    method with lr = eta / isotropy_scale (its operator's mean eigenvalue), all from the same init, for
    ``num_steps`` steps. Returns numpy arrays (W, S) under keys ``deviation[method]`` =
    max_t ||e_t^method - e_t^ngd|| / ||e_0|| and ``linearization[method]`` (``ngd`` included) =
    ||e_1 - (e_0 - lr A e_0)|| / ||e_0 - lr A e_0||, plus ``spread[method]`` = max/min eigenvalue of
    lr A at init. Run under ``jax.enable_x64(True)`` (the solves use a 1e-9 damping).
    """
    from overparam.data import sphere_inputs, teacher_targets

    for m in methods:
        if check_method(m) in ("gd", "ngd"):
            raise ValueError(f"methods must be approximations of NGD (block_diag, kfac), got {m!r}")
    out = {"deviation": {m: [] for m in methods}, "linearization": {m: [] for m in ("ngd",) + tuple(methods)},
           "spread": {m: [] for m in methods}}
    for width in widths:
        spec = MLPSpec((int(input_dim),) + (int(width),) * (depth - 1) + (1,), "relu", "ntk", use_bias=False)
        rows = {k: {m: [] for m in v} for k, v in out.items()}
        for seed in range(num_seeds):
            k_x, k_y, k_p = jax.random.split(jax.random.fold_in(key, seed), 3)
            x = sphere_inputs(k_x, num_examples, input_dim)
            y = teacher_targets(k_y, x, (input_dim, 64, 1), "tanh", noise=0.3)
            params = jax.tree.map(lambda p: p.astype(x.dtype), spec.init(k_p))
            runs, lrs, ops = {}, {}, {}
            for m in ("ngd",) + tuple(methods):
                ops[m] = function_space_operator(m, spec, params, x, damping)
                lrs[m] = eta if m == "ngd" else eta / float(isotropy_scale(ops[m]))
                runs[m] = train_preconditioned(spec, params, x, y, m, lrs[m], num_steps, damping)
            e0 = runs["ngd"].residuals[0].reshape(-1)
            for m in ("ngd",) + tuple(methods):
                linear = e0 - lrs[m] * ops[m] @ e0
                e1 = runs[m].residuals[1].reshape(-1)
                rows["linearization"][m].append(float(jnp.linalg.norm(e1 - linear) / jnp.linalg.norm(linear)))
            for m in methods:
                diff = (runs[m].residuals - runs["ngd"].residuals).reshape(num_steps + 1, -1)
                rows["deviation"][m].append(float(jnp.max(jnp.linalg.norm(diff, axis=1)) / jnp.linalg.norm(e0)))
                ev = jnp.linalg.eigvals(lrs[m] * ops[m]).real
                rows["spread"][m].append(float(ev.max() / ev.min()))
        for k in out:
            for m in out[k]:
                out[k][m].append(rows[k][m])
    return {k: {m: np.asarray(v) for m, v in d.items()} for k, d in out.items()}
