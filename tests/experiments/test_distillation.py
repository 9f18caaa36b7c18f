import jax
import jax.numpy as jnp
import pytest

from overparam.experiments import distillation as ds
from overparam.derivations import compression as sym


def test_risk_is_the_derived_quadratic():
    rhos = jnp.linspace(0, 1, 6)
    o = ds.distillation_sweep(jax.random.key(0), rhos, 200, 16, 100, 4, 200, 1e-3, 0.7)
    rho, risk, rho_star, _ = sym.risk_quadratic()
    f = [float(sym.subs_by_name(risk, rho=float(r), AA=float(o["AA"]), ASe=float(o["ASe"]), SeSe=float(o["SeSe"]),
                                N=float(o["noise"]))) for r in rhos]
    # label-noise average over 200 trials: cross terms are zero mean, a few % relative
    assert jnp.allclose(o["risk"], jnp.array(f), rtol=0.1)


def test_perfect_teacher_has_no_teacher_error_and_argmin_fit():
    rhos = jnp.linspace(0, 1, 5)
    o = ds.distillation_sweep(jax.random.key(1), rhos, 20, 16, 50, 4, 100, 1e-3, 1.0)
    assert float(o["SeSe"]) == 0.0 and float(o["risk"][-1]) < float(o["risk"][0])
    assert abs(float(ds.quadratic_argmin(jnp.linspace(0, 1, 5), (jnp.linspace(0, 1, 5) - 0.3) ** 2)) - 0.3) < 1e-4
    with pytest.raises(ValueError):
        ds.distillation_sweep(jax.random.key(1), rhos, 2, 4, 4, 2, 10, 1e-3, 1.5)


def test_smoother_is_min_norm_interpolant():
    with jax.enable_x64(True):  # the interpolation check needs a tiny ridge
        phi = jax.random.normal(jax.random.key(2), (10, 50))
        s = ds.student_smoother(phi, phi, 1e-10)
        assert jnp.allclose(s, jnp.eye(10), atol=1e-6)


def test_rho_star_gap_sign_decides_which_side_of_one():
    """1 - rho* = (ASe + SeSe) / (N + SeSe): its sign, the condition of the chapter, matches the fitted argmin."""
    rhos = jnp.linspace(0, 2, 9)
    gap = sym.rho_star_gap()
    for ridge, scale, side in ((1e-3, 1.5, -1), (3.0, 1.3, 1)):  # interpolating vs shrinking student
        o = ds.distillation_sweep(jax.random.key(3), rhos, 100, 32, 200, 8, 300, ridge, 1.0, scale)
        g = float(sym.subs_by_name(gap, ASe=float(o["ASe"]), SeSe=float(o["SeSe"]), N=float(o["noise"])))
        cond = float(o["ASe"] + o["SeSe"])
        assert (g > 0) == (cond > 0)
        fitted = float(ds.quadratic_argmin(rhos, o["risk"]))
        assert (fitted - 1.0) * side > 0.0, (ridge, scale, fitted)  # side = +1: rho* > 1
        assert abs(fitted - (1.0 - g)) < 0.15


def test_teacher_scale_is_linear_in_the_teacher_error():
    rhos = jnp.linspace(0, 1, 3)
    o1 = ds.distillation_sweep(jax.random.key(4), rhos, 10, 16, 50, 4, 100, 1.0, 1.0, 2.0)
    o2 = ds.distillation_sweep(jax.random.key(4), rhos, 10, 16, 50, 4, 100, 1.0, 1.0, 3.0)
    # e = (kappa - 1) f*: <A, Se> doubles, |Se|^2 quadruples, A is unchanged
    assert abs(float(o2["ASe"]) / float(o1["ASe"]) - 2.0) < 1e-3
    assert abs(float(o2["SeSe"]) / float(o1["SeSe"]) - 4.0) < 1e-3
    assert abs(float(o2["AA"]) - float(o1["AA"])) < 1e-6
