"""pass@k against brute force over all k-subsets; maj@k and its tie rule against a Counter reference."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gtpo_plugin.evaluation import maj_at_k, majority_vote, pass_at_k


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the k-subsets of n samples (the first c correct) that hold a correct sample."""
    correct = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(correct, k))
    return Fraction(sum(any(subset) for subset in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_equals_brute_force_over_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_hand_worked():
    # n=4, c=2, k=2: 1 − C(2,2)/C(4,2) = 1 − 1/6
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # only 4 wrong samples: every 5-subset holds a correct one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is c/n


@given(
    n=st.integers(min_value=1, max_value=5000),
    c_share=st.floats(min_value=0, max_value=1),
    k_share=st.floats(min_value=0, max_value=1),
)
def test_pass_at_k_large_n_matches_exact_binomials(n, c_share, k_share):
    c = round(c_share * n)
    k = max(1, round(k_share * n))
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    assert value == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "error", "match"),
    [
        (4, 5, 1, ValueError, "c .* must be <= n"),
        (4, 2, 5, ValueError, "k must be <= n"),
        (4, 2, 0, ValueError, "k must be >= 1"),
        (0, 0, 1, ValueError, "n must be >= 1"),
        (4, -1, 1, ValueError, "c must be >= 0"),
        (4.0, 2, 1, TypeError, "n must be an int"),
        (4, 2, True, TypeError, "k must be an int"),
    ],
)
def test_pass_at_k_rejects_bad_counts(n, c, k, error, match):
    with pytest.raises(error, match=match):
        pass_at_k(n, c, k)


def test_majority_vote_counts_and_ties():
    assert majority_vote(["7", "3", "7"]) == 0
    assert majority_vote(["3", "7", "7"]) == 1
    # tie between "b" (index 0) and "a" (index 1): the answer seen first wins
    assert majority_vote(["b", "a", "a", "b"]) == 0
    assert majority_vote(["a", "b", "b", "a"]) == 0
    # completions without an answer do not vote
    assert majority_vote([None, None, "5"]) == 2
    assert majority_vote([None, "4", None, "5", "5"]) == 3
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def naive_maj_at_k(keys, correct, k):
    """Counter.most_common keeps first-seen order among equal counts: the same tie rule."""
    blocks = len(keys) // k
    wins = 0
    for block in range(blocks):
        window = slice(block * k, (block + 1) * k)
        chunk = list(zip(keys[window], correct[window], strict=True))
        votes = Counter(key for key, _ in chunk if key is not None)
        if votes:
            winner = votes.most_common(1)[0][0]
            wins += next(ok for key, ok in chunk if key == winner)
    return wins / blocks


def test_maj_at_k_hand_worked():
    keys = ["5", "4", "4", "5", "5", None, "4", "4"]
    correct = [key == "5" for key in keys]
    # k=8: "4" has 4 votes, "5" has 3 → wrong
    assert maj_at_k(keys, correct, 8) == 0.0
    # k=4: block 1 "5","4","4","5" ties → "5" came first → right; block 2 "5",None,"4","4" → "4" → wrong
    assert maj_at_k(keys, correct, 4) == 0.5
    # k=3: blocks [5,4,4] → wrong, [5,5,None] → right; the last two completions are left over
    assert maj_at_k(keys, correct, 3) == 0.5
    # k=1 is the share of correct completions
    assert maj_at_k(keys, correct, 1) == 3 / 8


@given(st.lists(st.sampled_from(["1", "2", "3", None]), min_size=1, max_size=12), st.data())
def test_maj_at_k_matches_counter_reference(keys, data):
    correct = [key == "2" for key in keys]
    k = data.draw(st.integers(min_value=1, max_value=len(keys)))
    assert maj_at_k(keys, correct, k) == pytest.approx(naive_maj_at_k(keys, correct, k))


def test_maj_at_k_no_answer_is_wrong():
    assert maj_at_k([None, None], [False, False], 2) == 0.0


def test_maj_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be <= n"):
        maj_at_k(["1", "2"], [True, False], 3)
    with pytest.raises(ValueError, match="same length"):
        maj_at_k(["1", "2"], [True], 1)
    with pytest.raises(ValueError, match="n \\(completions\\) must be >= 1"):
        maj_at_k([], [], 1)
