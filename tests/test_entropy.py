"""⟨H⟩_i, ⟨H⟩_ini and the filter δ."""

from __future__ import annotations

import math

import pytest
import torch

from gtpo_plugin import completion_entropy, entropy_filter, mean_completion_entropy

ENTROPY = torch.tensor([[0.2, 0.4, 9.0], [1.0, float("nan"), float("nan")], [5.0, 5.0, 5.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])


def test_completion_entropy_is_the_mean_over_valid_tokens():
    # Row 0: (0.2 + 0.4) / 2 = 0.3; row 1: 1.0; row 2 has no valid token → 0.
    assert completion_entropy(ENTROPY, MASK).tolist() == pytest.approx([0.3, 1.0, 0.0])


def test_initial_entropy_averages_nonempty_completions_only():
    assert mean_completion_entropy(ENTROPY, MASK) == pytest.approx((0.3 + 1.0) / 2)
    with pytest.raises(ValueError, match="no completion in the batch has a model token"):
        mean_completion_entropy(ENTROPY, torch.zeros(3, 3))


def test_filter_rules():
    per_completion = torch.tensor([0.1, math.log(2), 0.9])
    assert entropy_filter(per_completion, initial_entropy=0.8, threshold=math.log(2)).tolist() == [True] * 3
    assert entropy_filter(per_completion, initial_entropy=0.5, threshold=math.log(2)).tolist() == [True, True, False]
    assert entropy_filter(per_completion, initial_entropy=math.inf, threshold=math.log(2)).all()
    assert entropy_filter(per_completion, initial_entropy=0.5, threshold=math.inf).all()
    with pytest.raises(ValueError, match="initial_entropy must be >= 0"):
        entropy_filter(per_completion, initial_entropy=float("nan"), threshold=0.5)
    with pytest.raises(ValueError, match="entropy_threshold must be > 0"):
        entropy_filter(per_completion, initial_entropy=0.5, threshold=-1.0)


def test_entropy_must_be_floating_point_and_takes_no_gradient():
    with pytest.raises(TypeError, match="entropy must be a floating-point tensor"):
        completion_entropy(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2))
    leaf = torch.full((1, 2), 0.5, requires_grad=True)
    assert not completion_entropy(leaf, torch.ones(1, 2)).requires_grad
