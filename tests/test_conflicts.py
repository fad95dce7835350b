"""λ conflict weights against the spec's worked example, the naive reference and properties."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from batches import Batch, random_batch, unpad
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_reference import naive_conflict_weights, naive_group_advantage

from gtpo_plugin import conflict_weights

WORKED = Batch(
    completions=[[5, 7, 9, 3, 2], [5, 7, 8, 3, 2], [5, 6, 1, 1, 3, 2], [5, 7, 9]],
    groups=["q"] * 4,
    scores=[0.0] * 4,
    entropies=[[0.1] * 5, [0.1] * 5, [0.1] * 6, [0.1] * 3],
)
WORKED_ADVANTAGES = torch.tensor([1.0, -1.0, 1.0, 0.0])


def weights(batch: Batch, advantages: torch.Tensor, **kwargs) -> torch.Tensor:
    return conflict_weights(batch.responses(), batch.mask(), batch.index(), advantages, **kwargs)


def test_worked_example_of_the_spec():
    lam = weights(WORKED, WORKED_ADVANTAGES)
    assert unpad(lam, WORKED) == [[2, 2, 1, 2, 2], [0, 0, 1, 0, 0], [2, 1, 1, 1, 2, 2], [1, 1, 1]]
    assert lam.dtype == torch.float32
    assert lam[3, 3:].eq(0).all()  # padding


def test_worked_example_any_mode_counts_every_left_aligned_conflict():
    # o3 = 5 6 1 1 3 2: positions 1..5 hold 6,1,1,3,2 and o2 (the only negative) holds 7,8,3,2,- there.
    lam = weights(WORKED, WORKED_ADVANTAGES, mode="any")
    assert unpad(lam, WORKED) == [[2, 2, 1, 2, 2], [0, 0, 1, 0, 0], [2, 1, 1, 1, 1, 1], [1, 1, 1]]


def test_mode_none_is_one_on_every_valid_token():
    lam = weights(WORKED, WORKED_ADVANTAGES, mode="none")
    assert torch.equal(lam, WORKED.mask().float())


def test_token_in_both_runs_gets_w_squared_or_zero():
    # Two one-token completions: the token is both first and last, so both runs hold it.
    batch = Batch([[4], [4]], ["g", "g"], [1.0, 0.0], [[0.0], [0.0]])
    lam = weights(batch, torch.tensor([1.0, -1.0]), amplification=3.0)
    assert lam.tolist() == [[9.0], [0.0]]


def test_suffix_is_right_aligned_across_lengths():
    # Different lengths, shared closing "8 9": only the right-aligned comparison sees it.
    batch = Batch([[1, 2, 3, 8, 9], [4, 8, 9]], ["g", "g"], [1.0, 0.0], [[0.0] * 5, [0.0] * 3])
    lam = weights(batch, torch.tensor([0.5, -0.5]))
    assert unpad(lam, batch) == [[1, 1, 1, 2, 2], [1, 0, 0]]


def test_conflicts_stay_inside_a_group():
    batch = Batch([[1, 2], [1, 2]], ["a", "b"], [1.0, 0.0], [[0.0] * 2] * 2)
    lam = weights(batch, torch.tensor([1.0, -1.0]))
    assert torch.equal(lam, torch.ones(2, 2))


def test_long_runs_grow_the_window_beyond_its_first_size():
    shared = list(range(1, 41))  # 40 identical tokens, more than the first window of 16
    batch = Batch([shared + [50], shared + [60]], ["g", "g"], [1.0, 0.0], [[0.0] * 41] * 2)
    lam = weights(batch, torch.tensor([1.0, -1.0]))
    assert lam[0, :40].eq(2).all() and lam[0, 40] == 1
    assert lam[1, :40].eq(0).all() and lam[1, 40] == 1


@pytest.mark.parametrize("mode", ["prefix_suffix", "any", "none"])
def test_matches_naive_reference_on_random_batches(mode):
    rng = random.Random(1234)
    for _ in range(300):
        batch = random_batch(rng, binary_rewards=rng.random() < 0.5)
        advantages = naive_group_advantage(batch.scores, batch.groups)
        width = batch.width + rng.randint(0, 3)  # extra padding columns
        lam = conflict_weights(batch.responses(width), batch.mask(width), batch.index(),
                               torch.tensor(advantages), amplification=2.5, mode=mode)
        expected = naive_conflict_weights(batch.completions, batch.groups, advantages, 2.5, mode)
        assert unpad(lam, batch) == expected
        assert lam[batch.mask(width) == 0].eq(0).all()


def test_accepts_bool_float_masks_int_and_tensor_index():
    responses, mask = WORKED.responses(), WORKED.mask()
    expected = weights(WORKED, WORKED_ADVANTAGES)
    for mask_variant in (mask.bool(), mask.float(), mask.int()):
        for index in (np.array([7, 7, 7, 7]), torch.tensor([3, 3, 3, 3]), ["q"] * 4):
            assert torch.equal(conflict_weights(responses, mask_variant, index, WORKED_ADVANTAGES), expected)


def test_empty_batch_and_empty_responses():
    lam = conflict_weights(torch.zeros(0, 5, dtype=torch.long), torch.zeros(0, 5), [], torch.zeros(0))
    assert lam.shape == (0, 5)
    batch = Batch([[], [], [3]], ["g"] * 3, [1.0, 0.0, 0.0], [[], [], [0.0]])
    lam = weights(batch, torch.tensor([1.0, -1.0, -1.0]))
    assert lam.tolist() == [[0.0], [0.0], [1.0]]


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        (dict(responses=torch.zeros(4, 6)), TypeError, "responses must hold integer token ids"),
        (dict(response_mask=torch.ones(4, 5)), ValueError, "response_mask has shape"),
        (dict(index=np.array(["q"] * 3)), ValueError, "index must hold one group id per row"),
        (dict(advantages=torch.zeros(3)), ValueError, "advantages must have shape [4]"),
        (dict(advantages=torch.tensor([1.0, float("nan"), 0.0, 0.0])), ValueError, "advantages holds NaN"),
        (dict(mode="all"), ValueError, "conflict_mode must be one of"),
        (dict(amplification=0.5), ValueError, "amplification must be a finite number >= 1"),
        (dict(response_mask=torch.full((4, 6), 2)), ValueError, "response_mask must hold only 0 and 1"),
        (dict(response_mask=torch.full((4, 6), 0.5)), ValueError, "response_mask must hold only 0 and 1"),
        (dict(response_mask=torch.full((4, 6), float("nan"))), ValueError, "response_mask must hold only 0 and 1"),
        (dict(response_mask=torch.full((4, 6), -1)), ValueError, "response_mask must hold only 0 and 1"),
        (dict(response_mask=torch.ones(4, 6, dtype=torch.complex64)), TypeError, "response_mask must be bool"),
        (dict(response_mask=torch.ones(4, 6).tolist()), TypeError, "response_mask must be a torch.Tensor"),
    ],
)
def test_bad_input_names_the_argument(change, error, words):
    arguments = dict(responses=WORKED.responses(), response_mask=WORKED.mask(), index=WORKED.index(),
                     advantages=WORKED_ADVANTAGES, mode="prefix_suffix", amplification=2.0)
    arguments.update(change)
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        conflict_weights(**arguments)


# ----------------------------------------------------------------------------- properties

completion = st.lists(st.integers(1, 3), min_size=0, max_size=6)
group = st.lists(st.tuples(completion, st.sampled_from([-1.0, 0.0, 1.0])), min_size=1, max_size=5)


def _from_groups(groups_: list[list[tuple[list[int], float]]]) -> tuple[Batch, torch.Tensor]:
    rows = [(tokens, adv, f"g{g}") for g, members in enumerate(groups_) for tokens, adv in members]
    batch = Batch([r[0] for r in rows], [r[2] for r in rows], [0.0] * len(rows), [[0.0] * len(r[0]) for r in rows])
    return batch, torch.tensor([r[1] for r in rows])


@settings(max_examples=150, deadline=None)
@given(st.lists(group, min_size=1, max_size=4), st.sampled_from(["prefix_suffix", "any"]))
def test_weights_take_only_the_allowed_values(groups_, mode):
    batch, advantages = _from_groups(groups_)
    lam = weights(batch, advantages, amplification=2.0, mode=mode)
    allowed = {0.0, 1.0, 2.0, 4.0} if mode == "prefix_suffix" else {0.0, 1.0, 2.0}
    assert set(lam[batch.mask().bool()].tolist()) <= allowed


@settings(max_examples=100, deadline=None)
@given(st.lists(group, min_size=1, max_size=4), st.sampled_from([-1.0, 1.0]))
def test_one_sign_everywhere_means_no_conflict(groups_, the_sign):
    batch, advantages = _from_groups(groups_)
    lam = weights(batch, advantages.abs() * the_sign + 0.0)
    assert torch.equal(lam, batch.mask().float())


@settings(max_examples=100, deadline=None)
@given(st.lists(group, min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(groups_, rnd):
    batch, advantages = _from_groups(groups_)
    lam = weights(batch, advantages)
    order = list(range(len(batch.completions)))
    rnd.shuffle(order)  # permutes rows within groups and the order of groups at once
    shuffled = Batch([batch.completions[i] for i in order], [batch.groups[i] for i in order],
                     batch.scores, [batch.entropies[i] for i in order])
    assert torch.equal(weights(shuffled, advantages[order]), lam[order])


@pytest.mark.parametrize("mode", ["prefix_suffix", "any"])
def test_uneven_group_sizes_are_processed_in_chunks(mode):
    # One group of 24 beside 40 singletons and pairs: the [groups, G_max] grid is split into several chunks.
    rng = random.Random(7)
    completions, groups = [], []
    for g, size in enumerate([24] + [1, 2] * 20):
        for _ in range(size):
            completions.append([rng.randint(1, 2) for _ in range(rng.randint(0, 5))])
            groups.append(f"g{g}")
    advantages = [rng.choice([-1.0, 0.0, 1.0]) for _ in completions]
    batch = Batch(completions, groups, [0.0] * len(groups), [[0.0] * len(c) for c in completions])
    lam = weights(batch, torch.tensor(advantages), mode=mode)
    assert unpad(lam, batch) == naive_conflict_weights(completions, groups, advantages, 2.0, mode)
