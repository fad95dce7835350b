"""Direct measures of what one update does to the structure completions share (GTPO's reason to exist).

GRPO pushes a conflict token down in every negatively rewarded completion and up in every positive one;
GTPO skips the negative push (λ = 0) and doubles the positive one. These metrics record, per step and per
arm, the log-probability of those tokens under the policy before the update and its change across the
update, split by the sign of the completion's group advantage A_i:

- ``conflict_token_logprob/{pos,neg}``: mean log π_old of the conflict tokens (``prefix_suffix`` rule,
  whatever the arm trains with) of completions with A_i > 0 / A_i < 0;
- ``conflict_token_logprob_change/{pos,neg}``: mean of log π_new − log π_old over the same tokens, π_new
  the policy after this step's update;
- ``format_tag_logprob/{pos,neg}`` and ``format_tag_logprob_change/{pos,neg}``: the same for the format
  tags alone (``<r> </r> <a> </a>`` wherever they stand, conflict or not);
- ``demo/above_tau_frac``: the share of completions whose mean token entropy ⟨H⟩_i exceeds τ (the
  preset's τ; GTPO's filter drops them only when ⟨H⟩_ini ≤ τ).

Log-probabilities are those of the sampling distribution (logits divided by the rollout temperature),
as verl's ratio uses them. A set that is empty in a batch (no positive completion, say) gives NaN for
that step; study summaries average over the steps where it is defined.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MECHANISM_KEYS", "mechanism_metrics"]

SIGNS = ("pos", "neg")
MECHANISM_KEYS = tuple(
    f"{family}/{sign}"
    for family in ("conflict_token_logprob", "conflict_token_logprob_change", "format_tag_logprob",
                   "format_tag_logprob_change")
    for sign in SIGNS
)


def _masked_mean(values: torch.Tensor, selected: torch.Tensor) -> float:
    count = int(selected.sum())
    return float(values[selected].double().sum() / count) if count else math.nan


def mechanism_metrics(
    old_log_prob: torch.Tensor,
    new_log_prob: torch.Tensor,
    response_mask: torch.Tensor,
    conflicts: torch.Tensor,
    format_tags: torch.Tensor,
    group_advantage: torch.Tensor,
    completion_entropy: torch.Tensor,
    threshold: float,
) -> dict[str, float]:
    """The metrics of the module docstring for one batch.

    Args:
        old_log_prob, new_log_prob: ``[B, L]`` float, log π of each response token before and after the
            update (no gradient).
        response_mask: ``[B, L]``, 1 on the model's tokens.
        conflicts: ``[B, L]`` bool, the conflict tokens (already within the mask).
        format_tags: ``[B, L]`` bool, tokens that are format tags.
        group_advantage: ``[B]``, GRPO's A_i (its sign splits pos/neg; A_i = 0 belongs to neither).
        completion_entropy: ``[B]``, ⟨H⟩_i.
        threshold: τ.

    Cost: O(B·L) time and memory.
    """
    mask = response_mask.bool()
    change = new_log_prob - old_log_prob
    rows = {"pos": group_advantage > 0, "neg": group_advantage < 0}
    metrics: dict[str, float] = {}
    for family, tokens in (("conflict_token", conflicts & mask), ("format_tag", format_tags & mask)):
        for sign, in_rows in rows.items():
            selected = tokens & in_rows[:, None]
            metrics[f"{family}_logprob/{sign}"] = _masked_mean(old_log_prob, selected)
            metrics[f"{family}_logprob_change/{sign}"] = _masked_mean(change, selected)
    has_tokens = mask.any(dim=1)
    above = (completion_entropy > threshold) & has_tokens
    metrics["demo/above_tau_frac"] = float(above.sum() / has_tokens.sum().clamp(min=1))
    return metrics
