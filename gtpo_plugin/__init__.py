"""GTPO for verl: Group-relative Trajectory-based Policy Optimization (arXiv 2508.03772).

The core below is plain PyTorch and imports neither verl nor Ray. The verl adapter,
``gtpo_plugin.verl_adapter``, is loaded by verl itself through the ``verl.plugins`` entry point.
"""

from gtpo_plugin.advantages import GTPOTerms, compute_gtpo_advantage, compute_gtpo_terms, group_advantage
from gtpo_plugin.config import CONFLICT_MODES, GTPOConfig
from gtpo_plugin.conflicts import conflict_weights
from gtpo_plugin.entropy import completion_entropy, entropy_filter, mean_completion_entropy
from gtpo_plugin.loss import LOSS_AGG_MODES, aggregate_loss, clipped_surrogate, gtpo_policy_loss
from gtpo_plugin.metrics import gtpo_metrics

__version__ = "0.1.0"

__all__ = [
    "CONFLICT_MODES",
    "LOSS_AGG_MODES",
    "GTPOConfig",
    "GTPOTerms",
    "aggregate_loss",
    "clipped_surrogate",
    "completion_entropy",
    "compute_gtpo_advantage",
    "compute_gtpo_terms",
    "conflict_weights",
    "entropy_filter",
    "group_advantage",
    "gtpo_metrics",
    "gtpo_policy_loss",
    "mean_completion_entropy",
]
