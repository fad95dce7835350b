"""GTPO's policy loss: PPO's clipped surrogate on GTPO's per-token advantages (GTPO_SPEC "Objective").

Per token, with a = δ_i·(A_i − γ⟨H⟩_i)·λ_{i,t} already folded into ``advantages``:

    loss_{i,t} = −min(r·a, clip(r, 1−ε_low, 1+ε_high)·a) = max(−r·a, −clip(r)·a)

then reduced by ``loss_agg_mode``; the paper's 1/G Σ_i 1/|o_i| Σ_t is "seq-mean-token-mean".
No KL term: GTPO needs no reference model. A token with λ = 0 has a = 0 and so gets exactly zero
gradient; a token with λ = w gets w times GRPO's gradient.
"""

from __future__ import annotations

import torch

from gtpo_plugin._validation import check_matrix

LOSS_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def clipped_surrogate(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token clipped surrogate loss ``[B, L]`` (not yet reduced) and its metrics.

    Args:
        old_log_prob: ``[B, L]`` log π_old of the sampled tokens (no gradient needed).
        log_prob: ``[B, L]`` log π_θ of the same tokens; the gradient flows through it.
        advantages: ``[B, L]`` GTPO per-token advantages (detached).
        response_mask: ``[B, L]``, 1 on valid tokens; used for the metrics only.
        clip_ratio_low, clip_ratio_high: ε_low, ε_high of the clip range [1−ε_low, 1+ε_high].
        rollout_is_weights: optional ``[B, L]`` importance weights multiplied into the loss.

    Returns:
        ``(pg_losses, metrics)`` with ``actor/pg_clipfrac`` (share of valid tokens where clipping
        binds) and ``actor/ppo_kl`` (mean of log π_old − log π_θ), verl's metric names.
        Time and memory O(B·L).
    """
    check_matrix("log_prob", log_prob)
    for name, tensor in (("old_log_prob", old_log_prob), ("advantages", advantages), ("response_mask", response_mask)):
        check_matrix(name, tensor, log_prob.shape)
    if rollout_is_weights is not None:
        check_matrix("rollout_is_weights", rollout_is_weights, log_prob.shape)
    if clip_ratio_low < 0 or clip_ratio_high < 0:
        raise ValueError(f"clip_ratio_low and clip_ratio_high must be >= 0, got {clip_ratio_low}, {clip_ratio_high}")

    log_ratio = torch.clamp(log_prob - old_log_prob.detach(), min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    advantages = advantages.detach()
    pg_loss_unclipped = -advantages * ratio
    pg_loss_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    pg_losses = torch.maximum(pg_loss_unclipped, pg_loss_clipped)
    if rollout_is_weights is not None:
        pg_losses = pg_losses * rollout_is_weights.detach()

    mask = response_mask.to(log_prob.dtype)
    valid = mask.sum().clamp(min=1)
    metrics = {
        "actor/pg_clipfrac": float(((pg_loss_clipped > pg_loss_unclipped).to(mask.dtype) * mask).sum() / valid),
        "actor/ppo_kl": float((-log_ratio.detach() * mask).sum() / valid),
    }
    return pg_losses, metrics


def aggregate_loss(loss_mat: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str) -> torch.Tensor:
    """Reduce a ``[B, L]`` token loss to a scalar on one process, with verl's ``agg_loss`` modes.

    ``seq-mean-token-mean`` (the paper's): mean over completions with ≥ 1 valid token of each
    completion's token mean. ``token-mean``: mean over all valid tokens. ``seq-mean-token-sum(-norm)``:
    mean of token sums (divided by L for ``-norm``). ``token-sum``: sum. Inside verl the adapter uses
    verl's own ``agg_loss``, which also handles data-parallel scaling.
    """
    if loss_agg_mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {LOSS_AGG_MODES}, got {loss_agg_mode!r}")
    mask = response_mask.to(loss_mat.dtype)
    token_sums = (loss_mat * mask).sum(dim=-1)
    counts = mask.sum(dim=-1)
    nonempty = (counts > 0).to(loss_mat.dtype)
    n_sequences = nonempty.sum().clamp(min=1)
    if loss_agg_mode == "token-mean":
        return token_sums.sum() / counts.sum().clamp(min=1)
    if loss_agg_mode == "token-sum":
        return token_sums.sum()
    if loss_agg_mode == "seq-mean-token-mean":
        return (token_sums / counts.clamp(min=1) * nonempty).sum() / n_sequences
    loss = (token_sums * nonempty).sum() / n_sequences
    return loss / loss_mat.shape[-1] if loss_agg_mode == "seq-mean-token-sum-norm" else loss


def gtpo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    loss_agg_mode: str = "seq-mean-token-mean",
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """GTPO's scalar policy loss (to minimise) and metrics, framework-free; see :func:`clipped_surrogate`."""
    pg_losses, metrics = clipped_surrogate(
        old_log_prob, log_prob, advantages, response_mask,
        clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, rollout_is_weights=rollout_is_weights,
    )
    return aggregate_loss(pg_losses, response_mask, loss_agg_mode), metrics
