"""The policy loss ``gtpo`` in verl's registry: GTPO's clipped surrogate, reduced by verl's ``agg_loss``.

verl's shared ``ppo_loss`` (verl/workers/utils/losses.py), which the FSDP and the Megatron engines
both call, looks the loss up by ``actor_rollout_ref.actor.policy_loss.loss_mode`` and calls it with
the signature below. GTPO's δ, γ and λ are already folded into ``advantages`` by the estimator, so
the loss is PPO's clipped surrogate without dual-clip (GTPO_SPEC "Objective"); verl's ``agg_loss``
does the reduction, with the global batch sizes verl puts in ``config.global_batch_info`` so that
the loss is the same at every data-parallel size. The paper's aggregation is
``actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean``.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, agg_loss, register_policy_loss

from gtpo_plugin.loss import clipped_surrogate
from gtpo_plugin.verl_adapter.settings import GTPO

#: The keys verl's engine (``verl.workers.utils.losses.ppo_loss``) puts in ``config.global_batch_info``.
GLOBAL_BATCH_KEYS = ("dp_size", "batch_num_tokens", "global_batch_size")


def global_batch_info(config: Any) -> dict[str, Any]:
    """``config.global_batch_info``, the global batch sizes ``agg_loss`` divides by.

    verl's engine fills it before every loss call; an empty one means a direct call outside the engine (the
    CPU demo), reduced over the micro-batch as verl's own losses do then. A config without the field, or
    one filled without those keys, is an error: the loss would otherwise normalise per micro-batch and its
    scale would depend on the data-parallel size.
    """
    info = getattr(config, "global_batch_info", None)
    if info is None or not hasattr(info, "keys"):
        raise ValueError(f"policy loss 'gtpo' needs the actor config's global_batch_info (a dict verl's engine "
                         f"fills with {GLOBAL_BATCH_KEYS}); {type(config).__name__} has {info!r}")
    missing = [key for key in GLOBAL_BATCH_KEYS if key not in info]
    if info and missing:
        raise ValueError(f"policy loss 'gtpo': config.global_batch_info {dict(info)} lacks {missing}, which verl's "
                         "engine sets; without them the loss would be normalised per micro-batch")
    return dict(info)


def compute_policy_loss_gtpo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """GTPO's policy loss (to minimise) and its metrics, with verl's policy-loss signature.

    Args:
        old_log_prob: ``[B, L]`` log-probabilities of the sampled tokens under the old policy.
        log_prob: ``[B, L]`` the same under the current policy; the gradient flows through it.
        advantages: ``[B, L]`` GTPO per-token advantages a_{i,t} (from adv_estimator ``gtpo``).
        response_mask: ``[B, L]``, true on the tokens that count.
        loss_agg_mode: verl's aggregation mode, passed to ``agg_loss``.
        config: the actor config (``ActorConfig``); ``clip_ratio_low``/``clip_ratio_high`` (each
            defaulting to ``clip_ratio``) and ``global_batch_info`` are read.
        rollout_is_weights: optional ``[B, L]`` rollout-correction weights multiplied into the token losses.

    Returns:
        ``(loss, metrics)`` with ``actor/pg_clipfrac`` and ``actor/ppo_kl``. Time and memory O(B·L).
    """
    if config is None:
        raise ValueError("policy loss 'gtpo' needs the actor config (clip_ratio_low, clip_ratio_high)")
    clip_ratio = config.clip_ratio
    clip_ratio_low = config.clip_ratio_low if config.clip_ratio_low is not None else clip_ratio
    clip_ratio_high = config.clip_ratio_high if config.clip_ratio_high is not None else clip_ratio
    pg_losses, metrics = clipped_surrogate(
        old_log_prob, log_prob, advantages, response_mask,
        clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high, rollout_is_weights=rollout_is_weights,
    )
    loss = agg_loss(loss_mat=pg_losses, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                    **global_batch_info(config))
    return loss, metrics


def register() -> None:
    """Register the loss as ``gtpo``, refusing to replace another function of that name."""
    existing = POLICY_LOSS_REGISTRY.get(GTPO)
    if existing is compute_policy_loss_gtpo:
        return
    if existing is not None:
        raise ValueError(f"verl already has a policy loss named 'gtpo' ({existing.__module__}.{existing.__name__}); "
                         "refusing to replace it")
    register_policy_loss(GTPO)(compute_policy_loss_gtpo)


register()  # on import, so that an import cycle through core_algos (see verl_adapter._register) still registers
