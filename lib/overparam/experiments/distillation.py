"""Distillation into a linearized (random-features) student: closed form, transfer risk vs soft-label ratio.

Setting (a kernel-regime version of Ji & Zhu 2020): binary labels y in {-1, +1} with
P(y = 1 | x) = (1 + f*(x)) / 2, so E[y | x] = f*(x) (the regression function), x ~ N(0, I_d).
A teacher supplies soft labels t(x): perfect when t = f*, imperfect otherwise. The student is
a wide two-layer ReLU network in its linear (random-features) regime,
phi(x) = sqrt(2/m) relu(W x), W (m, d) ~ N(0, 1/d), trained to convergence on the squared
loss towards the mixed targets rho t + (1 - rho) y with a small ridge, which gives the linear
smoother f_student(x_test) = S (rho t + (1 - rho) y), S = Phi_test Phi^T (Phi Phi^T + ridge I)^-1.

Transfer risk: R(rho) = mean over test inputs of (f_student - f*)^2. Because f_student is linear
in the targets, R is a quadratic in rho; averaged over the label noise
(Var(y|x) = 1 - f*(x)^2) it is ``risk_quadratic`` in ``overparam.derivations.compression``:
R(rho) = |A + rho S e|^2 + (1 - rho)^2 tr(S D S^T) / n_test, with A = S f*_train - f*_test,
e = t_train - f*_train and D = diag(1 - f*_train^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def relu_features(w, x):
    """phi(x) = sqrt(2/m) relu(x W^T) for W (m, d), x (N, d) -> (N, m) (NTK-style 1/sqrt(m))."""
    return jnp.sqrt(2.0 / w.shape[0]) * jax.nn.relu(x @ w.T)


def student_smoother(phi_train, phi_test, ridge: float):
    """S (n_test, n) with f_student(test) = S targets: the ridge (ridge -> 0: min-norm) linear student."""
    k = phi_train @ phi_train.T
    return phi_test @ jnp.linalg.solve(k + ridge * jnp.eye(k.shape[0]), phi_train).T


def ridge_function(x, direction, amplitude: float = 0.9):
    """f(x) = amplitude * tanh(1.5 x . u), u = direction / |direction|: values in (-amplitude, amplitude)."""
    u = direction / jnp.linalg.norm(direction)
    return amplitude * jnp.tanh(1.5 * (x @ u))


def distillation_trial(key, rhos, n: int, n_test: int, d: int, width: int, ridge: float, teacher_cos: float,
                       teacher_scale: float = 1.0):
    """One draw of data, labels and student features; returns a dict of arrays.

    The target direction is e_1; the teacher uses a direction at cosine teacher_cos to it
    and the amplitude teacher_scale * 0.9 (teacher_cos = teacher_scale = 1: perfect teacher;
    teacher_scale > 1: an over-confident teacher, right in sign, too large in magnitude). rhos (R,) soft-label ratios. Returns
    risk (R,) transfer risk, error (R,) expected 0-1 test error mean (1 - sign(f_s) f*)/2,
    and the four terms of the averaged quadratic: AA = |A|^2, ASe = <A, S e>, SeSe = |S e|^2,
    noise = tr(S D S^T), each divided by n_test.
    """
    k_x, k_t, k_y, k_w = jax.random.split(key, 4)
    x = jax.random.normal(k_x, (n, d))
    x_test = jax.random.normal(k_t, (n_test, d))
    u = jnp.zeros(d).at[0].set(1.0)
    v = jnp.zeros(d).at[0].set(teacher_cos).at[1].set(jnp.sqrt(1.0 - teacher_cos**2))
    f_train, f_test, t_train = (ridge_function(x, u), ridge_function(x_test, u),
                                 ridge_function(x, v, 0.9 * teacher_scale))
    y = jnp.where(jax.random.uniform(k_y, (n,)) < (1.0 + f_train) / 2.0, 1.0, -1.0)
    w = jax.random.normal(k_w, (width, d)) / jnp.sqrt(d)
    s = student_smoother(relu_features(w, x), relu_features(w, x_test), ridge)
    preds = jax.vmap(lambda r: s @ (r * t_train + (1.0 - r) * y))(rhos)  # (R, n_test)
    a, se = s @ f_train - f_test, s @ (t_train - f_train)
    return {
        "risk": jnp.mean((preds - f_test) ** 2, axis=1),
        "error": jnp.mean((1.0 - jnp.sign(preds) * f_test) / 2.0, axis=1),
        "AA": a @ a / n_test, "ASe": a @ se / n_test, "SeSe": se @ se / n_test,
        "noise": jnp.sum(s**2 * (1.0 - f_train**2)[None, :]) / n_test,
    }


def distillation_sweep(key, rhos, num_trials: int, n: int, n_test: int, d: int, width: int, ridge: float, teacher_cos: float,
                       teacher_scale: float = 1.0):
    """``distillation_trial`` vmapped over num_trials keys, averaged over trials (one compile)."""
    if not -1.0 <= teacher_cos <= 1.0:
        raise ValueError(f"teacher_cos={teacher_cos} must lie in [-1, 1]")
    out = jax.vmap(lambda k: distillation_trial(k, jnp.asarray(rhos), n, n_test, d, width, ridge, teacher_cos,
                                                 teacher_scale))(
        jax.random.split(key, num_trials))
    return {k: jnp.mean(v, axis=0) for k, v in out.items()}


def quadratic_argmin(rhos, values):
    """Minimizer of the least-squares parabola through (rhos, values), clipped to [min, max] of rhos."""
    c2, c1, _ = jnp.polyfit(jnp.asarray(rhos), jnp.asarray(values), 2)
    return jnp.clip(-c1 / (2 * c2), jnp.min(rhos), jnp.max(rhos))
