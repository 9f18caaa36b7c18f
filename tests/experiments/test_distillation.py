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
