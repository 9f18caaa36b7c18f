"""Hessian parts and ranks: closed form vs autodiff, the rank formulas, ReLU statements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import hessian_rank as hr
from overparam.curvature import hessian_full
from overparam.training import full_batch_loss


@pytest.fixture
def x64():
    with jax.enable_x64(True):  # ranks and exact identities need float64 (gaps of 1e-10 vs 1e-16)
        yield


def _linear_apply(params, x):
    out = x
    for w in params:
        out = out @ w
    return out


@pytest.mark.parametrize("widths,n,r", [((4, 3, 2), 6, 3), ((5, 4, 3, 2), 7, 4), ((3, 4, 2, 3, 2), 5, 2)])
def test_closed_form_equals_autodiff(x64, widths, n, r):
    weights, x, y = hr.random_deep_linear_problem(0, widths, n, r)
    closed = hr.deep_linear_hessian_parts(weights, x, y)
    auto = hr.hessian_parts(_linear_apply, [jnp.asarray(w) for w in weights], jnp.asarray(x), jnp.asarray(y))
    for name in ("outer", "functional", "full"):
        np.testing.assert_allclose(getattr(closed, name), getattr(auto, name), atol=1e-12)


def test_parts_sum_to_loss_hessian(x64):
    """H_o + H_f equals jax.hessian of the MSE loss, for a non-linear network too."""
    key = jax.random.key(3)
    params = [jax.random.normal(k, s) for k, s in zip(jax.random.split(key, 2), [(3, 5), (5, 2)])]
    x = jax.random.normal(jax.random.key(4), (7, 3))
    y = jax.random.normal(jax.random.key(5), (7, 2))

    def apply(p, x):
        return jnp.tanh(x @ p[0]) @ p[1]

    parts = hr.hessian_parts(apply, params, x, y)
    full = hessian_full(full_batch_loss(apply, x, y), params)  # the library's loss and Hessian
    np.testing.assert_allclose(parts.full, full, atol=1e-12)
    assert hr.numerical_rank(parts.functional) > 0


def test_functional_part_vanishes_at_interpolation():
    """A deep linear net fitting y exactly (e = 0) has H_f = 0 and H = H_o."""
    weights, x, _ = hr.random_deep_linear_problem(1, (4, 3, 2), 6, 4)
    y = x @ weights[0] @ weights[1]
    parts = hr.deep_linear_hessian_parts(weights, x, y)
    assert np.abs(parts.functional).max() < 1e-12
    assert hr.numerical_rank(parts.full) == hr.deep_linear_rank_formula((4, 3, 2), 4).outer


GRID = [(w, n) for w in [(6, 2, 4), (6, 5, 4), (6, 9, 4), (6, 5, 5, 4), (6, 2, 7, 4), (6, 5, 5, 5, 4),
                         (6, 7, 3, 8, 4), (3, 8, 8, 2), (5, 3, 3, 4)] for n in (3, 12)]


@pytest.mark.parametrize("widths,n", GRID)
def test_rank_formula_matches_numerical_rank(widths, n):
    """Exact agreement of the three formulas with float64 ranks, bottlenecks included."""
    row = hr.deep_linear_rank_check(0, widths, n, min(widths[0], n))
    assert (row["outer"], row["functional"], row["full"]) == (row["outer_pred"], row["functional_pred"], row["full_pred"])
    assert row["match"]


def test_functional_formula_covers_bottlenecks():
    """(5, 3, 3, 4), r = 5: s = 4 > M_i = 3. The general formula holds; the theorem's form (M_i >= s) does not."""
    pred = hr.deep_linear_rank_formula((5, 3, 3, 4), 5)
    row = hr.deep_linear_rank_check(0, (5, 3, 3, 4), 12, 5)
    assert row["functional"] == pred.functional == 2 * 3 * 6 + 2 * 3 * 4 - 3 * 9
    naive = 2 * 4 * 6 - 1 * 4 * 4
    assert row["functional"] != naive
    # no bottleneck (M_i >= s): the general formula reduces to 2 s S - (L - 2) s^2
    assert hr.deep_linear_rank_formula((6, 5, 7, 4), 6).functional == 2 * 4 * 12 - 1 * 16
    assert hr.functional_cycle_widths((5, 3, 3, 4), 5) == (3, 3, 4)
    assert hr.functional_cycle_widths((6, 7, 2, 8, 4), 6) == (2, 8, 4, 7)


def test_modular_rank_is_exact():
    rng = np.random.default_rng(0)
    for rank in (0, 1, 3, 5):
        a = rng.integers(-9, 10, (7, rank)) @ rng.integers(-9, 10, (rank, 6)) if rank else np.zeros((7, 6))
        assert hr.modular_rank(a) == rank == np.linalg.matrix_rank(a)
    # a rank drop at 1e-17 relative size that a float threshold cannot see is seen exactly
    big = np.array([[2**26, 1], [2**26 + 1, 1]], dtype=np.float64)
    assert hr.modular_rank(big) == 2
    assert hr.modular_rank(np.array([[3, 6], [1, 2]])) == 1
    assert hr.modular_rank(np.array([[7, 0], [0, 7]]), prime=7) == 0   # p divides every minor: why two primes
    with pytest.raises(ValueError, match="matrix"):
        hr.modular_rank(np.ones(3))
    with pytest.raises(ValueError, match="integers"):
        hr.modular_rank(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="prime"):
        hr.modular_rank(np.eye(2), prime=2**31)


