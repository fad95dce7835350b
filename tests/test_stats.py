"""Student t intervals against hand-computed numbers and a naive loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gtpo_plugin.stats import Interval, detectable_difference, mean_band, mean_ci, paired_difference, paired_t_power


def test_mean_ci_hand_computed():
    # [1, 2, 3, 4]: mean 2.5, s = sqrt(5/3) = 1.290994, se = s / 2 = 0.645497,
    # t_{0.975, 3} = 3.182446, half = 2.054260 -> [0.445740, 4.554260]
    interval = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert interval.mean == 2.5
    assert interval.ci_low == pytest.approx(0.445740, abs=1e-6)
    assert interval.ci_high == pytest.approx(4.554260, abs=1e-6)
    assert (interval.n, interval.method) == (4, "student_t")


def test_mean_ci_other_confidence():
    # [0.30, 0.40, 0.35]: mean 0.35, s = 0.05, se = 0.05 / sqrt(3) = 0.028868,
    # t_{0.95, 2} = 2.919986 (90% two-sided), half = 0.084293 -> [0.265707, 0.434293]
    interval = mean_ci([0.30, 0.40, 0.35], confidence=0.90)
    assert interval.mean == pytest.approx(0.35)
    assert interval.ci_low == pytest.approx(0.265707, abs=1e-6)
    assert interval.ci_high == pytest.approx(0.434293, abs=1e-6)


def test_paired_difference_hand_computed():
    # differences [1, 2, 2]: mean 5/3, s = sqrt(1/3) = 0.577350, se = 0.333333,
    # t_{0.975, 2} = 4.302653, half = 1.434218 -> [0.232449, 3.100884]
    interval = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 1.0])
    assert interval.mean == pytest.approx(5 / 3)
    assert interval.ci_low == pytest.approx(0.232449, abs=1e-6)
    assert interval.ci_high == pytest.approx(3.100884, abs=1e-6)
    assert not interval.contains(0.0)
    # a constant shift: zero spread, the interval collapses to the shift
    exact = paired_difference([0.5, 0.7], [0.4, 0.6])
    assert exact.ci_low == pytest.approx(0.1) and exact.ci_high == pytest.approx(0.1)


def test_against_naive_loop():
    rng = np.random.default_rng(0)
    quantiles = {2: 12.706205, 5: 2.776445, 8: 2.364624}  # t_{0.975, n-1}, from tables
    for n, t in quantiles.items():
        values = rng.normal(size=n).tolist()
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        half = t * math.sqrt(var / n)
        interval = mean_ci(values)
        assert interval.ci_low == pytest.approx(mean - half, rel=1e-5)
        assert interval.ci_high == pytest.approx(mean + half, rel=1e-5)


def test_one_value_gives_an_infinite_interval():
    interval = mean_ci([0.3])
    assert interval.mean == 0.3
    assert interval.ci_low == -math.inf and interval.ci_high == math.inf
    assert interval.contains(0.0)
    mean, low, high = mean_band([[0.1, 0.2]])
    assert mean.tolist() == [0.1, 0.2]
    assert np.all(np.isneginf(low)) and np.all(np.isposinf(high))


def test_mean_band_matches_mean_ci_per_step():
    curves = np.array([[0.1, 0.5, 0.9], [0.3, 0.4, 1.0], [0.2, 0.9, 0.8]])
    mean, low, high = mean_band(curves)
    for step in range(3):
        interval = mean_ci(curves[:, step])
        assert mean[step] == pytest.approx(interval.mean)
        assert low[step] == pytest.approx(interval.ci_low)
        assert high[step] == pytest.approx(interval.ci_high)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="a and b must be paired"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="values must be a non-empty 1-D"):
        mean_ci([])
    with pytest.raises(ValueError, match="values must be finite"):
        mean_ci([1.0, math.nan])
    with pytest.raises(ValueError, match="confidence must be in"):
        mean_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match=r"curves must be a non-empty 2-D array \[seeds, steps\]"):
        mean_band([1.0, 2.0])


def test_interval_to_dict():
    interval = Interval(mean=1.0, ci_low=0.0, ci_high=2.0, n=3, method="student_t")
    assert interval.to_dict() == {"mean": 1.0, "ci_low": 0.0, "ci_high": 2.0, "n": 3, "method": "student_t"}


def test_detectable_difference_matches_the_power_table():
    # One-sample/paired t test, two-sided alpha 0.05, power 0.8: standardised effect d = 0.8466 at
    # n = 13 (power tables for the t test of a mean); n = 8 is checked by simulation below.
    assert detectable_difference(1.0, 13) == pytest.approx(0.8466, abs=1e-3)
    # linear in sd; more seeds resolve smaller differences; more than the normal approximation's
    assert detectable_difference(0.04, 8) == pytest.approx(0.04 * detectable_difference(1.0, 8))
    normal = (1.959964 + 0.841621) / math.sqrt(8)
    assert detectable_difference(1.0, 8) > normal
    assert detectable_difference(0.0, 8) == 0.0 and detectable_difference(1.0, 1) == math.inf


def test_power_at_the_detectable_difference_is_the_asked_power_by_simulation():
    # Monte Carlo of the paired t test at the computed effect: rejects ~80% of the time.
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(1)
    n, sd = 8, 0.05
    effect = detectable_difference(sd, n)
    differences = rng.normal(effect, sd, size=(20_000, n))
    t = differences.mean(axis=1) / (differences.std(axis=1, ddof=1) / math.sqrt(n))
    rejected = np.abs(t) > scipy_stats.t.ppf(0.975, df=n - 1)
    assert rejected.mean() == pytest.approx(0.8, abs=0.015)
    assert paired_t_power(effect, sd, n) == pytest.approx(0.8, abs=1e-9)
    assert paired_t_power(0.0, sd, n) == pytest.approx(0.05, abs=1e-9)


def test_detectable_difference_rejects_bad_input():
    with pytest.raises(ValueError, match="power and alpha"):
        detectable_difference(1.0, 8, power=1.0)
    with pytest.raises(ValueError, match="sd must be finite"):
        detectable_difference(-1.0, 8)
