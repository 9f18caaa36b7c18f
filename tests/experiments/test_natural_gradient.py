"""Natural gradient: the function-space operators, the updates behind them, and training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import natural_gradient as ng
from overparam.kernels.empirical import output_jacobian
from overparam.models import MLPSpec


@pytest.fixture
def x64():
    with jax.enable_x64(True):  # operators are compared to 1e-8 with a damping of 1e-10
        yield


def _setup(widths, n, seed=0, activation="relu"):
    model = MLPSpec(widths, activation, "ntk", use_bias=False)
    apply_fn, params = model, model.init(seed)
    x = jax.random.normal(jax.random.key(seed + 1), (n, widths[0]))
    y = jax.random.normal(jax.random.key(seed + 2), (n, widths[-1]))
    return model, apply_fn, params, x, y


@pytest.mark.parametrize("k,methods", [(1, ng.METHODS), (2, ("ngd", "kfac"))])
def test_update_realizes_operator(x64, k, methods):
    """J (F_hat^{-1} grad) = A e: the operator is what the update does to f (K = 2: the K-FAC bookkeeping)."""
    model, apply_fn, params, x, y = _setup((4, 12, 12, k), 6)
    e = (apply_fn(params, x) - y).reshape(-1)
    jac = output_jacobian(apply_fn, params, x)
    for method in methods:
        a = ng.function_space_operator(method, apply_fn, params, x, 1e-10)
        direction = ng.update_direction(method, apply_fn, params, x, y, 1e-10)
        pushed = sum(j.reshape(j.shape[0], -1) @ d.reshape(-1)
                     for j, d in zip(jax.tree.leaves(jac), jax.tree.leaves(direction)))
        np.testing.assert_allclose(pushed, a @ e, rtol=1e-8, atol=1e-10)


def test_exact_and_block_diagonal_are_isotropic(x64):
    model, apply_fn, params, x, y = _setup((4, 16, 16, 1), 8)
    a = ng.function_space_operator("ngd", apply_fn, params, x, 1e-12)
    np.testing.assert_allclose(a, np.eye(8), atol=1e-6)
    bd = ng.function_space_operator("block_diag", apply_fn, params, x, 1e-12)
    np.testing.assert_allclose(bd, 3 * np.eye(8), atol=1e-6)   # three layers, each Gram invertible
    gd = ng.function_space_operator("gd", apply_fn, params, x, 1e-12)
    assert np.linalg.cond(gd) > 10                               # GD: rates spread over the NTK spectrum
    np.testing.assert_allclose(ng.isotropy_scale(bd), 3.0, rtol=1e-6)


def test_block_diagonal_loses_isotropy_when_a_block_is_too_small(x64):
    """A 2-unit layer has a rank-deficient Gram on 8 points: that block contributes a projection, not I."""
    model, apply_fn, params, x, _ = _setup((1, 2, 16, 1), 8)
    bd = np.asarray(ng.function_space_operator("block_diag", apply_fn, params, x, 1e-12))
    eig = np.linalg.eigvalsh((bd + bd.T) / 2)
    assert eig.max() - eig.min() > 0.5


def test_kfac_operator_structure(x64):
    """Wide hidden layers (M >= N): A_kfac = I + (L-2) N I + N diag(leverage of x); = (1 + (L-1) N) I if d >= N."""
    n = 6
    model, apply_fn, params, x, _ = _setup((3, 24, 24, 1), n)
    a = np.asarray(ng.kfac_operator(model, params, x, 1e-12))
    proj = np.asarray(x @ jnp.linalg.solve(x.T @ x, x.T))
    predicted = (1 + n) * np.eye(n) + n * np.diag(np.diag(proj))
    np.testing.assert_allclose(a, predicted, atol=1e-6)
    model, apply_fn, params, x, _ = _setup((8, 24, 24, 1), n)
    a = np.asarray(ng.kfac_operator(model, params, x, 1e-12))
    np.testing.assert_allclose(a, (1 + 2 * n) * np.eye(n), atol=1e-6)


def test_ngd_on_a_linear_model_is_exact(x64):
    """For f = x @ w (exactly linear) every mode decays by (1 - lr) per step; GD mode by mode."""
    model, apply_fn, params, x, y = _setup((10, 1), 6, activation="linear")
    res = ng.train_preconditioned(apply_fn, params, x, y, "ngd", 0.4, 8, damping=1e-12)
    assert float(ng.isotropy_deviation(res.residuals, 0.4)) < 1e-6
    np.testing.assert_allclose(res.losses[-1] / res.losses[0], 0.6**16, rtol=1e-5)
    theta = ng.function_space_operator("gd", apply_fn, params, x) * 6
    lam, u = np.linalg.eigh(np.asarray(theta))
    lr = 1.0 / lam[-1] * 6
    res = ng.train_preconditioned(apply_fn, params, x, y, "gd", lr, 5)
    decay = np.asarray(ng.mode_decay(res.residuals, u))
    np.testing.assert_allclose(decay[5], np.abs(1 - lr * lam / 6) ** 5, rtol=1e-6, atol=1e-12)


def test_training_records_and_converges():
    model, apply_fn, params, x, y = _setup((4, 32, 32, 1), 8)
    res = ng.train_preconditioned(apply_fn, params, x, y, "block_diag", 0.5 / 3, 10, damping=1e-6)
    assert res.losses.shape == (11,) and res.residuals.shape == (11, 8, 1)
    assert res.losses[-1] < 1e-2 * res.losses[0]
    np.testing.assert_allclose(res.losses[0], 0.5 * jnp.sum((apply_fn(params, x) - y) ** 2) / 8, rtol=1e-5)


def test_bad_arguments():
    model, apply_fn, params, x, y = _setup((4, 8, 1), 4)
    with pytest.raises(ValueError, match="method"):
        ng.train_preconditioned(apply_fn, params, x, y, "adam", 0.1, 3)
    with pytest.raises(ValueError, match="damping"):
        ng.function_space_operator("ngd", apply_fn, params, x, 0.0)
    biased = MLPSpec((4, 8, 1), "relu", "ntk", sigma_b=1.0)
    with pytest.raises(ValueError, match="bias-free"):
        ng.kfac_operator(biased, biased.init(0), x, 1e-6)
    with pytest.raises(ValueError, match="MLPSpec"):
        ng.function_space_operator("kfac", lambda p, x: x, params, x, 1e-6)


@pytest.mark.parametrize("method", ng.METHODS)
def test_training_is_the_plain_preconditioned_step(method):
    """train_preconditioned (on training.run_loop) equals theta <- theta - lr * update_direction, step by step."""
    _, apply_fn, params, x, y = _setup((4, 16, 16, 1), 8)
    lr, steps = 0.05, 4
    res = ng.train_preconditioned(apply_fn, params, x, y, method, lr, steps, damping=1e-6)
    p, residuals = params, []
    for _ in range(steps):
        residuals.append(apply_fn(p, x) - y)
        d = ng.update_direction(method, apply_fn, p, x, y, 1e-6)
        p = jax.tree.map(lambda a, b: a - lr * b, p, d)
    residuals.append(apply_fn(p, x) - y)
    np.testing.assert_allclose(res.residuals, np.stack(residuals), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.losses, [0.5 * float(jnp.sum(r**2)) / 8 for r in residuals], rtol=1e-5)
    assert res.step_norms.shape == (steps,) and bool(jnp.all(res.step_norms > 0))


def test_kfac_layer_terms_and_the_exactness_condition(x64):
    """Layer l contributes N (P_a o P_delta). Hidden widths >= N: the last layer (rank-one delta Gram) gives I."""
    n = 6
    model, _, params, x, _ = _setup((3, 24, 24, 1), n)
    terms = ng.kfac_layer_terms(model, params, x, 1e-12)
    assert len(terms) == 3
    np.testing.assert_allclose(sum(np.asarray(t) for t in terms), np.asarray(ng.kfac_operator(model, params, x, 1e-12)),
                               atol=1e-8)
    np.testing.assert_allclose(np.asarray(terms[2]), np.eye(n), atol=1e-6)       # last layer: P_a = I
    np.testing.assert_allclose(np.asarray(terms[1]), n * np.eye(n), atol=1e-5)   # hidden: both projections I
    lev = np.diag(np.asarray(x @ jnp.linalg.solve(x.T @ x, x.T)))
    np.testing.assert_allclose(np.asarray(terms[0]), n * np.diag(lev), atol=1e-5)  # first: N diag(h)
    # inputs of layer 1 narrower than N (4 units): P_delta = I, so the term is N diag(leverages of a_1), unequal
    model, _, params, x, _ = _setup((8, 4, 24, 1), n)
    t = np.asarray(ng.kfac_layer_terms(model, params, x, 1e-12)[1])
    assert np.abs(t - np.diag(np.diag(t))).max() < 1e-6
    assert np.ptp(np.diag(t)) > 0.5
    np.testing.assert_allclose(np.trace(t), n * 4, rtol=1e-6)                     # leverages sum to rank(a_1) = 4


def test_equal_leverage_inputs_make_kfac_isotropic_with_d_below_n(x64):
    """d < N with equal leverages: the first layer's input Gram is singular, yet K-FAC is exactly isotropic."""
    n, d = 8, 3   # (1, cos, sin): distinct inputs off the origin's circle, so the hidden features have rank N
    x = ng.equal_leverage_inputs(n, d)
    proj = np.asarray(x @ jnp.linalg.solve(x.T @ x, x.T))
    np.testing.assert_allclose(np.diag(proj), d / n, atol=1e-12)
    model = MLPSpec((d, 32, 32, 1), "relu", "ntk", use_bias=False)
    a = np.asarray(ng.kfac_operator(model, model.init(0), x, 1e-12))
    np.testing.assert_allclose(a, (1 + n + d) * np.eye(n), atol=1e-5)
    xg = jax.random.normal(jax.random.key(3), (n, d))                          # generic inputs: not isotropic
    ev = np.linalg.eigvalsh(np.asarray(ng.kfac_operator(model, model.init(0), xg, 1e-12)))
    assert ev[-1] / ev[0] > 1.05
    np.testing.assert_allclose(np.diag(np.asarray(x @ x.T)) / n, d / n, atol=1e-12)
    assert len({tuple(np.round(r, 9)) for r in np.asarray(x)}) == n                 # distinct inputs
    x5 = ng.equal_leverage_inputs(n, 5)
    np.testing.assert_allclose(np.asarray(x5.T @ x5), n * np.eye(5), atol=1e-10)
    with pytest.raises(ValueError, match="num_examples"):
        ng.equal_leverage_inputs(1, 1)
    with pytest.raises(ValueError, match="input_dim"):
        ng.equal_leverage_inputs(8, 8)


