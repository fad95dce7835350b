"""Completion entropy ⟨H⟩_i and the entropy filter δ (GTPO_SPEC "δ — entropy filter")."""

from __future__ import annotations

import math

import torch

from gtpo_plugin._validation import check_matrix, check_response_mask, entropy_row_sums


def completion_entropy(entropy: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """⟨H⟩_i: mean per-token entropy over each completion's model tokens, float32 ``[B]``.

    Args:
        entropy: ``[B, L]`` float, per-token entropy (nats) of the policy that sampled the batch;
            read without gradient. NaN/inf/negative values on model tokens are an error; every other
            column (padding, tool or user tokens) is ignored, whatever it holds.
        response_mask: ``[B, L]`` bool/int/float 0/1, 1 on the model's own tokens (holes allowed).

    An empty completion (no model token) gets 0. Time O(B·L), memory O(B·L) for one masked copy.
    """
    check_matrix("entropy", entropy)
    mask, lengths = check_response_mask(response_mask, entropy.shape)
    return entropy_row_sums(entropy, mask) / lengths.clamp(min=1)


def mean_completion_entropy(entropy: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Mean of ⟨H⟩_i over the completions that have at least one model token.

    Applied to the first training batch this is the spec's ⟨H⟩_ini. Raises when no completion
    has a valid token, since the mean would be undefined.
    """
    per_completion = completion_entropy(entropy, response_mask)
    nonempty = check_response_mask(response_mask, entropy.shape)[1] > 0
    if not bool(nonempty.any()):
        raise ValueError("cannot measure the initial entropy: no completion in the batch has a model token "
                         "(response_mask = 1)")
    return float(per_completion[nonempty].double().mean())


def entropy_filter(completion_entropy: torch.Tensor, initial_entropy: float, threshold: float) -> torch.Tensor:
    """δ_i as bool ``[B]``: keep every completion when ⟨H⟩_ini > τ, else keep those with ⟨H⟩_i ≤ τ.

    ``initial_entropy = inf`` or ``threshold = inf`` keeps everything (filter off).
    """
    if math.isnan(initial_entropy) or initial_entropy < 0:
        raise ValueError(f"initial_entropy must be >= 0 nats (or inf to turn the filter off), got {initial_entropy}")
    if math.isnan(threshold) or threshold <= 0:
        raise ValueError(f"entropy_threshold must be > 0 nats (default ln 2), got {threshold}")
    if initial_entropy > threshold:
        return torch.ones_like(completion_entropy, dtype=torch.bool)
    return completion_entropy <= threshold
