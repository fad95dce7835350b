"""pass@k and maj@k for one prompt with n sampled completions.

pass@k is the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained on
Code", arXiv 2107.03374): the probability that at least one of k completions drawn without
replacement from the n sampled is correct. maj@k is the accuracy of the most frequent answer
among k completions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["maj_at_k", "majority_vote", "pass_at_k"]


def _check_count(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 − C(n−c, k) / C(n, k) for n samples of which c are correct.

    Computed as 1 − Π_{i=n−c+1..n} (1 − k/i), a product of c factors in (0, 1], so it neither
    overflows nor loses precision for large n (no binomial coefficients are formed). Needs
    0 ≤ c ≤ n and 1 ≤ k ≤ n.
    """
    n = _check_count("n", n, 1)
    c = _check_count("c", c, 0)
    k = _check_count("k", k, 1)
    if c > n:
        raise ValueError(f"c (correct samples) must be <= n (samples), got c={c}, n={n}")
    if k > n:
        raise ValueError(f"k must be <= n (samples), got k={k}, n={n}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(keys: Sequence[str | None]) -> int | None:
    """Index of the completion whose answer wins the vote among ``keys``, or None if none answered.

    ``keys`` are normalised answers (``normalize_answer``), None for a completion without an
    answer, which does not vote. Ties go to the answer that appears first, so the result depends
    only on the order of the completions. The index returned is that answer's first occurrence.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key is None:
            continue
        counts[key] = counts.get(key, 0) + 1
        first.setdefault(key, index)
    if not counts:
        return None
    # max() keeps the first maximal item; dicts iterate in first-occurrence order.
    winner = max(counts, key=counts.__getitem__)
    return first[winner]


def maj_at_k(keys: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k of one prompt: mean correctness of the vote over the ⌊n/k⌋ consecutive blocks of k.

    ``keys[i]`` is completion i's normalised answer (None: no answer), ``correct[i]`` whether it
    matches the reference. Blocks of k consecutive completions use all n samples for the estimate
    while staying deterministic; the n mod k completions left over are not used. A block where no
    completion answered counts as wrong.
    """
    if len(keys) != len(correct):
        raise ValueError(f"keys and correct must have the same length, got {len(keys)} and {len(correct)}")
    n = _check_count("n (completions)", len(keys), 1)
    k = _check_count("k", k, 1)
    if k > n:
        raise ValueError(f"k must be <= n (samples), got k={k}, n={n}")
    blocks = n // k
    wins = 0
    for start in range(0, blocks * k, k):
        winner = majority_vote(keys[start : start + k])
        wins += winner is not None and bool(correct[start + winner])
    return wins / blocks