def test_ngd_deviation_sweep_small(x64):
    out = ng.ngd_deviation_sweep(jax.random.key(0), [16, 32], num_examples=4, input_dim=4, num_seeds=2, num_steps=3)
    assert out["deviation"]["kfac"].shape == (2, 2) and out["linearization"]["ngd"].shape == (2, 2)
    assert np.all(out["deviation"]["block_diag"] >= 0) and np.all(np.isfinite(out["deviation"]["kfac"]))
    np.testing.assert_allclose(out["spread"]["block_diag"], 1.0, atol=1e-4)      # isotropic at init: widths >= N
    np.testing.assert_allclose(out["spread"]["kfac"], 1.0, atol=1e-4)            # d >= N
    with pytest.raises(ValueError, match="methods"):
        ng.ngd_deviation_sweep(jax.random.key(0), [16], 4, 4, 1, methods=("ngd",))


def _kfac_jax_for_current_jax():
    """kfac_jax 0.0.8 (its latest release), made to run on this JAX; skipped where it is not installed.

    kfac_jax re-evaluates traced equations with ``subfuns, params = primitive.get_bind_params(params)``;
    since JAX 0.9 ``get_bind_params`` returns the parameters alone. The replacement below binds
    with the parameters as they are, which is what the old two-value form amounted to for every
    primitive without sub-functions (dot_general, tanh, mul, ...). Primitives with sub-functions
    (custom_jvp, e.g. ``jax.nn.relu``) still fail, hence the tanh network in the test.
    """
    kfac_jax = pytest.importorskip("kfac_jax")
    import jax.extend as jex
    from kfac_jax._src import tag_graph_matcher

    def eval_jaxpr_eqn(eqn, in_values):
        with jex.source_info_util.user_context(eqn.source_info.traceback):
            out = eqn.primitive.bind(*in_values, **eqn.params)
        return out if isinstance(out, list) else [out]

    tag_graph_matcher.eval_jaxpr_eqn = eval_jaxpr_eqn
    return kfac_jax


