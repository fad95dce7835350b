"""GTPO advantages: naive reference, verl's GRPO, and the rules of δ and γ on hand-made cases."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from batches import Batch, random_batch, random_gtpo_options, unpad
from naive_reference import naive_group_advantage, naive_gtpo_advantage

from gtpo_plugin import compute_gtpo_advantage, compute_gtpo_terms, group_advantage

LN2 = math.log(2)


def gtpo(batch: Batch, width: int | None = None, **kwargs):
    kwargs.setdefault("initial_entropy", 1.0)
    return compute_gtpo_advantage(batch.token_level_rewards(width), batch.mask(width), batch.responses(width),
                                  batch.index(), batch.entropy(width), **kwargs)


@pytest.mark.parametrize("mode", ["prefix_suffix", "any", "none"])
def test_matches_naive_reference_on_random_batches(mode):
    rng = random.Random(99)
    for _ in range(200):
        batch = random_batch(rng, binary_rewards=rng.random() < 0.6)
        options = random_gtpo_options(rng)
        width = batch.width + rng.randint(0, 2)
        advantages, returns = gtpo(batch, width, conflict_mode=mode, **options)
        expected = naive_gtpo_advantage(batch.completions, batch.groups, batch.scores, batch.entropies,
                                        conflict_mode=mode, **options)
        assert advantages is returns
        for got, want in zip(unpad(advantages, batch), expected, strict=True):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert advantages[batch.mask(width) == 0].eq(0).all()


def test_group_advantage_matches_naive_and_handles_singletons_and_ties():
    scores = torch.tensor([1.0, 0.0, 1.0, 5.0, 2.0, 2.0, 0.25, 0.75])
    groups = ["a", "a", "a", "b", "c", "c", "d", "d"]
    got = group_advantage(scores, np.array(groups))
    expected = naive_group_advantage(scores.tolist(), groups)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    # Group a: mean 2/3, unbiased std sqrt(1/3) = 0.57735 → A = (1 − 2/3)/0.57735 = 0.57735.
    assert got[0].item() == pytest.approx(0.57735, abs=1e-5)
    assert got[3].item() == pytest.approx(5.0 / (1 + 1e-6))  # a group of one: mean 0, std 1
    assert got[4].item() == 0.0 and got[5].item() == 0.0  # all-equal rewards: exactly zero
    unnormalised = group_advantage(scores, np.array(groups), norm_adv_by_std=False)
    assert unnormalised[6].item() == pytest.approx(-0.25)


def test_equals_verl_grpo_when_gtpo_parts_are_off():
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    rng = random.Random(5)
    for norm in (True, False):
        for _ in range(30):
            batch = random_batch(rng, vocab=50, max_len=12, max_groups=6, max_group=8, binary_rewards=False)
            rewards, mask = batch.token_level_rewards(), batch.mask()
            ours, _ = gtpo(batch, entropy_coef=0.0, conflict_mode="none", initial_entropy=math.inf,
                           norm_adv_by_std=norm)
            verl_adv, _ = core_algos.compute_grpo_outcome_advantage(
                rewards.clone(), mask, batch.index(), norm_adv_by_std_in_grpo=norm)
            assert (ours - verl_adv).abs().max().item() <= 1e-5


# ------------------------------------------------------------------ δ and γ on hand-made cases

# Two completions in one group, rewards 1 and 0: A = ±(0.5 / (0.70711 + 1e-6)) = ±0.70711.
# Their tokens differ everywhere, so λ = 1 and only δ and γ act.
PAIR = Batch([[1, 2], [3, 4]], ["g", "g"], [1.0, 0.0], [[0.2, 0.4], [1.0, 1.2]])  # ⟨H⟩ = 0.3 and 1.1
A = 0.5 / (math.sqrt(0.5) + 1e-6)


def test_penalty_subtracts_gamma_times_completion_entropy():
    advantages, _ = gtpo(PAIR, initial_entropy=2.0, entropy_coef=0.1)  # ⟨H⟩_ini > τ: no filtering
    assert advantages[0].tolist() == pytest.approx([A - 0.03] * 2)
    assert advantages[1].tolist() == pytest.approx([-A - 0.11] * 2)


def test_filter_is_off_when_the_model_started_uncertain():
    terms = compute_gtpo_terms(PAIR.token_level_rewards(), PAIR.mask(), PAIR.responses(), PAIR.index(),
                               PAIR.entropy(), initial_entropy=0.7)  # 0.7 > ln 2 = 0.6931
    assert terms.keep.tolist() == [True, True]


def test_filter_drops_uncertain_completions_when_the_model_started_confident():
    advantages, _ = gtpo(PAIR, initial_entropy=0.5)  # ⟨H⟩_ini ≤ τ; ⟨H⟩_2 = 1.1 > τ is dropped
    assert advantages[0].tolist() == pytest.approx([A - 0.03] * 2)
    assert advantages[1].tolist() == [0.0, 0.0]


def test_threshold_is_inclusive_and_configurable():
    batch = Batch([[1], [2]], ["g", "g"], [1.0, 0.0], [[0.5], [0.5]])
    advantages, _ = gtpo(batch, initial_entropy=0.1, entropy_threshold=0.5, entropy_coef=0.0)
    assert advantages[:, 0].tolist() == pytest.approx([A, -A])  # ⟨H⟩_i = τ is kept
    advantages, _ = gtpo(batch, initial_entropy=0.1, entropy_threshold=0.4, entropy_coef=0.0)
    assert advantages.eq(0).all()


def test_all_equal_rewards_still_get_the_entropy_penalty():
    batch = Batch([[1, 2], [1, 3]], ["g", "g"], [1.0, 1.0], [[0.2, 0.2], [0.6, 0.6]])
    advantages, _ = gtpo(batch, entropy_coef=0.1)
    assert advantages.flatten().tolist() == pytest.approx([-0.02, -0.02, -0.06, -0.06])


def test_filtered_completion_still_takes_part_in_conflict_detection():
    # The negative completion is dropped by δ, yet its shared first token still protects nothing of its
    # own (a = 0) and still amplifies the positive completion's first token.
    batch = Batch([[7, 1], [7, 2]], ["g", "g"], [1.0, 0.0], [[0.1, 0.1], [2.0, 2.0]])
    advantages, _ = gtpo(batch, initial_entropy=0.2, entropy_coef=0.0)
    assert advantages[0].tolist() == pytest.approx([2 * A, A])
    assert advantages[1].tolist() == [0.0, 0.0]


def test_worked_example_advantages():
    # The spec's example; o4 sits in a group of its own so that it does not take part (A_4 ≠ 0 but no partner).
    batch = Batch([[5, 7, 9, 3, 2], [5, 7, 8, 3, 2], [5, 6, 1, 1, 3, 2], [5, 7, 9]], ["q", "q", "q", "r"],
                  [1.0, 0.0, 1.0, 0.5], [[0.0] * 5, [0.0] * 5, [0.0] * 6, [0.0] * 3])
    advantages, _ = gtpo(batch)
    # Group q rewards 1, 0, 1: mean 2/3, unbiased std sqrt(1/3) = 0.57735 → A = +0.57735, −1.15470, +0.57735.
    a_pos, a_neg = (1 / 3) / (math.sqrt(1 / 3) + 1e-6), (-2 / 3) / (math.sqrt(1 / 3) + 1e-6)
    rows = unpad(advantages, batch)
    assert rows[0] == pytest.approx([2 * a_pos, 2 * a_pos, a_pos, 2 * a_pos, 2 * a_pos], rel=1e-5)
    assert rows[1] == pytest.approx([0, 0, a_neg, 0, 0], rel=1e-5)
    assert rows[2] == pytest.approx([2 * a_pos, a_pos, a_pos, a_pos, 2 * a_pos, 2 * a_pos], rel=1e-5)
    assert rows[3] == pytest.approx([0.5 / (1 + 1e-6)] * 3, rel=1e-6)  # a group of one: mean 0, std 1


# ------------------------------------------------------------------ edge cases and bad input

def test_empty_responses_groups_of_one_and_no_mixed_signs_give_no_nan():
    batch = Batch([[], [1, 2], [3]], ["a", "a", "b"], [1.0, 0.0, 1.0], [[], [0.3, 0.3], [0.1]])
    advantages, _ = gtpo(batch)
    assert torch.isfinite(advantages).all()
    assert advantages[0].eq(0).all()  # no valid token
    assert advantages[2, 0].item() == pytest.approx(1 / (1 + 1e-6) - 0.01)  # a group of one


def test_entropy_on_padding_is_ignored_and_rewards_dtype_is_kept():
    batch = PAIR
    width = batch.width + 2
    for padding in (float("nan"), -5.0, 1e9):
        rewards = batch.token_level_rewards(width).double()
        advantages, _ = compute_gtpo_advantage(rewards, batch.mask(width), batch.responses(width), batch.index(),
                                               batch.entropy(width, padding), initial_entropy=1.0)
        assert advantages.dtype == torch.float64
        assert torch.isfinite(advantages).all()


def _arguments(**change):
    arguments = dict(token_level_rewards=PAIR.token_level_rewards(), response_mask=PAIR.mask(),
                     responses=PAIR.responses(), index=PAIR.index(), entropy=PAIR.entropy(), initial_entropy=1.0)
    arguments.update(change)
    return arguments


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (dict(entropy=torch.tensor([[0.1, float("nan")], [0.1, 0.1]])), ValueError, "entropy holds NaN"),
        (dict(entropy=torch.tensor([[0.1, -0.5], [0.1, 0.1]])), ValueError, "entropy must be >= 0"),
        (dict(entropy=None), TypeError, "entropy must be a torch.Tensor"),
        (dict(entropy=torch.zeros(2, 3)), ValueError, "entropy has shape"),
        (dict(responses=torch.zeros(2, 2)), TypeError, "responses must hold integer token ids"),
        (dict(token_level_rewards=torch.zeros(2)), ValueError, "token_level_rewards must have shape"),
        (dict(index=None), ValueError, "index must hold one group id per row"),
        (dict(initial_entropy=None), ValueError, "initial_entropy is required"),
        (dict(initial_entropy=-1.0), ValueError, "initial_entropy must be"),
        (dict(entropy_coef=-0.1), ValueError, "entropy_coef must be >= 0"),
        (dict(entropy_threshold=0.0), ValueError, "entropy_threshold must be > 0"),
        (dict(conflict_mode="prefix"), ValueError, "conflict_mode must be one of"),
    ],
)
def test_bad_input_names_the_argument(change, error, words):
    with pytest.raises(error, match=words):
        compute_gtpo_advantage(**_arguments(**change))
