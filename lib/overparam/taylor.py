"""Taylor models of a network in its parameters: the linearized and the neural quadratic model.

For a network ``apply_fn(params, x)`` and a reference point ``params0`` (usually the
initialization), with dp = params - params0:

    f_lin(params, x)  = f(params0, x) + J(params0, x) dp
    f_quad(params, x) = f(params0, x) + J(params0, x) dp + 1/2 dp^T H(params0, x) dp

where J and H are the first and second derivatives of the output in the parameters. Both are
computed with forward-mode products (``jax.jvp`` and a jvp of a jvp), never materializing J
or H, so they cost a small constant times one forward pass. Both are pure functions with the
signature of ``apply_fn``: they can be trained with ``overparam.training``, differentiated,
``jax.vmap``-ed and jitted like the network.
"""

from __future__ import annotations

import jax


def _displacement(params, params0):
    return jax.tree.map(lambda p, p0: p - p0, params, params0)


def linearize(apply_fn, params0):
    """First-order Taylor model ``f_lin(params, x)`` of ``apply_fn`` around ``params0``.

    f_lin(params, x) = f(params0, x) + J(params0, x) (params - params0); same output
    shape as ``apply_fn``. Exactly affine in ``params``.
    """

    def f_lin(params, x):
        dp = _displacement(params, params0)
        f0, df = jax.jvp(lambda p: apply_fn(p, x), (params0,), (dp,))
        return f0 + df

    return f_lin


def quadratize(apply_fn, params0):
    """Second-order Taylor model (neural quadratic model) ``f_quad(params, x)`` around ``params0``.

    f_quad(params, x) = f0 + J dp + 1/2 dp^T H dp with dp = params - params0, all
    derivatives at ``params0``; H dp dp is the jvp (in direction dp) of the jvp in direction dp.
    """

    def f_quad(params, x):
        dp = _displacement(params, params0)

        def value_and_directional(p):
            return jax.jvp(lambda q: apply_fn(q, x), (p,), (dp,))

        # One jvp of (f, J dp) in direction dp gives (f0, J dp) and (J dp, dp^T H dp).
        (f0, df), (_, d2f) = jax.jvp(value_and_directional, (params0,), (dp,))
        return f0 + df + 0.5 * d2f

    return f_quad
