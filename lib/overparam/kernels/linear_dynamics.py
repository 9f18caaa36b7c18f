"""Closed-form training dynamics of a linear (linearized) model under the half-MSE loss.

Loss L = 1/(2N) ||f(X) - y||^2 over N training points; the model is linear in its parameters
with tangent kernel Theta (the empirical NTK at initialization). Gradient descent with step
``lr`` moves the training outputs as r_{k+1} = (I - lr Theta / N) r_k, r = f(X) - y, and a test
output as f_k(x*) = f_0(x*) + Theta(x*, X) Theta^{-1} (I - (I - lr Theta/N)^k) (y - f_0(X)).
Gradient flow (time t = lr * steps) replaces (I - lr Theta/N)^k by exp(-t Theta / N).
"""

from __future__ import annotations

from overparam.kernels.regression import gradient_flow_prediction


def _check(ntk_train, ntk_test_train, f0_train, f0_test, y):
    n = ntk_train.shape[0]
    if ntk_train.shape != (n, n):
        raise ValueError(f"ntk_train has shape {ntk_train.shape}; expected square (N, N)")
    if ntk_test_train.ndim != 2 or ntk_test_train.shape[1] != n:
        raise ValueError(f"ntk_test_train has shape {ntk_test_train.shape}; expected (M, {n})")
    for name, arr, size in (("f0_train", f0_train, n), ("y", y, n), ("f0_test", f0_test, ntk_test_train.shape[0])):
        if arr.shape != (size,):
            raise ValueError(f"{name} has shape {arr.shape}; expected ({size},)")


def linear_model_prediction(ntk_train, ntk_test_train, f0_train, f0_test, y, lr, num_steps=None, time=None):
    """Train and test outputs of the linear model after GD (``num_steps``) or gradient flow (``time``).

    ntk_train (N, N), ntk_test_train (M, N), f0_train (N,), f0_test (M,), y (N,): scalar outputs.
    Give exactly one of ``num_steps`` (discrete GD with step lr) or ``time`` (flow for time t, rate lr).
    Returns (f_train (N,), f_test (M,)). Diverges (large outputs) when lr >= 2N / lambda_max.
    """
    _check(ntk_train, ntk_test_train, f0_train, f0_test, y)
    if (num_steps is None) == (time is None):
        raise ValueError("give exactly one of num_steps (gradient descent) or time (gradient flow)")
    # The same spectral formula as kernel regression's gradient-flow prediction (one implementation);
    # eigen-directions below 1e-12 of the top eigenvalue do not move.
    pred = gradient_flow_prediction(ntk_train, ntk_test_train, y, f0_train, f0_test,
                                    t=None if time is None else lr * time,
                                    lr=lr if num_steps is not None else None, num_steps=num_steps, rcond=1e-12)
    return pred.mean_train, pred.mean
