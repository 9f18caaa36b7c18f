"""Fixtures shared by the whole test suite."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test in double precision (``jax.enable_x64``).

    Used where two exact computations (a SymPy formula and autodiff, two kernel
    implementations, a solve and an exponential) are compared to ~1e-10: float32 rounding
    (~1e-6) would hide real errors. A file that needs it everywhere sets
    ``pytestmark = pytest.mark.usefixtures("x64")``.
    """
    with jax.enable_x64(True):
        yield
