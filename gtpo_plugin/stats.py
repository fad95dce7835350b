"""Confidence intervals for multi-seed experiments: Student t intervals of a mean and of a paired difference.

Seeds are few (2–16), so the interval is Student t on n − 1 degrees of freedom, not a normal
approximation and not a bootstrap (which under-covers at such n). A paired difference (GTPO − GRPO
on the same seeds) is the t interval of the per-seed differences. With one value the interval is
(−inf, +inf): the data say nothing about the spread, and such an interval contains every value, so a
test "the CI excludes 0" can never pass by accident. Framework-free: numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats

__all__ = ["Interval", "mean_band", "mean_ci", "paired_difference"]

STUDENT_T = "student_t"


@dataclass(frozen=True)
class Interval:
    """A sample mean with its two-sided confidence interval; ``method`` names how it was computed."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    method: str

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the closed interval [ci_low, ci_high]."""
        return self.ci_low <= value <= self.ci_high

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _check_confidence(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(confidence)


def _as_finite_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def _t_quantile(n: int, confidence: float) -> float:
    """t_{(1+c)/2, n-1}: the half-width of the interval in units of the standard error."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2.0, df=n - 1))


def mean_ci(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of ``values`` with its Student t interval (sample std, n − 1 dof); (−inf, inf) when n = 1."""
    confidence = _check_confidence(confidence)
    array = _as_finite_1d(values, "values")
    n = int(array.size)
    mean = float(array.mean())
    if n == 1:
        return Interval(mean=mean, ci_low=-math.inf, ci_high=math.inf, n=1, method=STUDENT_T)
    half = _t_quantile(n, confidence) * float(array.std(ddof=1)) / math.sqrt(n)
    return Interval(mean=mean, ci_low=mean - half, ci_high=mean + half, n=n, method=STUDENT_T)


def paired_difference(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> Interval:
    """Mean of a − b over paired entries (same seed) with the t interval of the differences."""
    left, right = _as_finite_1d(a, "a"), _as_finite_1d(b, "b")
    if left.shape != right.shape:
        raise ValueError(f"a and b must be paired (same length), got {left.size} and {right.size}")
    return mean_ci(left - right, confidence)


def mean_band(
    curves: Sequence[Sequence[float]] | np.ndarray, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step mean and t band of curves ``[seeds, steps]``: three arrays ``[steps]``.

    With one seed the band is (−inf, inf) at every step (callers that plot should skip it).
    Cost O(seeds · steps).
    """
    confidence = _check_confidence(confidence)
    array = np.asarray(curves, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"curves must be a non-empty 2-D array [seeds, steps], got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("curves must be finite")
    n = int(array.shape[0])
    mean = array.mean(axis=0)
    if n == 1:
        return mean, np.full_like(mean, -math.inf), np.full_like(mean, math.inf)
    half = _t_quantile(n, confidence) * array.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half
