"""The advantage estimator ``gtpo`` in verl's registry, and how it receives ``responses`` and ``entropy``.

verl's ``compute_advantage`` hands a registered estimator ``token_level_rewards``, ``response_mask``,
``index`` (the ``uid``) and ``config`` only. GTPO also needs the sampled token ids (conflict tokens)
and the old policy's per-token entropy (⟨H⟩_i). The trainer hooks provide both for the batch being
processed with :func:`.batch_inputs.gtpo_batch`, a context the estimator reads; outside such a context the
estimator raises instead of computing anything else.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

from gtpo_plugin.advantages import compute_gtpo_terms
from gtpo_plugin.metrics import gtpo_metrics
from gtpo_plugin.verl_adapter import seam
from gtpo_plugin.verl_adapter.batch_inputs import GTPOBatch, current_batch
from gtpo_plugin.verl_adapter.settings import GTPO, gtpo_config, norm_adv_by_std
from gtpo_plugin.verl_adapter.state import initial_entropy


def compute_gtpo_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    responses: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    **unused: Any,
) -> tuple[Any, ...]:
    """GTPO advantages with verl's estimator signature; returns ``(advantages, returns)``, both ``[B, L]``.

    Args:
        token_level_rewards: ``[B, L]``; R_i is the row sum (outcome reward).
        response_mask: ``[B, L]`` 0/1: 1 on the model's own tokens, 0 on padding and on the tool or user
            tokens of multi-turn agent loops (positions are counted over the model's tokens).
        index: the ``uid`` of each row (GRPO group).
        config: verl's ``algorithm`` section; GTPO's settings under ``gtpo``, and
            ``norm_adv_by_std_in_grpo``. ⟨H⟩_ini is measured and stored there when null (:mod:`.state`).
        responses, entropy: ``[B, L]``, passed by a verl that lets estimators declare batch fields
            (:data:`BATCH_FIELDS`, upstream/); then the batch's metrics are returned as a third value.
        unused: optional fields verl passes to some estimators (e.g. ``reward_baselines``); not used.

    ``responses`` and ``entropy`` come from the enclosing :func:`.batch_inputs.gtpo_batch`. The batch's metrics are
    left in its ``metrics``. Cost: that of :func:`gtpo_plugin.compute_gtpo_advantage`, O(B·L).
    """
    declared = responses is not None and entropy is not None
    inputs = GTPOBatch(responses, entropy) if declared else current_batch()
    if inputs is None:
        raise RuntimeError(
            "adv_estimator 'gtpo' needs the batch's 'responses' (token ids, for conflict tokens) and 'entropy' "
            "(the old policy's per-token entropy, for <H>_i), which verl does not pass to estimators. Call "
            "verl.trainer.ppo.ray_trainer.compute_advantage with a DataProto that holds both, or train with verl's "
            "v1 trainer (trainer.use_v1=true), whose advantage stage the GTPO plugin extends."
            + "".join(f" Unavailable here: {reason}." for reason in seam.reasons(seam.ALL))
        )
    if index is None:
        raise ValueError("adv_estimator 'gtpo' needs the group id of each row: the DataProto must hold 'uid'")
    if config is None:
        raise ValueError("adv_estimator 'gtpo' needs config=<the algorithm config> (GTPO's settings are under 'gtpo')")
    responses, entropy = inputs.inputs()
    shape = token_level_rewards.shape
    for name, tensor in (("responses", responses), ("entropy", entropy)):
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"'{name}' has shape {tuple(tensor.shape)} but token_level_rewards has {tuple(shape)}: "
                             "they must describe the same batch, row for row")
    device = token_level_rewards.device
    responses, entropy = responses.to(device), entropy.to(device)
    settings = gtpo_config(config)
    terms = compute_gtpo_terms(
        token_level_rewards, response_mask, responses, index, entropy,
        initial_entropy=initial_entropy(config, entropy, response_mask.to(entropy.device)),
        amplification=settings.amplification,
        entropy_coef=settings.entropy_coef,
        entropy_threshold=settings.entropy_threshold,
        conflict_mode=settings.conflict_mode,
        norm_adv_by_std=norm_adv_by_std(config),
    )
    del responses, entropy  # a lazily loaded batch's inputs are freed here, before verl writes the advantages
    inputs.metrics = gtpo_metrics(terms)
    if declared:
        return terms.advantages, terms.advantages, inputs.metrics
    return terms.advantages, terms.advantages


#: What the estimator asks a verl that lets estimators declare batch fields to pass (upstream/).
BATCH_FIELDS = ("responses", "entropy")


def register() -> None:
    """Register the estimator as ``gtpo``; verl's registry refuses a different function under that name."""
    if ADV_ESTIMATOR_REGISTRY.get(GTPO) is compute_gtpo_outcome_advantage:
        return
    if seam.estimators_declare_batch_fields():
        register_adv_est(GTPO, batch_fields=BATCH_FIELDS)(compute_gtpo_outcome_advantage)  # type: ignore[call-arg]
    else:
        register_adv_est(GTPO)(compute_gtpo_outcome_advantage)


register()  # on import, so that an import cycle through core_algos (see verl_adapter._register) still registers
