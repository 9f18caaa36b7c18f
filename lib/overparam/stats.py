"""Small statistics used by claims: log-log slopes, rank correlations, relative errors, the sign test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit of log y = slope * log x + intercept, with the slope's standard error."""

    slope: float
    intercept: float
    stderr: float

    def predict(self, x):
        return np.exp(self.intercept) * np.asarray(x, dtype=float) ** self.slope


def loglog_fit(x, y) -> SlopeFit:
    """Fit a power law y ≈ C x^slope by least squares in log-log coordinates.

    ``x``, ``y``: 1-D, same length ≥ 3, strictly positive (ValueError otherwise).
    """
    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"loglog_fit: x has shape {x.shape} but y has shape {y.shape}")
    if x.size < 3:
        raise ValueError(f"loglog_fit needs at least 3 points, got {x.size}")
    if np.any(x <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError("loglog_fit needs strictly positive, finite x and y")
    lx, ly = np.log(x), np.log(y)
    A = np.stack([lx, np.ones_like(lx)], axis=1)
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    resid = ly - A @ coef
    dof = max(x.size - 2, 1)
    s2 = resid @ resid / dof
    stderr = float(np.sqrt(s2 / np.sum((lx - lx.mean()) ** 2)))
    return SlopeFit(float(coef[0]), float(coef[1]), stderr)


def rankdata(a) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    a = np.asarray(a, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(a.size, dtype=float)
    ranks[order] = np.arange(1, a.size + 1)
    for v in np.unique(a):
        tie = a == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation of two 1-D samples of equal length."""
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman: x has shape {x.shape} but y has shape {y.shape}")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx @ rx) * (ry @ ry))
    return float(rx @ ry / denom) if denom > 0 else float("nan")


def relative_error(estimate, reference) -> float:
    """‖estimate − reference‖_F / ‖reference‖_F."""
    estimate, reference = np.asarray(estimate), np.asarray(reference)
    if estimate.shape != reference.shape:
        raise ValueError(f"relative_error: shapes differ, {estimate.shape} vs {reference.shape}")
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def sign_test(values) -> float:
    """One-sided sign test: P(K >= k) for K ~ Binomial(n, 1/2), k the number of positive values.

    ``values``: 1-D; zeros and non-finite entries are dropped, n counts the rest. Small p says the
    values are positive more often than a symmetric null would make them (NaN when n = 0).
    """
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v != 0)]
    n, k = v.size, int(np.sum(v > 0))
    if n == 0:
        return float("nan")
    from math import comb
    return float(sum(comb(n, j) for j in range(k, n + 1)) / 2**n)
