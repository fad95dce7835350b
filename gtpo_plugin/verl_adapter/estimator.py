"""The advantage estimator ``gtpo`` in verl's registry, and how it receives ``responses`` and ``entropy``.

verl's ``compute_advantage`` hands a registered estimator ``token_level_rewards``, ``response_mask``,
``index`` (the ``uid``) and ``config`` only. GTPO also needs the sampled token ids (conflict tokens)
and the old policy's per-token entropy (⟨H⟩_i). The trainer hooks provide both for the batch being
processed with :func:`gtpo_batch`, a context the estimator reads; outside such a context the
estimator raises instead of computing anything else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

from gtpo_plugin.advantages import compute_gtpo_terms
from gtpo_plugin.metrics import gtpo_metrics
from gtpo_plugin.verl_adapter.settings import GTPO, gtpo_config, norm_adv_by_std
from gtpo_plugin.verl_adapter.state import initial_entropy


@dataclass
class GTPOBatch:
    """What verl does not pass to estimators, for one batch: ``[B, L]`` tensors row-aligned with it.

    ``metrics`` is filled by the estimator with :func:`gtpo_plugin.gtpo_metrics` of the batch.
    """

    responses: torch.Tensor
    entropy: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


_CURRENT: ContextVar[GTPOBatch | None] = ContextVar("gtpo_batch", default=None)


@contextmanager
def gtpo_batch(responses: torch.Tensor, entropy: torch.Tensor) -> Iterator[GTPOBatch]:
    """Make ``responses`` and ``entropy`` of the batch about to be processed visible to the estimator."""
    inputs = GTPOBatch(responses=responses, entropy=entropy)
    token = _CURRENT.set(inputs)
    try:
        yield inputs
    finally:
        _CURRENT.reset(token)


def compute_gtpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GTPO advantages with verl's estimator signature; returns ``(advantages, returns)``, both ``[B, L]``.

    Args:
        token_level_rewards: ``[B, L]``; R_i is the row sum (outcome reward).
        response_mask: ``[B, L]`` 0/1: 1 on the model's own tokens, 0 on padding and on the tool or user
            tokens of multi-turn agent loops (positions are counted over the model's tokens).
        index: the ``uid`` of each row (GRPO group).
        config: verl's ``algorithm`` section; GTPO's settings under ``gtpo``, and
            ``norm_adv_by_std_in_grpo``. ⟨H⟩_ini is measured and stored there when null (:mod:`.state`).
        unused: optional fields verl passes to some estimators (e.g. ``reward_baselines``); not used.

    ``responses`` and ``entropy`` come from the enclosing :func:`gtpo_batch`. The batch's metrics are
    left in its ``metrics``. Cost: that of :func:`gtpo_plugin.compute_gtpo_advantage`, O(B·L).
    """
    inputs = _CURRENT.get()
    if inputs is None:
        raise RuntimeError(
            "adv_estimator 'gtpo' needs the batch's 'responses' (token ids, for conflict tokens) and 'entropy' "
            "(the old policy's per-token entropy, for <H>_i), which verl does not pass to estimators. Call "
            "verl.trainer.ppo.ray_trainer.compute_advantage with a DataProto that holds both, or train with verl's "
            "v1 trainer (trainer.use_v1=true), whose advantage stage the GTPO plugin extends."
        )
    if index is None:
        raise ValueError("adv_estimator 'gtpo' needs the group id of each row: the DataProto must hold 'uid'")
    if config is None:
        raise ValueError("adv_estimator 'gtpo' needs config=<the algorithm config> (GTPO's settings are under 'gtpo')")
    shape = token_level_rewards.shape
    for name, tensor in (("responses", inputs.responses), ("entropy", inputs.entropy)):
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"'{name}' has shape {tuple(tensor.shape)} but token_level_rewards has {tuple(shape)}: "
                             "they must describe the same batch, row for row")
    settings = gtpo_config(config)
    terms = compute_gtpo_terms(
        token_level_rewards, response_mask, inputs.responses.to(token_level_rewards.device), index,
        inputs.entropy.to(token_level_rewards.device),
        initial_entropy=initial_entropy(config, inputs.entropy, response_mask.to(inputs.entropy.device)),
        amplification=settings.amplification,
        entropy_coef=settings.entropy_coef,
        entropy_threshold=settings.entropy_threshold,
        conflict_mode=settings.conflict_mode,
        norm_adv_by_std=norm_adv_by_std(config),
    )
    inputs.metrics = gtpo_metrics(terms)
    return terms.advantages, terms.advantages


def register() -> None:
    """Register the estimator as ``gtpo``; verl's registry refuses a different function under that name."""
    if ADV_ESTIMATOR_REGISTRY.get(GTPO) is not compute_gtpo_outcome_advantage:
        register_adv_est(GTPO)(compute_gtpo_outcome_advantage)


register()  # on import, so that an import cycle through core_algos (see verl_adapter._register) still registers
