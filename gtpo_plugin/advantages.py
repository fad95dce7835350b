"""GTPO's per-token advantages (GTPO_SPEC "Order of operations").

    a_{i,t} = δ_i · (A_i − γ·⟨H⟩_i) · λ_{i,t}   on the model's tokens, 0 on every other column,

with A_i the group-relative advantage computed exactly as verl's GRPO estimator does. In multi-turn
completions the tool or user tokens (``response_mask`` = 0 between the model's turns) get 0 and do not
count: ⟨H⟩_i and |o_i| are over the model's tokens, and λ counts positions over them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gtpo_plugin._validation import (
    GroupIndex,
    check_matrix,
    check_response_mask,
    check_token_ids,
    entropy_row_sums,
    group_ids,
)
from gtpo_plugin.config import GTPOConfig
from gtpo_plugin.conflicts import find_conflicts
from gtpo_plugin.entropy import entropy_filter


def group_advantage(
    scores: torch.Tensor,
    index: GroupIndex,
    *,
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> torch.Tensor:
    """GRPO's A_i = (R_i − mean_g) / (std_g + ε) per group g, float32 ``[B]``, vectorised.

    Matches ``verl.trainer.ppo.core_algos.compute_grpo_outcome_advantage``: unbiased std; a group
    of one gets mean 0 and std 1; without std normalisation A_i = R_i − mean_g. One deliberate
    refinement: a group of two or more whose rewards are all equal gets exactly 0 (verl's float32
    arithmetic can leave ~1e-3 of noise there, which would wrongly give those completions a sign).
    Statistics are computed in float64. Time and memory O(B).
    """
    batch_size = scores.shape[0]
    groups = group_ids(index, batch_size).to(scores.device)
    return _group_advantage(scores, groups, norm_adv_by_std=norm_adv_by_std, epsilon=epsilon)


def _group_advantage(scores: torch.Tensor, groups: torch.Tensor, *, norm_adv_by_std: bool, epsilon: float):
    values = scores.detach().to(torch.float64)
    if values.numel() == 0:
        return values.to(torch.float32)
    n_groups = int(groups.max()) + 1
    counts = torch.bincount(groups, minlength=n_groups).to(torch.float64)
    mean = torch.zeros(n_groups, dtype=torch.float64, device=values.device).index_add_(0, groups, values) / counts
    deviation = values - mean[groups]
    squares = torch.zeros_like(mean).index_add_(0, groups, deviation * deviation)
    std = torch.sqrt(squares / (counts - 1).clamp(min=1))
    single = counts == 1
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, std)
    centred = values - mean[groups]
    advantage = centred / (std[groups] + epsilon) if norm_adv_by_std else centred
    group_max = torch.full_like(mean, -math.inf).scatter_reduce(0, groups, values, "amax")
    group_min = torch.full_like(mean, math.inf).scatter_reduce(0, groups, values, "amin")
    all_equal = (group_max == group_min) & ~single
    return torch.where(all_equal[groups], 0.0, advantage).to(torch.float32)


@dataclass
class GTPOTerms:
    """Every intermediate of one GTPO advantage computation (tensors ``[B]`` unless noted).

    Attributes:
        advantages: ``[B, L]`` per-token a_{i,t}, dtype of ``token_level_rewards``, 0 where the mask is 0.
        group_advantage: A_i, GRPO's advantage (before penalty and filter).
        completion_entropy: ⟨H⟩_i (0 for an empty completion).
        keep: δ_i as bool.
        sequence_advantage: δ_i · (A_i − γ·⟨H⟩_i).
        lengths: model tokens per completion, |o_i| (LongTensor).
        initial_entropy: ⟨H⟩_ini used for the filter.
        valid_tokens, protected_tokens, amplified_tokens: counts over the batch (λ = 0, λ > 1).
        nonempty_completions, filtered_completions: completions with ≥ 1 model token; of those, δ = 0.
    """

    advantages: torch.Tensor
    group_advantage: torch.Tensor
    completion_entropy: torch.Tensor
    keep: torch.Tensor
    sequence_advantage: torch.Tensor
    lengths: torch.Tensor
    initial_entropy: float
    valid_tokens: int
    protected_tokens: int
    amplified_tokens: int
    nonempty_completions: int
    filtered_completions: int


def compute_gtpo_terms(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    responses: torch.Tensor,
    index: GroupIndex,
    entropy: torch.Tensor,
    *,
    initial_entropy: float,
    amplification: float = 2.0,
    entropy_coef: float = 0.1,
    entropy_threshold: float = math.log(2.0),
    conflict_mode: str = "prefix_suffix",
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> GTPOTerms:
    """GTPO advantages with all intermediates; see :func:`compute_gtpo_advantage` for the arguments."""
    if initial_entropy is None:
        raise ValueError("initial_entropy is required (⟨H⟩_ini in nats; measure it on the first batch with "
                         "gtpo_plugin.mean_completion_entropy, or pass math.inf to turn the filter off)")
    GTPOConfig(amplification, entropy_coef, entropy_threshold, conflict_mode, initial_entropy)
    check_token_ids("responses", responses)
    check_matrix("token_level_rewards", token_level_rewards, responses.shape)
    mask, lengths = check_response_mask(response_mask, responses.shape)
    mean_entropy = entropy_row_sums(entropy, mask) / lengths.clamp(min=1)
    groups = group_ids(index, responses.shape[0]).to(responses.device)

    scores = token_level_rewards.detach().sum(dim=-1)
    advantage = _group_advantage(scores, groups, norm_adv_by_std=norm_adv_by_std, epsilon=epsilon)
    runs = find_conflicts(responses, mask, index, advantage, amplification=amplification,
                          mode=conflict_mode, checked_mask=(mask, lengths), groups=groups)
    keep = entropy_filter(mean_entropy, initial_entropy, entropy_threshold)
    sequence_advantage = torch.where(keep, advantage - entropy_coef * mean_entropy, 0.0)

    dtype = token_level_rewards.dtype if token_level_rewards.dtype.is_floating_point else torch.float32
    per_token = runs.scale_(mask.to(dtype).mul_(sequence_advantage.to(dtype)[:, None]))

    nonempty = lengths > 0
    protected, amplified = runs.token_counts()
    return GTPOTerms(
        advantages=per_token,
        group_advantage=advantage,
        completion_entropy=mean_entropy,
        keep=keep,
        sequence_advantage=sequence_advantage,
        lengths=lengths,
        initial_entropy=float(initial_entropy),
        valid_tokens=int(lengths.sum()),
        protected_tokens=protected,
        amplified_tokens=amplified,
        nonempty_completions=int(nonempty.sum()),
        filtered_completions=int((nonempty & ~keep).sum()),
    )


def compute_gtpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    responses: torch.Tensor,
    index: GroupIndex,
    entropy: torch.Tensor,
    *,
    initial_entropy: float,
    amplification: float = 2.0,
    entropy_coef: float = 0.1,
    entropy_threshold: float = math.log(2.0),
    conflict_mode: str = "prefix_suffix",
    norm_adv_by_std: bool = True,
    epsilon: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GTPO per-token advantages, as verl's estimators return them: ``(advantages, returns)``.

    Args:
        token_level_rewards: ``[B, L]`` float; R_i is its sum over the row (outcome reward).
        response_mask: ``[B, L]`` bool/int/float 0/1: 1 on the model's own tokens, 0 on padding and on
            tool or user tokens between turns (holes; positions are counted over the model's tokens).
        responses: LongTensor ``[B, L]`` of sampled token ids.
        index: length-B group id per row (verl's ``uid``).
        entropy: ``[B, L]`` per-token entropy (nats) of the sampling policy; no gradient is taken;
            read only where the mask is 1.
        initial_entropy: ⟨H⟩_ini, fixed for the run; ``math.inf`` turns the filter off.
        amplification: w, λ of a positive conflict token.
        entropy_coef: γ of the entropy penalty (0 = off).
        entropy_threshold: τ of the filter (default ln 2).
        conflict_mode: ``"prefix_suffix"``, ``"any"`` or ``"none"``.
        norm_adv_by_std: divide by the group std as GRPO does (verl's ``norm_adv_by_std_in_grpo``).
        epsilon: GRPO's ε.

    Returns:
        Two references to the same ``[B, L]`` tensor a_{i,t} (verl's GRPO returns its advantages as
        returns too). With γ = 0, mode ``"none"`` and ``initial_entropy = inf`` this equals verl's ``grpo``.

    Cost: O(B·L) time and memory for the masks and the output, plus O(G_max·B·K) for conflict runs
    of window K (small in ``prefix_suffix`` mode; K = L in ``any`` mode); never O(V·L).
    """
    terms = compute_gtpo_terms(
        token_level_rewards, response_mask, responses, index, entropy,
        initial_entropy=initial_entropy, amplification=amplification, entropy_coef=entropy_coef,
        entropy_threshold=entropy_threshold, conflict_mode=conflict_mode,
        norm_adv_by_std=norm_adv_by_std, epsilon=epsilon,
    )
    return terms.advantages, terms.advantages
