import jax
import jax.numpy as jnp
import numpy as np
import pytest

from overparam.experiments import tensorized as tt


def test_matvec_matches_full_matrix_and_counts():
    cores = tt.tt_init(jax.random.key(0), (2, 3, 4), (3, 2, 5), (2, 3))
    x = jax.random.normal(jax.random.key(1), (7, 24))
    w = tt.tt_full_matrix(cores)
    assert w.shape == (24, 30)
    assert jnp.allclose(tt.tt_matvec(cores, x), x @ w, atol=1e-5)
    assert tt.tt_param_count((2, 3, 4), (3, 2, 5), (2, 3)) == 1 * 2 * 3 * 2 + 2 * 3 * 2 * 3 + 3 * 4 * 5 * 1
    # step k costs (n_<k) r_{k-1} m_k n_k r_k (m_>k)
    assert tt.tt_macs((2, 3, 4), (3, 2, 5), (2, 3)) == 1 * 2 * 3 * 2 * 12 + 3 * 2 * 3 * 2 * 3 * 4 + 6 * 3 * 4 * 5


def test_full_matrix_index_order_single_rank_is_kronecker():
    a, b = jax.random.normal(jax.random.key(2), (2, 3)), jax.random.normal(jax.random.key(3), (4, 5))
    cores = [a[None, :, :, None], b[None, :, :, None]]
    assert jnp.allclose(tt.tt_full_matrix(cores), jnp.kron(a, b), atol=1e-6)


def test_dense_is_one_core_and_init_variance():
    assert tt.tt_macs((64,), (256,), ()) == 64 * 256
    with jax.enable_x64(True):  # variance estimate over 65k entries: avoid float32 accumulation noise
        w = tt.tt_full_matrix(tt.tt_init(jax.random.key(4), (4, 4, 4), (4, 8, 8), (4, 4), gain=2.0))
        assert abs(float(jnp.var(w)) * 64 / 2.0 - 1.0) < 0.25  # products of Gaussians: heavy tails


def test_mlp_counts_and_bad_input():
    p = tt.tt_mlp_init(jax.random.key(0), [(4, 4, 4), (4, 8, 8), (1, 1, 10)], 4)
    n_params, macs = tt.tt_mlp_counts(p)
    assert n_params == tt.tt_param_count((4, 4, 4), (4, 8, 8), (4, 4)) + 256 + tt.tt_param_count((4, 8, 8), (1, 1, 10), (4, 4)) + 10
    assert tt.tt_mlp_apply(p, jnp.ones((3, 64))).shape == (3, 10)
    with pytest.raises(ValueError, match="ranks"):
        tt.tt_core_shapes((2, 2), (2, 2), (1, 1))
    with pytest.raises(ValueError, match="x has shape"):
        tt.tt_matvec(p[0]["cores"], jnp.ones((3, 63)))


def test_train_tt_mlp_fits_and_checks_steps():
    p = tt.tt_mlp_init(jax.random.key(0), [(2, 2), (2, 4), (1, 3)], 2)
    x = jax.random.normal(jax.random.key(1), (30, 4))
    y = jax.nn.one_hot(jnp.argmax(x[:, :3], 1), 3)
    _, losses = tt.train_tt_mlp(p, x, y, 1e-2, 200)
    assert losses.shape == (200,) and float(losses[-1]) < 0.5 * float(losses[0])
    with pytest.raises(ValueError, match="num_steps"):
        tt.train_tt_mlp(p, x, y, 1e-2, 0)


