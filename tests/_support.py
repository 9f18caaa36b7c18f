"""Helpers shared by several test files (imported as ``from _support import ...``)."""

import jax.numpy as jnp
import numpy as np

# The front matter of a jupytext MyST notebook, for tests that write small chapters of their own.
MYST_HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def normal(shape, seed=0):
    """Test data from numpy: no JAX PRNG kernel to compile for each shape."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))
