"""gtpo/* metrics on a hand-counted batch."""

from __future__ import annotations

import math

import pytest
from batches import Batch

from gtpo_plugin import compute_gtpo_terms, gtpo_metrics


def test_metrics_on_the_worked_example():
    # Spec example with rewards 1, 0, 1 in group q and an empty completion in its own group r.
    batch = Batch([[5, 7, 9, 3, 2], [5, 7, 8, 3, 2], [5, 6, 1, 1, 3, 2], []], ["q", "q", "q", "r"],
                  [1.0, 0.0, 1.0, 0.0], [[0.2] * 5, [0.9] * 5, [0.4] * 6, []])
    terms = compute_gtpo_terms(batch.token_level_rewards(), batch.mask(), batch.responses(), batch.index(),
                               batch.entropy(), initial_entropy=0.5)
    metrics = gtpo_metrics(terms)
    # 16 valid tokens. λ: o1 = [2 2 1 2 2] (4 amplified), o2 = [0 0 1 0 0] (4 protected), o3 = [2 1 1 1 2 2] (3).
    assert metrics["gtpo/protected_token_frac"] == pytest.approx(4 / 16)
    assert metrics["gtpo/amplified_token_frac"] == pytest.approx(7 / 16)
    # ⟨H⟩ = 0.2, 0.9, 0.4 over the three non-empty completions; ⟨H⟩_ini = 0.5 ≤ ln 2 so 0.9 > ln 2 is dropped.
    assert metrics["gtpo/filtered_completion_frac"] == pytest.approx(1 / 3)
    assert metrics["gtpo/mean_completion_entropy"] == pytest.approx(0.5)
    assert metrics["gtpo/initial_entropy"] == 0.5


def test_metrics_of_an_empty_batch_are_zero_not_nan():
    batch = Batch([[], []], ["a", "a"], [1.0, 0.0], [[], []])
    terms = compute_gtpo_terms(batch.token_level_rewards(), batch.mask(), batch.responses(), batch.index(),
                               batch.entropy(), initial_entropy=math.inf)
    metrics = gtpo_metrics(terms)
    assert all(not math.isnan(value) for value in metrics.values())
    assert metrics["gtpo/protected_token_frac"] == 0.0
