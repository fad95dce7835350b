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
from scipy import integrate, optimize
from scipy import stats as scipy_stats

__all__ = ["Interval", "detectable_difference", "mean_band", "mean_ci", "paired_difference"]

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


def paired_t_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test at level ``alpha`` for a true mean difference ``effect``.

    Exact under normal per-seed differences with standard deviation ``sd``: with Z standard normal,
    V chi-square on n − 1 degrees of freedom and noncentrality δ = effect·√n / sd, the statistic is
    T = (Z + δ) / √(V / (n − 1)), so P(|T| > c) = E_V[Φ(δ − c·s) + Φ(−δ − c·s)] with s = √(V / (n − 1)),
    integrated numerically over V (robust where scipy's noncentral t returns NaN, as at n = 2).
    """
    if n < 2 or not sd > 0:
        raise ValueError(f"power needs n >= 2 seeds and sd > 0, got n={n}, sd={sd}")
    dof = n - 1
    critical = float(scipy_stats.t.ppf(1.0 - alpha / 2.0, df=dof))
    noncentrality = abs(effect) * math.sqrt(n) / sd

    def rejection(v: float) -> float:
        scale = critical * math.sqrt(v / dof)
        tails = scipy_stats.norm.cdf(noncentrality - scale) + scipy_stats.norm.cdf(-noncentrality - scale)
        return float(tails * scipy_stats.chi2.pdf(v, dof))

    value, _ = integrate.quad(rejection, 0.0, math.inf, limit=200)
    return min(1.0, max(0.0, float(value)))


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true paired difference a study of ``n`` seeds detects with ``power`` at level ``alpha``.

    ``sd`` is the standard deviation of the per-seed differences (arm − baseline), as measured. The
    answer solves :func:`paired_t_power` = ``power`` (noncentral t, not the normal approximation,
    which is optimistic at 8 seeds). ``sd`` = 0 (identical arms) gives 0; n < 2 gives inf.
    """
    if not 0.0 < power < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"power and alpha must be in (0, 1), got power={power}, alpha={alpha}")
    if not math.isfinite(sd) or sd < 0:
        raise ValueError(f"sd must be finite and >= 0, got {sd}")
    if n < 2:
        return math.inf
    if sd == 0:
        return 0.0
    high = sd
    while paired_t_power(high, sd, n, alpha) < power:
        high *= 2.0
    return float(optimize.brentq(lambda effect: paired_t_power(effect, sd, n, alpha) - power, 0.0, high, xtol=1e-12))


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
