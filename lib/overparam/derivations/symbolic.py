"""Bridge between SymPy derivations and numerical code.

Derivations live in ``overparam.derivations.<topic>`` as functions returning SymPy
expressions; chapters print them with ``show`` and tests compare them with the
numerical code through ``to_numeric``.
"""

from __future__ import annotations

from typing import Iterable

import sympy as sp


def to_numeric(expr, symbols: Iterable[sp.Symbol], backend: str = "jax"):
    """``lambdify`` ``expr`` over ``symbols``; backend ``"jax"`` (jax.numpy) or ``"numpy"``.

    The JAX version traces under ``jit``/``vmap``; use float64 (``with jax.enable_x64(True):``)
    when comparing against a derivation to tight tolerances.
    """
    if backend == "jax":
        import jax.numpy as jnp

        return sp.lambdify(list(symbols), expr, modules=[{"erf": _jax_erf}, jnp])
    if backend == "numpy":
        import numpy as np
        from scipy.special import erf

        return sp.lambdify(list(symbols), expr, modules=[{"erf": erf}, np])
    raise ValueError(f"backend={backend!r} is not supported; allowed: 'jax', 'numpy'")


def _jax_erf(x):
    import jax.scipy.special as jss

    return jss.erf(x)


def latex(expr, lhs: str | None = None) -> str:
    """``lhs = expr`` as LaTeX (just ``expr`` without ``lhs``)."""
    body = sp.latex(expr)
    return f"{lhs} = {body}" if lhs else body


def show(expr, lhs: str | None = None):
    """Display ``lhs = expr`` as typeset math in a notebook (plain text elsewhere); returns the LaTeX."""
    text = latex(expr, lhs)
    try:
        from IPython.display import Math, display

        display(Math(text))
    except ImportError:
        print(text)
    return text
