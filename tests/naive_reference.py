"""GTPO written for clarity, not speed: plain Python loops over groups, completions and positions.

The tests compare the vectorised core against these functions. Completions are given as lists of
their valid token ids (no padding), so padding cannot leak into the reference by construction.
Multi-turn completions (``naive_multiturn_*``) are given as their full rows with a 0/1 mask per
token; the spec's definition is applied literally: drop the masked tokens, run the single-turn
reference on what is left, and put each value back at the column it came from (0 elsewhere).
"""

from __future__ import annotations

import math
import statistics

LN2 = math.log(2)


def sign(value: float) -> int:
    return (value > 0) - (value < 0)


def naive_group_advantage(scores: list[float], groups: list, norm_adv_by_std: bool = True, epsilon: float = 1e-6):
    """A_i as the spec and verl's GRPO define it; an all-equal group of two or more gives exactly 0."""
    advantages = []
    for i, score in enumerate(scores):
        members = [scores[j] for j in range(len(scores)) if groups[j] == groups[i]]
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = statistics.fmean(members), statistics.stdev(members)  # stdev is unbiased (n - 1)
        if len(members) > 1 and max(members) == min(members):
            advantages.append(0.0)
        elif norm_adv_by_std:
            advantages.append((score - mean) / (std + epsilon))
        else:
            advantages.append(score - mean)
    return advantages


def _conflicts(completions, advantages, groups, i, offset, from_end):
    """Does completion i's token at ``offset`` (from the start or from its end) conflict?"""
    if sign(advantages[i]) == 0:
        return False
    mine = completions[i]
    token = mine[len(mine) - 1 - offset] if from_end else mine[offset]
    for j, other in enumerate(completions):
        if groups[j] != groups[i] or sign(advantages[j]) != -sign(advantages[i]) or len(other) <= offset:
            continue
        if (other[len(other) - 1 - offset] if from_end else other[offset]) == token:
            return True
    return False


def naive_conflict_weights(completions, groups, advantages, amplification=2.0, mode="prefix_suffix"):
    """λ per valid token, as lists of floats."""
    weights = []
    for i, completion in enumerate(completions):
        factor = amplification if advantages[i] > 0 else 0.0
        row = [1.0] * len(completion)
        if mode == "any":
            for t in range(len(completion)):
                if _conflicts(completions, advantages, groups, i, t, from_end=False):
                    row[t] *= factor
        elif mode == "prefix_suffix":
            t = 0
            while t < len(completion) and _conflicts(completions, advantages, groups, i, t, from_end=False):
                row[t] *= factor
                t += 1
            t = 0
            while t < len(completion) and _conflicts(completions, advantages, groups, i, t, from_end=True):
                row[len(completion) - 1 - t] *= factor
                t += 1
        weights.append(row)
    return weights


def naive_gtpo_advantage(
    completions, groups, scores, entropies, *, initial_entropy, amplification=2.0, entropy_coef=0.1,
    entropy_threshold=LN2, conflict_mode="prefix_suffix", norm_adv_by_std=True, epsilon=1e-6,
):
    """Per-token a_{i,t} = δ_i (A_i − γ⟨H⟩_i) λ_{i,t}, as lists; ``entropies`` are per valid token."""
    group_adv = naive_group_advantage(scores, groups, norm_adv_by_std, epsilon)
    weights = naive_conflict_weights(completions, groups, group_adv, amplification, conflict_mode)
    result = []
    for i, completion in enumerate(completions):
        mean_entropy = sum(entropies[i]) / len(completion) if completion else 0.0
        keep = initial_entropy > entropy_threshold or mean_entropy <= entropy_threshold
        seq_adv = (group_adv[i] - entropy_coef * mean_entropy) if keep else 0.0
        result.append([seq_adv * weight for weight in weights[i]])
    return result


def model_tokens(row: list, mask: list[int]) -> list:
    """The entries of ``row`` where ``mask`` is 1, in order (the model's own tokens of a multi-turn row)."""
    return [value for value, keep in zip(row, mask, strict=True) if keep]


def back_to_columns(values: list[float], mask: list[int]) -> list[float]:
    """Place the k-th value at the column of the k-th model token; 0.0 on every masked column."""
    remaining = iter(values)
    placed = [next(remaining) if keep else 0.0 for keep in mask]
    assert next(remaining, None) is None
    return placed


def naive_multiturn_conflict_weights(rows, masks, groups, advantages, amplification=2.0, mode="prefix_suffix"):
    """λ per column of multi-turn rows: positions counted over the model's tokens, 0 on masked columns."""
    completions = [model_tokens(row, mask) for row, mask in zip(rows, masks, strict=True)]
    weights = naive_conflict_weights(completions, groups, advantages, amplification, mode)
    return [back_to_columns(w, mask) for w, mask in zip(weights, masks, strict=True)]


def naive_multiturn_gtpo_advantage(rows, masks, groups, scores, entropies, **settings):
    """a_{i,t} per column of multi-turn rows; ``entropies`` per column (masked ones are never read)."""
    completions = [model_tokens(row, mask) for row, mask in zip(rows, masks, strict=True)]
    model_entropies = [model_tokens(e, mask) for e, mask in zip(entropies, masks, strict=True)]
    result = naive_gtpo_advantage(completions, groups, scores, model_entropies, **settings)
    return [back_to_columns(a, mask) for a, mask in zip(result, masks, strict=True)]
