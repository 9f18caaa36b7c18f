"""Fixtures shared by the whole test suite."""

import os
import shutil

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


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium (playwright): skipped where it is not installed, a failure in CI (``CI`` set).

    Flags: ``--no-sandbox`` (CI runs as root) and no background requests of the browser itself, so the
    tests can check that a page's own requests stay on 127.0.0.1 (``_support.assert_local``).
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-quic"])
        yield b
        b.close()
