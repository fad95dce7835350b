"""GTPO's settings in a verl config: read ``algorithm.gtpo``, check the run's settings at start-up.

verl's ``AlgoConfig`` dataclass has no ``gtpo`` field; the trainers hand the raw ``algorithm``
DictConfig to the advantage stage, so the sub-mapping reaches the estimator untouched. On the
command line a key verl's schema lacks needs Hydra's ``+`` prefix: ``+algorithm.gtpo.entropy_coef=0.05``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, open_dict

from gtpo_plugin.config import GTPOConfig

logger = logging.getLogger(__name__)

GTPO = "gtpo"

#: The rejection-sampling modes of ``algorithm.rollout_correction.rollout_rs`` that mask whole completions
#: (verl 0.9's sequence-level ones). Any other mode, token-level or one GTPO does not know, is refused.
SEQUENCE_LEVEL_ROLLOUT_RS = frozenset({"seq_sum_k1", "seq_sum_k2", "seq_sum_k3", "seq_mean_k1", "seq_mean_k2",
                                       "seq_mean_k3", "seq_max_k2", "seq_max_k3"})


def _name(value: Any) -> str:
    """An estimator or loss name as a plain string (verl also passes ``AdvantageEstimator`` members)."""
    return str(getattr(value, "value", value))


def _get(mapping: Any, key: str, default: Any = None) -> Any:
    if mapping is None:
        return default
    if not isinstance(mapping, (Mapping, DictConfig)):
        raise TypeError(f"expected a dict or DictConfig for the algorithm config, got {type(mapping).__name__}")
    return mapping.get(key, default)


def gtpo_config(algorithm: Any) -> GTPOConfig:
    """Validated :class:`GTPOConfig` from ``algorithm["gtpo"]`` (absent: all defaults).

    ``algorithm`` is verl's ``algorithm`` section (DictConfig or dict). Raises ``ValueError`` or
    ``TypeError`` naming the offending ``algorithm.gtpo`` key.
    """
    section = _get(algorithm, GTPO)
    if section is not None and not isinstance(section, (Mapping, DictConfig)):
        raise TypeError(f"algorithm.gtpo must be a mapping of GTPO settings, got {section!r}")
    try:
        return GTPOConfig.from_mapping(section)
    except (TypeError, ValueError) as error:
        raise type(error)(f"invalid algorithm.gtpo: {error}") from error


def norm_adv_by_std(algorithm: Any) -> bool:
    """verl's ``algorithm.norm_adv_by_std_in_grpo`` (default true), which GTPO's A_i follows."""
    return bool(_get(algorithm, "norm_adv_by_std_in_grpo", True))


def uses_gtpo_estimator(config: Any) -> bool:
    """Whether a full verl config selects ``algorithm.adv_estimator=gtpo``."""
    return _name(_get(_get(config, "algorithm"), "adv_estimator")) == GTPO


def uses_gtpo_loss(config: Any) -> bool:
    """Whether a full verl config selects ``actor_rollout_ref.actor.policy_loss.loss_mode=gtpo``."""
    actor = _get(_get(config, "actor_rollout_ref"), "actor")
    return _name(_get(_get(actor, "policy_loss"), "loss_mode")) == GTPO


def uses_gtpo(config: Any) -> bool:
    """Whether a full verl config selects GTPO's estimator or its loss."""
    return uses_gtpo_estimator(config) or uses_gtpo_loss(config)


def check_v1_trainer_config(config: DictConfig) -> None:
    """What only verl's v1 trainer cannot do with ``adv_estimator=gtpo``: PF-PPO (verl#7956)."""
    if uses_gtpo_estimator(config) and _get(config.algorithm, "use_pf_ppo", False):
        raise ValueError(
            "algorithm.use_pf_ppo=true with algorithm.adv_estimator=gtpo is refused on verl's v1 trainer: it writes "
            "the advantages of PF-PPO's resampled rows back under the original TransferQueue keys, so rows would "
            "train on other rows' advantages (verl#7956). Set algorithm.use_pf_ppo=false"
        )


def check_trainer_config(config: DictConfig) -> None:
    """Start-up checks of a full verl config that selects GTPO; a no-op otherwise.

    Validates ``algorithm.gtpo`` and writes it back complete (defaults filled in) so that the
    config verl logs shows every GTPO setting. Raises when the run cannot give GTPO the old
    policy's per-token entropy; warns about a KL term (GTPO needs no reference model) and about
    pairing the estimator with another loss or the loss with another estimator.

    Token-level rejection sampling (``rollout_rs=token_k*``) is refused, although GTPO accepts masks
    with holes: the holes of multi-turn agent loops are tokens the model did not generate (tool or user
    tokens), which GTPO skips when it counts positions. A rejected token is one the model did generate;
    verl sets its ``response_mask`` to 0 before the advantage stage, so skipping it would shift every
    later position of that completion by one against the other completions of its group and compare
    the wrong tokens. Sequence-level modes (a whole completion masked, :data:`SEQUENCE_LEVEL_ROLLOUT_RS`) are
    allowed; a mode GTPO does not know is refused too.
    """
    estimator, loss = uses_gtpo_estimator(config), uses_gtpo_loss(config)
    if not (estimator or loss):
        return
    actor = config.actor_rollout_ref.actor
    if _get(config.algorithm, "use_kl_in_reward", False) or _get(actor, "use_kl_loss", False):
        logger.warning(
            "GTPO needs no reference model, but a KL term is on (algorithm.use_kl_in_reward=%s, "
            "actor_rollout_ref.actor.use_kl_loss=%s): verl will load and run one. Set both to false for GTPO "
            "as in the paper.",
            _get(config.algorithm, "use_kl_in_reward", False), _get(actor, "use_kl_loss", False),
        )
    if not estimator:
        logger.warning("policy_loss.loss_mode=gtpo with algorithm.adv_estimator=%s: the loss is PPO's clipped "
                       "surrogate; GTPO's conflict and entropy terms come from adv_estimator=gtpo",
                       _name(config.algorithm.adv_estimator))
        return
    if not loss:
        logger.warning("algorithm.adv_estimator=gtpo with policy_loss.loss_mode=%s: GTPO's objective is the plain "
                       "clipped surrogate (loss_mode=gtpo); other losses change it",
                       _name(_get(actor.policy_loss, "loss_mode", "vanilla")))
    rollout_correction = _get(config.algorithm, "rollout_correction")
    if _get(rollout_correction, "bypass_mode", False):
        raise ValueError(
            "algorithm.adv_estimator=gtpo needs the per-token entropy that verl computes in its old-log-prob pass, "
            "and algorithm.rollout_correction.bypass_mode=true skips that pass; set it to false"
        )
    rejection = str(_get(rollout_correction, "rollout_rs") or "")
    refused = sorted({option.strip() for option in rejection.split(",") if option.strip()} - SEQUENCE_LEVEL_ROLLOUT_RS)
    if refused:
        raise ValueError(
            f"algorithm.rollout_correction.rollout_rs={rejection!r}: GTPO allows only the sequence-level modes "
            f"{sorted(SEQUENCE_LEVEL_ROLLOUT_RS)}, not {refused}. A token-level mode masks single tokens inside "
            "completions that the model generated; GTPO counts positions over the unmasked tokens, so every later "
            "token of such a completion would be compared with the wrong position of the others. Use a "
            "sequence-level mode or none"
        )
    settings = gtpo_config(config.algorithm)
    with open_dict(config.algorithm):
        config.algorithm[GTPO] = settings.to_dict()