@pytest.mark.parametrize("widths", [(3, 5, 4, 1), (3, 5, 4, 2)])
def test_kfac_factors_match_kfac_jax(x64, widths):
    """Our K-FAC blocks Abar (x) Gbar equal kfac_jax's exact-GGN Kronecker blocks, layer by layer.

    The loss is ``mse_loss`` (1/(2N) sum (f - y)^2), registered with kfac_jax as a squared error of
    weight 1/2 (kfac_jax's convention is weight * sum (f - y)^2 / N). kfac_jax tags h = a @ w, so
    its factors are a^T a / N and w_mult^2 sum_k delta_k^T delta_k / N: the scalar w_mult^2 sits in
    the other factor, and only the Kronecker product is comparable. Flattening w (n_in, n_out)
    row-major gives the order kron(A, G).
    """
    kfac_jax = _kfac_jax_for_current_jax()
    model = MLPSpec(widths, "tanh", "ntk", use_bias=False)
    params = model.init(0)
    x = jax.random.normal(jax.random.key(1), (6, widths[0]))
    y = jax.random.normal(jax.random.key(2), (6, widths[-1]))

    def loss(params, batch):
        xb, yb = batch
        out = model(params, xb)
        kfac_jax.register_squared_error_loss(out, yb, weight=0.5)
        return 0.5 * jnp.mean(jnp.sum((out - yb) ** 2, axis=1))

    estimator = kfac_jax.BlockDiagonalCurvature(func=loss, default_estimation_mode="ggn_exact")
    state = estimator.init(jax.random.key(3), func_args=(params, (x, y)), exact_powers_to_cache=None,
                           approx_powers_to_cache=None)
    state = estimator.update_curvature_matrix_estimate(state, ema_old=0.0, ema_new=1.0, identity_weight=0.0,
                                                       batch_size=x.shape[0], rng=jax.random.key(4),
                                                       func_args=(params, (x, y)))
    blocks = estimator.to_diagonal_block_dense_matrix(state)
    ours = ng._kfac_factors(model, params, x, 1e-9)
    assert len(blocks) == len(ours) == model.num_layers
    n = x.shape[0]
    for (phi_a, _, phi_d, _), block in zip(ours, blocks):
        expected = np.kron(phi_a.T @ phi_a / n, phi_d.T @ phi_d / n)
        np.testing.assert_allclose(np.asarray(block), expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())