def test_train_tt_mlp_matches_a_step_by_step_adam_reference():
    import optax

    from overparam.training import softmax_cross_entropy

    p0 = tt.tt_mlp_init(jax.random.key(0), [(2, 2), (2, 4), (1, 3)], 2)
    x = jax.random.normal(jax.random.key(1), (30, 4))
    y = jax.nn.one_hot(jnp.argmax(x[:, :3], 1), 3)
    lr, num_steps = 1e-2, 25
    opt = optax.adam(lr)
    loss = lambda p: softmax_cross_entropy(tt.tt_mlp_apply(p, x), y)

    @jax.jit
    def step(p, state):
        value, g = jax.value_and_grad(loss)(p)
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state, value

    p, state, want_losses = p0, opt.init(p0), []
    for _ in range(num_steps):  # the loss is recorded at theta_t, before step t's update
        p, state, value = step(p, state)
        want_losses.append(value)
    got, losses = tt.train_tt_mlp(p0, x, y, lr, num_steps)
    assert losses.shape == (num_steps,)
    np.testing.assert_allclose(losses, jnp.stack(want_losses), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_image_layer_families_equal_budgets_and_modes():
    from overparam.derivations import compression as sym
    fam = tt.image_layer_families(side=8, hidden_modes=(16, 16), classes=10)
    for r in (5, 10):
        p_tt = tt.tt_mlp_init_layers(jax.random.key(0), fam["tt"](r))
        p_uv = tt.tt_mlp_init_layers(jax.random.key(0), fam["lowrank"](4 * r // 5))
        n_tt, n_uv = tt.tt_mlp_counts(p_tt)[0], tt.tt_mlp_counts(p_uv)[0]
        assert n_tt == n_uv  # TT rank 5k and matrix rank 4k: the same budget, as derived
        tt_w, uv_w, r_match = sym.tt_lowrank_params(8, 16, 16, r)
        assert int(tt_w) == tt.tt_param_count((8, 8), (16, 16), (r,)) and int(uv_w) == 320 * r and r_match == 4 * r // 5
        h = tt.matched_dense_width(n_tt)
        assert abs(tt.tt_mlp_counts(tt.tt_mlp_init_layers(jax.random.key(0), fam["dense"](h)))[0] / n_tt - 1) < 0.01
    # the UV^T layer is U V^T: its full matrix has rank <= r
    w = tt.tt_full_matrix(tt.tt_mlp_init_layers(jax.random.key(1), fam["lowrank"](3))[0]["cores"])
    assert w.shape == (64, 256) and int(jnp.linalg.matrix_rank(w)) == 3
    # the TT layer's first mode is the image row: W[(row, col), (h1, h2)] = sum_a A_a[row, h1] B_a[col, h2]
    cores = tt.tt_mlp_init_layers(jax.random.key(2), fam["tt"](2))[0]["cores"]
    a, b = cores[0][0], cores[1][..., 0]  # (8, 16, 2), (2, 8, 16)
    w_ref = jnp.einsum("ija,akl->ikjl", a, b).reshape(64, 256)
    assert jnp.allclose(tt.tt_full_matrix(cores), w_ref, atol=1e-6)
    x = jax.random.normal(jax.random.key(3), (5, 64))
    assert tt.tt_mlp_apply(tt.tt_mlp_init_layers(jax.random.key(0), fam["tt"](5)), x).shape == (5, 10)
    with pytest.raises(ValueError, match="outputs"):
        tt.tt_mlp_init_layers(jax.random.key(0), [((8, 8), (16, 16), (2,)), ((100,), (10,), ())])


def test_tt_unfolding_ranks_counts_the_bond_ranks_of_the_weight():
    cores = tt.tt_init(jax.random.key(0), (4, 4, 4), (4, 8, 8), (3, 2))
    assert tt.tt_unfolding_ranks(cores) == [3, 2]
    # switching off one slice of the first bond (in the core on its left) lowers that bond's rank only
    cut = [cores[0].at[..., 2].set(0.0), cores[1], cores[2]]
    assert tt.tt_unfolding_ranks(cut) == [2, 2]
    # a small slice counts below the threshold and above it when the threshold is lower
    small = [cores[0].at[..., 2].multiply(1e-3), cores[1], cores[2]]
    assert tt.tt_unfolding_ranks(small, 0.1) == [2, 2] and tt.tt_unfolding_ranks(small, 1e-6) == [3, 2]
    with pytest.raises(ValueError, match="threshold"):
        tt.tt_unfolding_ranks(cores, 1.5)


def test_tt_teacher_task_labels_are_the_teachers_and_classes_are_balanced():
    modes = [(4, 4, 4), (4, 8, 8), (1, 1, 10)]
    teacher, x, y, xt, lt = tt.tt_teacher_task(jax.random.key(1), modes, 2, 2000, 300)
    assert x.shape == (2000, 64) and y.shape == (2000, 10) and xt.shape == (300, 64) and lt.shape == (300,)
    assert [tt.tt_unfolding_ranks(layer["cores"]) for layer in teacher] == [[2, 2], [2, 2]]
    np.testing.assert_array_equal(np.argmax(y, 1), np.argmax(tt.tt_mlp_apply(teacher, x), 1))
    np.testing.assert_array_equal(lt, np.argmax(tt.tt_mlp_apply(teacher, xt), 1))
    assert float(y.mean(0).max()) < 0.3 and float(y.mean(0).min()) > 0.005  # no class dominates or vanishes