def test_relu_integer_ranks(x64):
    """Exact ranks at an integer point: one hidden layer gives rank H_f = 2 M s; the float64 rank agrees (clean gap)."""
    for m in (3, 6):
        ranks = hr.relu_integer_hessian_ranks(0, (3, m, 2), 8)
        assert ranks.functional == hr.relu_functional_rank_one_hidden((3, m, 2), 3)
        assert ranks.outer >= 2 * min(8, m)
        assert ranks.num_params == 3 * m + 2 * m
    weights, x, y = hr.relu_integer_problem(1, (3, 5, 4, 2), 6)
    assert all(np.array_equal(w, np.round(w)) for w in weights)
    exact = hr.relu_integer_hessian_ranks(1, (3, 5, 4, 2), 6)
    parts = hr.hessian_parts(hr._relu_apply, [jnp.asarray(w) for w in weights], jnp.asarray(x), jnp.asarray(y))
    assert (exact.outer, exact.full) == (hr.numerical_rank(parts.outer), hr.numerical_rank(parts.full))
    with pytest.raises(ValueError, match="widths"):
        hr.relu_integer_problem(0, (3,), 4)


def test_rank_is_far_below_param_count_for_wide_deep_nets():
    pred = [hr.deep_linear_rank_formula((4, m, m, 2), 4) for m in (16, 256, 4096)]
    ratios = [p.full / p.num_params for p in pred]
    assert ratios[0] > ratios[1] > ratios[2] and ratios[2] < 0.01


def test_numerical_rank_basics():
    assert hr.numerical_rank(np.zeros((3, 3))) == 0
    a = np.outer(np.arange(1.0, 5.0), np.ones(3))
    assert hr.numerical_rank(a) == 1
    assert hr.numerical_rank(np.diag([1.0, 1e-3, 1e-12])) == 3
    assert hr.numerical_rank(np.diag([1.0, 1e-3, 1e-12]), rtol=1e-6) == 2
    with pytest.raises(ValueError, match="matrix"):
        hr.numerical_rank(np.ones(3))
    with pytest.raises(ValueError, match="rtol"):
        hr.numerical_rank(np.eye(2), rtol=-1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        hr.deep_linear_rank_formula((4, 2), 2)
    with pytest.raises(ValueError, match="r="):
        hr.deep_linear_rank_formula((4, 3, 2), 5)
    with pytest.raises(ValueError, match="num_examples"):
        hr.random_deep_linear_problem(0, (4, 3, 2), 2, 3)
    w, x, y = hr.random_deep_linear_problem(0, (4, 3, 2), 5, 3)
    with pytest.raises(ValueError, match="shape"):
        hr.deep_linear_hessian_parts([w[0], w[0]], x, y)
    with pytest.raises(ValueError, match="y has shape"):
        hr.deep_linear_hessian_parts(w, x, y[:, :1])


def test_relu_ranks(x64):
    """One hidden ReLU layer: rank H_f = 2 M s exactly; H_o exceeds the linear formula (>= K min(N, M))."""
    x = jax.random.normal(jax.random.key(1), (10, 3))
    y = jax.random.normal(jax.random.key(2), (10, 2))
    for m in (4, 9):
        ranks = hr.mlp_hessian_ranks(jax.random.key(0), (3, m, 2), x, y)
        assert ranks.functional == hr.relu_functional_rank_one_hidden((3, m, 2), 3)
        assert ranks.outer >= 2 * min(10, m) > hr.deep_linear_rank_formula((3, m, 2), 3).outer
    linear = hr.mlp_hessian_ranks(jax.random.key(0), (3, 4, 4, 2), x, y, activation="linear")
    pred = hr.deep_linear_rank_formula((3, 4, 4, 2), 3)
    assert (linear.outer, linear.functional, linear.full) == (pred.outer, pred.functional, pred.full)


def test_relu_functional_block_pairs_the_perturbations_unit_by_unit(x64):
    """One hidden ReLU layer: H_f[(a, m), (m', k)] = [m = m'] c Omega_m[a, k], Omega_m = X^T D_m e / N; no W_1 in it.

    The bilinear form is sum_m dW_1[:, m]^T Omega_m dW_2[m, :]^T in the perturbations dW_1, dW_2 (c: the
    product of the two layers' NTK multipliers); the diagonal blocks vanish.
    """
    from overparam.models import MLPSpec

    d, m, k, n = 3, 4, 2, 7
    spec = MLPSpec((d, m, k), "relu", "ntk", use_bias=False)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), spec.init(0))
    x = jax.random.normal(jax.random.key(1), (n, d), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (n, k), jnp.float64)
    h_f = hr.hessian_parts(spec, params, x, y).functional
    _, pre = spec.trace(params, x)
    e = np.asarray(spec(params, x) - y)
    mask = np.asarray(pre[0] > 0, dtype=float)                                     # D_m on the diagonal, (N, M)
    c = spec.layer_scales()[0][2] * spec.layer_scales()[1][2]
    omega = np.einsum("na,nm,nk->mak", np.asarray(x), mask, e) / n                 # Omega_m (M, d, K)
    block = np.zeros((d, m, m, k))
    for j in range(m):
        block[:, j, j, :] = c * omega[j]
    np.testing.assert_allclose(h_f[: d * m, d * m:], block.reshape(d * m, m * k), atol=1e-12)
    np.testing.assert_allclose(h_f[: d * m, : d * m], 0, atol=1e-12)
    np.testing.assert_allclose(h_f[d * m:, d * m:], 0, atol=1e-12)
