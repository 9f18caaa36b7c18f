"""Statistics behind the claims: power-law slopes, rank correlation, relative error."""

import numpy as np
import pytest

from overparam.stats import loglog_fit, rankdata, relative_error, spearman


def test_loglog_fit_recovers_exponent_and_reports_noise():
    x = np.array([16, 64, 256, 1024, 4096.0])
    fit = loglog_fit(x, 3.0 * x ** -0.5)
    assert fit.slope == pytest.approx(-0.5, abs=1e-12) and fit.stderr < 1e-10
    assert fit.predict(100.0) == pytest.approx(0.3)
    noisy = loglog_fit(x, 3.0 * x ** -0.5 * np.exp(np.array([0.1, -0.1, 0.05, 0.0, -0.05])))
    assert abs(noisy.slope + 0.5) < 0.1 and noisy.stderr > 0


def test_loglog_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 3"):
        loglog_fit([1, 2], [1, 2])
    with pytest.raises(ValueError, match="strictly positive"):
        loglog_fit([1, 2, 3], [1, 0, 2])
    with pytest.raises(ValueError, match="shape"):
        loglog_fit([1, 2, 3], [1, 2])


def test_spearman_and_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert list(rankdata([3, 1, 3])) == [2.5, 1.0, 2.5]
    # agrees with the Pearson correlation of ranks computed independently
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])


def test_relative_error():
    assert relative_error([1.0, 1.0], [1.0, 0.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error([1.0], [1.0, 2.0])


def test_sign_test():
    from overparam.stats import sign_test
    assert sign_test([1.0, 2.0, 3.0]) == pytest.approx(1 / 8)
    assert sign_test([1.0, -2.0, 3.0, 0.0, np.nan]) == pytest.approx(4 / 8)  # zeros and NaN dropped: n = 3, k = 2
    assert sign_test([-1.0]) == pytest.approx(1.0)
    assert np.isnan(sign_test([]))
