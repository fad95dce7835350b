"""Multi-turn completions (tool or user tokens masked inside): positions over the model's own tokens.

GTPO_SPEC "Completions with tokens masked inside": the k-th generated token is compared with the k-th
generated token (prefix run, ``any``), the k-th from the end with the k-th from the end (suffix run);
⟨H⟩_i and |o_i| are over the model's tokens; λ goes back to the original columns; masked columns get 0.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from batches import Batch, TurnBatch, random_batch, random_gtpo_options, random_turn_batch, turns, unpad
from hypothesis import given, settings
from hypothesis import strategies as st
from naive_reference import (
    naive_conflict_weights,
    naive_group_advantage,
    naive_multiturn_conflict_weights,
    naive_multiturn_gtpo_advantage,
)

from gtpo_plugin import completion_entropy, compute_gtpo_advantage, compute_gtpo_terms, conflict_weights
from gtpo_plugin._validation import ModelPositions, check_response_mask

LN2 = math.log(2)
MODES = ["prefix_suffix", "any", "none"]


def turn_batch(*rows: tuple[list[int], list[int]], groups: list[str] | None = None,
               scores: list[float] | None = None) -> TurnBatch:
    groups = groups or ["q"] * len(rows)
    scores = scores or [0.0] * len(rows)
    entropies = [[0.2 if keep else float("nan") for keep in mask] for _, mask in rows]
    return TurnBatch([r for r, _ in rows], [m for _, m in rows], groups, scores, entropies)


def weights(batch: TurnBatch, advantages: list[float], **kwargs) -> torch.Tensor:
    return conflict_weights(batch.responses(), batch.mask(), batch.index(), torch.tensor(advantages), **kwargs)


def rows_of(matrix: torch.Tensor, batch: TurnBatch) -> list[list[float]]:
    return [matrix[i, : len(row)].tolist() for i, row in enumerate(batch.rows)]


# ----------------------------------------------------------------------------- naive reference


@pytest.mark.parametrize("mode", MODES)
def test_weights_match_naive_reference_on_random_holed_batches(mode):
    rng = random.Random(2026)
    holed = 0
    for _ in range(300):
        batch = random_turn_batch(rng)
        holed += not all(m == sorted(m, reverse=True) for m in batch.masks)
        advantages = naive_group_advantage(batch.scores, batch.groups)
        lam = weights(batch, advantages, amplification=2.5, mode=mode)
        expected = naive_multiturn_conflict_weights(batch.rows, batch.masks, batch.groups, advantages, 2.5, mode)
        assert rows_of(lam, batch) == expected
        assert lam[batch.mask() == 0].eq(0).all()
    assert holed > 200  # the batches really exercise holes


@pytest.mark.parametrize("mode", MODES)
def test_advantages_match_naive_reference_on_random_holed_batches(mode):
    rng = random.Random(11)
    for _ in range(200):
        batch = random_turn_batch(rng, binary_rewards=rng.random() < 0.6)
        options = random_gtpo_options(rng)
        advantages, _ = compute_gtpo_advantage(batch.token_level_rewards(), batch.mask(), batch.responses(),
                                               batch.index(), batch.entropy(), conflict_mode=mode, **options)
        expected = naive_multiturn_gtpo_advantage(batch.rows, batch.masks, batch.groups, batch.scores,
                                                  batch.entropies, conflict_mode=mode, **options)
        for got, want in zip(rows_of(advantages, batch), expected, strict=True):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert advantages[batch.mask() == 0].eq(0).all()
        assert torch.isfinite(advantages).all()


def test_naive_reference_itself_counts_positions_over_model_tokens():
    # Guard the reference: a tool token equal to the other row's model token must not conflict.
    rows = [[1, 9, 2], [1, 2]]
    masks = [[1, 0, 1], [1, 1]]
    assert naive_multiturn_conflict_weights(rows, masks, ["g", "g"], [1.0, -1.0], 2.0, "any") == [
        [2.0, 0.0, 2.0], [0.0, 0.0]]


# ----------------------------------------------------------------------------- hand-made cases


def test_tool_outputs_of_different_lengths_align_model_positions():
    # Turn 1 "5 7", a tool output of 1 or 4 tokens, turn 2 "3 8 | 3 9", closing "2".
    # Columns misalign after the tool output, model positions do not.
    good = turns(("model", [5, 7]), ("tool", [40]), ("model", [3, 8, 2]))
    bad = turns(("model", [5, 7]), ("tool", [40, 41, 42, 43]), ("model", [3, 9, 2]))
    batch = turn_batch(good, bad)
    lam = weights(batch, [1.0, -1.0])
    # prefix run: 5 7 3 (model positions 0..2), stops at 8 vs 9; suffix run: 2.
    assert rows_of(lam, batch) == [[2, 2, 0, 2, 1, 2], [0, 0, 0, 0, 0, 0, 0, 1, 0]]
    any_mode = weights(batch, [1.0, -1.0], mode="any")
    assert rows_of(any_mode, batch) == [[2, 2, 0, 2, 1, 2], [0, 0, 0, 0, 0, 0, 0, 1, 0]]
    # Counting columns instead would have compared 3 (good, column 3) with 41 (bad, column 3): no conflict.


def test_shared_closing_turn_is_right_aligned_over_model_tokens():
    # Both end with the turn "</answer> <eos>" = "6 2", after tool outputs of different lengths;
    # the good one also ends its row with a trailing tool token (masked after the last model token).
    good = turns(("model", [1, 2, 3]), ("tool", [7, 7, 7]), ("model", [6, 2]), ("tool", [9]))
    bad = turns(("model", [4]), ("tool", [8]), ("model", [5, 6, 2]))
    batch = turn_batch(good, bad)
    lam = weights(batch, [0.5, -0.5])
    assert rows_of(lam, batch) == [[1, 1, 1, 0, 0, 0, 2, 2, 0], [1, 0, 1, 0, 0]]


def test_tool_tokens_never_conflict_even_when_they_match():
    # Identical tool outputs at identical columns; the model tokens all differ.
    good = turns(("model", [1]), ("tool", [9, 9]), ("model", [2]))
    bad = turns(("model", [3]), ("tool", [9, 9]), ("model", [4]))
    batch = turn_batch(good, bad)
    for mode in ("prefix_suffix", "any"):
        assert rows_of(weights(batch, [1.0, -1.0], mode=mode), batch) == [[1, 0, 0, 1], [1, 0, 0, 1]]


def test_row_with_only_masked_tokens_takes_no_part_and_gets_zero():
    only_tool = turns(("tool", [5, 7, 3]))
    good = turns(("model", [5]), ("tool", [0]), ("model", [7]))
    bad = turns(("model", [5, 7]))
    batch = turn_batch(only_tool, good, bad, scores=[1.0, 1.0, 0.0])
    for mode in MODES:
        lam = weights(batch, [1.0, 1.0, -1.0], mode=mode)
        assert lam[0].eq(0).all()
        expected_good = [1, 0, 1] if mode == "none" else [4 if mode == "prefix_suffix" else 2, 0,
                                                         4 if mode == "prefix_suffix" else 2]
        assert rows_of(lam, batch)[1] == expected_good
    terms = compute_gtpo_terms(batch.token_level_rewards(), batch.mask(), batch.responses(), batch.index(),
                               batch.entropy(), initial_entropy=1.0)
    assert terms.advantages[0].eq(0).all() and terms.completion_entropy[0] == 0
    assert terms.lengths.tolist() == [0, 2, 2] and terms.nonempty_completions == 2
    assert torch.isfinite(terms.advantages).all()


def test_leading_block_masks_give_todays_results_exactly():
    # The single-turn path (no compaction) against the naive single-turn reference, bit for bit,
    # and the same completions with tool outputs inserted give the same λ at the model columns.
    rng = random.Random(5)
    for _ in range(100):
        batch = random_batch(rng)
        advantages = naive_group_advantage(batch.scores, batch.groups)
        for mode in MODES:
            lam = conflict_weights(batch.responses(), batch.mask(), batch.index(), torch.tensor(advantages),
                                   mode=mode)
            assert unpad(lam, batch) == naive_conflict_weights(batch.completions, batch.groups, advantages, 2.0,
                                                               mode)
            holed_rows = [turns(("model", c[:1]), ("tool", [1, 2, 3][: rng.randint(0, 3)]), ("model", c[1:]))
                          for c in batch.completions]
            holed = turn_batch(*holed_rows, groups=batch.groups)
            holed_lam = weights(holed, advantages, mode=mode)
            for i, (_, mask) in enumerate(holed_rows):
                at_model_columns = holed_lam[i, : len(mask)][torch.tensor(mask, dtype=torch.bool)]
                assert at_model_columns.tolist() == lam[i, : len(batch.completions[i])].tolist()


completion = st.lists(st.integers(1, 3), min_size=0, max_size=6)
tool_output = st.lists(st.integers(1, 3), min_size=0, max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(completion, st.sampled_from([-1.0, 0.0, 1.0]), st.integers(0, 1)), min_size=1,
                max_size=6),
       st.lists(st.tuples(st.integers(0, 6), tool_output), max_size=8),
       st.sampled_from(["prefix_suffix", "any"]))
def test_inserting_tool_outputs_anywhere_leaves_lambda_on_model_tokens_unchanged(members, inserts, mode):
    completions = [tokens for tokens, _, _ in members]
    groups = [f"g{group}" for _, _, group in members]
    advantages = torch.tensor([a for _, a, _ in members])
    single = Batch(completions, groups, [0.0] * len(members), [[0.0] * len(c) for c in completions])
    expected = conflict_weights(single.responses(), single.mask(), single.index(), advantages, mode=mode)
    rows = [[(token, 1) for token in tokens] for tokens in completions]
    for n, (at, tool) in enumerate(inserts):  # tool tokens before model position `at` of row n mod B
        row = rows[n % len(rows)]
        cut = [i for i, (_, keep) in enumerate(row) if keep][at] if at < sum(k for _, k in row) else len(row)
        row[cut:cut] = [(token, 0) for token in tool]
    holed = turn_batch(*(([t for t, _ in row], [k for _, k in row]) for row in rows), groups=groups)
    lam = weights(holed, advantages.tolist(), mode=mode)
    for i, completion_ in enumerate(completions):
        keep = holed.mask()[i].bool()
        assert lam[i][keep].tolist() == expected[i, : len(completion_)].tolist()
        assert lam[i][~keep].eq(0).all()


def test_left_padded_mask_is_the_same_completion_shifted():
    batch = Batch([[5, 7, 9, 3, 2], [5, 7, 8, 3, 2], [5, 6, 1, 1, 3, 2], [5, 7, 9]], ["q"] * 4, [0.0] * 4,
                  [[0.1] * 5, [0.1] * 5, [0.1] * 6, [0.1] * 3])
    width = batch.width
    right = conflict_weights(batch.responses(), batch.mask(), batch.index(), torch.tensor([1.0, -1.0, 1.0, 0.0]))
    shift = [width - len(c) for c in batch.completions]
    left_tokens = torch.stack([row.roll(s) for row, s in zip(batch.responses(), shift, strict=True)])
    left_mask = torch.stack([row.roll(s) for row, s in zip(batch.mask(), shift, strict=True)])
    left = conflict_weights(left_tokens, left_mask, batch.index(), torch.tensor([1.0, -1.0, 1.0, 0.0]))
    assert torch.equal(torch.stack([row.roll(s) for row, s in zip(right, shift, strict=True)]), left)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.int32, torch.uint8, torch.float32,
                                   torch.float64, torch.bfloat16])
def test_holed_masks_of_every_dtype_give_the_same_result(dtype):
    rng = random.Random(3)
    batch = random_turn_batch(rng, max_groups=3)
    advantages = torch.tensor(naive_group_advantage(batch.scores, batch.groups))
    expected = conflict_weights(batch.responses(), batch.mask(), batch.index(), advantages)
    assert torch.equal(conflict_weights(batch.responses(), batch.mask().to(dtype), batch.index(), advantages),
                       expected)


def test_long_runs_with_holes_grow_the_window():
    # 40 shared model tokens split in 5 turns by tool outputs of different lengths: more than the first window.
    shared = list(range(1, 41))
    good = turns(("model", shared[:8]), ("tool", [99]), ("model", shared[8:16]), ("tool", [99] * 2),
                 ("model", shared[16:24]), ("tool", [99] * 3), ("model", shared[24:32]), ("tool", [99] * 4),
                 ("model", shared[32:] + [50]))
    bad = turns(("model", shared[:20]), ("tool", [98] * 7), ("model", shared[20:]), ("model", [60]))
    batch = turn_batch(good, bad)
    lam = weights(batch, [1.0, -1.0])
    good_mask = torch.tensor(good[1], dtype=torch.bool)
    model_lam = lam[0, : len(good[0])][good_mask]
    assert model_lam[:40].eq(2).all() and model_lam[40] == 1
    assert lam[1, : len(bad[0])][torch.tensor(bad[1], dtype=torch.bool)][:40].eq(0).all()
    assert lam[0, : len(good[0])][~good_mask].eq(0).all()


def test_completion_entropy_is_the_mean_over_model_tokens_ignoring_tool_garbage():
    row, mask = turns(("model", [1, 2]), ("tool", [3, 3, 3]), ("model", [4]))
    entropy = torch.tensor([[0.3, 0.6, float("nan"), -5.0, float("inf"), 0.9]])
    assert completion_entropy(entropy, torch.tensor([mask])).item() == pytest.approx(0.6)
    with pytest.raises(ValueError, match="entropy holds NaN or inf on the model's tokens"):
        completion_entropy(torch.tensor([[0.3, float("nan"), 0.0, 0.0, 0.0, 0.9]]), torch.tensor([mask]))
    with pytest.raises(ValueError, match="entropy must be >= 0 on the model's tokens"):
        completion_entropy(torch.tensor([[0.3, 0.6, 0.0, 0.0, 0.0, -0.5]]), torch.tensor([mask]))


def test_entropy_penalty_and_filter_use_the_model_token_mean():
    good = turns(("model", [1]), ("tool", [9, 9, 9]), ("model", [2]))
    bad = turns(("model", [3, 4]))
    batch = turn_batch(good, bad, scores=[1.0, 0.0])
    batch.entropies = [[0.2, 50.0, float("nan"), -1.0, 0.4], [0.9, 0.9]]
    terms = compute_gtpo_terms(batch.token_level_rewards(), batch.mask(), batch.responses(), batch.index(),
                               batch.entropy(), initial_entropy=0.5, entropy_coef=0.1, conflict_mode="none")
    assert terms.completion_entropy.tolist() == pytest.approx([0.3, 0.9])
    assert terms.keep.tolist() == [True, False]  # 0.9 > ln 2 once the model started confident
    a = 0.5 / (math.sqrt(0.5) + 1e-6)  # (R − mean) / (std + ε): mean 0.5, unbiased std sqrt(0.5)
    assert terms.advantages[0].tolist() == pytest.approx([a - 0.03, 0, 0, 0, a - 0.03], rel=1e-5)
    assert terms.advantages[1].eq(0).all()
    assert terms.valid_tokens == 4


# ----------------------------------------------------------------------------- the position map


def test_model_positions_map_and_its_absence_for_leading_blocks():
    mask, lengths = check_response_mask(torch.tensor([[1, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0], [0, 1, 0, 1]]),
                                        torch.Size([4, 4]))
    positions = ModelPositions.of(mask, lengths)
    assert positions.flat is not None
    tokens = torch.arange(16).view(4, 4) + 100
    for i in range(4):
        n = int(lengths[i])
        rows, at = torch.full((n,), i), torch.arange(n)
        assert positions.column(rows, at).tolist() == torch.nonzero(mask[i]).flatten().tolist()
        assert positions.take(tokens, at[None, :])[i].tolist() == tokens[i][mask[i]].tolist()
    single = check_response_mask(torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]]), torch.Size([3, 3]))
    assert ModelPositions.of(*single).flat is None


def test_bad_masks_are_still_refused_with_holes_allowed():
    batch = random_turn_batch(random.Random(0))
    advantages = torch.zeros(len(batch.rows))
    args = (batch.responses(), batch.mask(), batch.index(), advantages)
    with pytest.raises(ValueError, match="response_mask must hold only 0 and 1"):
        conflict_weights(args[0], args[1] * 2, *args[2:])
    with pytest.raises(ValueError, match="response_mask has shape"):
        conflict_weights(args[0], args[1][:, :-1], *args[2:])
    with pytest.raises(ValueError, match="response_mask must have shape"):
        conflict_weights(args[0], args[1].flatten(), *args[2:])
    with pytest.raises(ValueError, match="entropy holds NaN or inf"):
        entropy = batch.entropy()
        entropy[batch.mask() == 1] = float("nan")
        compute_gtpo_advantage(batch.token_level_rewards(), batch.mask(), batch.responses(), batch.index(),
                               entropy, initial_entropy=1.0)
