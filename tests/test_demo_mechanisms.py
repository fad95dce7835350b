"""The demo's mechanism metrics against a naive loop reference and a hand-made batch."""

from __future__ import annotations

import math

import pytest
import torch

from gtpo_plugin.demo.mechanisms import MECHANISM_KEYS, mechanism_metrics


def naive_mechanisms(old, new, mask, conflicts, tags, advantage, entropy, threshold):
    """Loop over rows and columns: mean log-prob and mean change per (token set, sign)."""
    sums: dict[str, list[float]] = {}
    for i in range(old.shape[0]):
        sign = "pos" if advantage[i] > 0 else "neg" if advantage[i] < 0 else None
        if sign is None:
            continue
        for t in range(old.shape[1]):
            if not mask[i, t]:
                continue
            for family, selected in (("conflict_token", conflicts), ("format_tag", tags)):
                if selected[i, t]:
                    sums.setdefault(f"{family}_logprob/{sign}", []).append(float(old[i, t]))
                    sums.setdefault(f"{family}_logprob_change/{sign}", []).append(float(new[i, t] - old[i, t]))
    result = {key: (sum(sums[key]) / len(sums[key]) if key in sums else math.nan) for key in MECHANISM_KEYS}
    rows = [i for i in range(old.shape[0]) if mask[i].any()]
    result["demo/above_tau_frac"] = sum(float(entropy[i]) > threshold for i in rows) / max(1, len(rows))
    return result


def test_hand_made_batch():
    # Two completions of 3 tokens; row 0 positive, row 1 negative; row 1's last column is padding.
    old = torch.tensor([[-0.1, -0.2, -0.3], [-1.0, -2.0, -9.0]])
    new = torch.tensor([[-0.05, -0.2, -0.1], [-1.5, -2.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    conflicts = torch.tensor([[True, False, True], [True, False, True]])  # (1, 2) is padding: not counted
    tags = torch.tensor([[True, True, False], [False, True, False]])
    metrics = mechanism_metrics(old, new, mask, conflicts, tags, torch.tensor([1.0, -1.0]),
                                torch.tensor([0.9, 0.1]), threshold=math.log(2.0))
    assert metrics["conflict_token_logprob/pos"] == pytest.approx((-0.1 - 0.3) / 2)
    assert metrics["conflict_token_logprob_change/pos"] == pytest.approx((0.05 + 0.2) / 2)
    assert metrics["conflict_token_logprob/neg"] == pytest.approx(-1.0)  # padding at (1, 2) left out
    assert metrics["conflict_token_logprob_change/neg"] == pytest.approx(-0.5)
    assert metrics["format_tag_logprob/pos"] == pytest.approx(-0.15)
    assert metrics["format_tag_logprob/neg"] == pytest.approx(-2.0)
    assert metrics["format_tag_logprob_change/neg"] == pytest.approx(0.0)
    assert metrics["demo/above_tau_frac"] == 0.5  # 0.9 > ln 2 > 0.1


def test_against_naive_loops_on_random_batches():
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        rows, columns = int(torch.randint(1, 9, (1,), generator=generator)), int(torch.randint(1, 7, (1,),
                                                                                              generator=generator))
        old = -torch.rand(rows, columns, generator=generator) * 3
        new = old + torch.randn(rows, columns, generator=generator) * 0.1
        mask = torch.rand(rows, columns, generator=generator) < 0.8
        conflicts = (torch.rand(rows, columns, generator=generator) < 0.4) & mask
        tags = torch.rand(rows, columns, generator=generator) < 0.3
        advantage = torch.randint(-1, 2, (rows,), generator=generator).float()
        entropy = torch.rand(rows, generator=generator)
        ours = mechanism_metrics(old, new, mask, conflicts, tags, advantage, entropy, threshold=0.5)
        reference = naive_mechanisms(old, new, mask, conflicts, tags, advantage, entropy, 0.5)
        assert ours.keys() == reference.keys()
        for key, value in reference.items():
            if math.isnan(value):
                assert math.isnan(ours[key]), key
            else:
                assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_empty_sets_are_nan_not_zero():
    zeros = torch.zeros(2, 3)
    metrics = mechanism_metrics(zeros, zeros, torch.ones(2, 3), torch.zeros(2, 3, dtype=torch.bool),
                                torch.zeros(2, 3, dtype=torch.bool), torch.tensor([0.0, 0.0]), torch.zeros(2), 0.7)
    assert all(math.isnan(metrics[key]) for key in MECHANISM_KEYS)
    assert metrics["demo/above_tau_frac"] == 0.0
