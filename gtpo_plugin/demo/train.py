"""Reinforcement learning through verl's algorithm layer: rollout → ``compute_advantage`` → policy loss → step.

Nothing here re-implements GRPO or GTPO. Advantages come from verl's
``verl.trainer.ppo.ray_trainer.compute_advantage`` (``adv_estimator="gtpo"`` is the plugin's, registered
when ``import verl`` loads the ``verl.plugins`` entry point; ``"grpo"`` is verl's own) and the loss from
``verl.trainer.ppo.core_algos.get_policy_loss_fn`` with a real verl ``FSDPActorConfig``. The core's
functions are called only for diagnostics (λ, the ``gtpo/*`` metrics of both runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from verl import DataProto
from verl.trainer.ppo import core_algos, ray_trainer
from verl.utils.debug.metrics import calculate_debug_metrics
from verl.workers.config import FSDPActorConfig, OptimizerConfig, PolicyLossConfig

from gtpo_plugin import compute_gtpo_terms, conflict_weights, gtpo_metrics, mean_completion_entropy
from gtpo_plugin.demo.arms import Algorithm
from gtpo_plugin.demo.mechanisms import MECHANISM_KEYS, mechanism_metrics
from gtpo_plugin.demo.model import response_log_probs
from gtpo_plugin.demo.rollout import RewardFn, Rollout, response_checksum, rollout
from gtpo_plugin.demo.task import FORMAT_TAG_TOKENS, MAX_OPERANDS, MIN_OPERANDS, sample_problems
from gtpo_plugin.demo.vocab import Vocab


@dataclass(frozen=True)
class RLSettings:
    """Hyper-parameters of the reinforcement-learning phase (shared by every arm of a study)."""

    steps: int
    group_size: int
    prompts_per_step: int
    lr: float
    mini_batches: int
    max_new_tokens: int
    temperature: float = 1.0
    reward: str | RewardFn = "correctness"
    norm_adv_by_std: bool = True
    clip_ratio: float = 0.2
    # verl's dual-clip bound for the vanilla loss (its default); the gtpo loss has no dual-clip.
    dual_clip_ratio: float = 3.0
    max_grad_norm: float = 1.0
    loss_agg_mode: str = "seq-mean-token-mean"
    gtpo: dict[str, Any] = field(default_factory=dict)
    min_operands: int = MIN_OPERANDS
    max_operands: int = MAX_OPERANDS

    def knobs(self, algorithm: Algorithm) -> dict[str, Any]:
        """The GTPO knobs this arm trains with: the preset's, with the arm's overrides."""
        return {**self.gtpo, **dict(algorithm.gtpo)}


def actor_config(algorithm: Algorithm, settings: RLSettings) -> FSDPActorConfig:
    """verl's own actor config: what its policy losses read (clip ratios, aggregation, batch info)."""
    batch = settings.prompts_per_step * settings.group_size
    return FSDPActorConfig(
        strategy="fsdp",
        rollout_n=settings.group_size,
        ppo_mini_batch_size=settings.prompts_per_step // settings.mini_batches,
        ppo_micro_batch_size_per_gpu=batch // settings.mini_batches,
        ppo_epochs=1,
        clip_ratio=settings.clip_ratio,
        clip_ratio_low=settings.clip_ratio,
        clip_ratio_high=settings.clip_ratio,
        clip_ratio_c=settings.dual_clip_ratio,
        loss_agg_mode=settings.loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode=algorithm.loss_mode),
        use_kl_loss=False,
        entropy_coeff=0.0,
        use_torch_compile=False,
        grad_clip=settings.max_grad_norm,
        optim=OptimizerConfig(lr=settings.lr, weight_decay=0.0, clip_grad=settings.max_grad_norm),
    )


def algorithm_config(algorithm: Algorithm, settings: RLSettings) -> DictConfig:
    """The ``algorithm`` section of a verl config, with GTPO's knobs under ``gtpo`` (unused by GRPO)."""
    return OmegaConf.create({
        "adv_estimator": algorithm.adv_estimator,
        "norm_adv_by_std_in_grpo": settings.norm_adv_by_std,
        "use_kl_in_reward": False,
        "gamma": 1.0,
        "lam": 1.0,
        "gtpo": {**settings.knobs(algorithm), "initial_entropy": None},
    })


def compute_advantages(data: DataProto, algorithm: Algorithm, config: DictConfig) -> DataProto:
    """verl's ``compute_advantage`` on the batch; adds ``advantages`` and ``returns``.

    Looked up on the module at call time: the plugin wraps it when ``import verl`` loads the adapter.
    verl's own trainers pass a plain string and a ``DictConfig`` here, as this does; its annotations
    (``AdvantageEstimator``, ``AlgoConfig``) are narrower than what it accepts.
    """
    compute: Any = ray_trainer.compute_advantage
    return compute(
        data,
        adv_estimator=algorithm.adv_estimator,
        norm_adv_by_std_in_grpo=config.norm_adv_by_std_in_grpo,
        config=config,
    )


@dataclass
class Diagnostics:
    """What GTPO sees in a batch, computed with the core for either run: λ and the ``gtpo/*`` metrics."""

    weights: torch.Tensor
    conflicts: torch.Tensor
    metrics: dict[str, float]
    group_advantage: torch.Tensor
    completion_entropy: torch.Tensor
    keep: torch.Tensor


def diagnose(data: DataProto, knobs: dict[str, Any], norm_adv_by_std: bool, initial_entropy: float) -> Diagnostics:
    """λ (from the signs of GRPO's A_i), the ``gtpo/*`` metrics with the arm's knobs and ⟨H⟩_ini, and the
    conflict tokens of the default mode (``prefix_suffix``), whatever the arm: a property of the batch.

    ``demo/conflict_token_frac`` is the share of valid tokens that are conflict tokens (λ ≠ 1 under
    the default mode), the same quantity for every arm.
    """
    knobs = {k: v for k, v in knobs.items() if k != "initial_entropy"}
    batch, uid = data.batch, data.non_tensor_batch["uid"]
    terms = compute_gtpo_terms(
        batch["token_level_rewards"], batch["response_mask"], batch["responses"], uid,
        batch["entropy"], initial_entropy=initial_entropy, norm_adv_by_std=norm_adv_by_std, **knobs,
    )
    weights = conflict_weights(
        batch["responses"], batch["response_mask"], uid, terms.group_advantage,
        amplification=knobs.get("amplification", 2.0), mode=knobs.get("conflict_mode", "prefix_suffix"),
    )
    mask = batch["response_mask"].bool()
    default_weights = conflict_weights(batch["responses"], mask, uid, terms.group_advantage, amplification=2.0,
                                       mode="prefix_suffix")
    conflicts = (default_weights != 1) & mask
    metrics = {**gtpo_metrics(terms), "demo/conflict_token_frac": float(conflicts.sum() / mask.sum().clamp(min=1))}
    return Diagnostics(weights, conflicts, metrics, terms.group_advantage, terms.completion_entropy, terms.keep)


def update_policy(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DataProto,
    config: FSDPActorConfig,
    protected: torch.Tensor,
    mini_batches: int,
) -> dict[str, float]:
    """One PPO epoch over ``mini_batches`` contiguous mini-batches (whole groups each), verl's policy loss.

    ``protected`` ``[B, L]`` marks the tokens GTPO gives λ = 0; the returned
    ``demo/protected_grad_abs`` sums |∂loss/∂log π| over them (exactly 0 for GTPO, > 0 for GRPO,
    whose negative updates push those shared tokens down).
    """
    loss_fn = core_algos.get_policy_loss_fn(config.policy_loss.loss_mode)
    totals: dict[str, float] = {}
    protected_grad = 0.0
    rows = torch.arange(len(data))
    for chunk_rows, chunk in zip(rows.chunk(mini_batches), data.chunk(mini_batches), strict=True):
        batch = chunk.batch
        log_prob, _ = response_log_probs(model, batch["prompts"], batch["prompt_mask"], batch["responses"],
                                         temperature=float(chunk.meta_info.get("temperature", 1.0)))
        log_prob.retain_grad()
        loss, metrics = loss_fn(
            old_log_prob=batch["old_log_probs"],
            log_prob=log_prob,
            advantages=batch["advantages"],
            response_mask=batch["response_mask"].to(torch.bool),
            loss_agg_mode=config.loss_agg_mode,
            config=config,
            rollout_is_weights=None,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        assert log_prob.grad is not None
        protected_grad += float(log_prob.grad[protected[chunk_rows]].abs().sum())
        metrics = {**metrics, "actor/pg_loss": float(loss.detach()), "actor/grad_norm": float(grad_norm)}
        for key, value in metrics.items():
            totals[key] = totals.get(key, 0.0) + float(value) / mini_batches
    totals["demo/protected_grad_abs"] = protected_grad
    return totals


@dataclass
class StepRecord:
    """One RL step: the batch as trained on (with advantages), its diagnostics and logged metrics."""

    rollout: Rollout
    diagnostics: Diagnostics
    metrics: dict[str, float]


@dataclass
class Trainer:
    """Runs one algorithm from given weights; ``step()`` does rollout → advantage → update."""

    algorithm: Algorithm
    model: torch.nn.Module
    vocab: Vocab
    settings: RLSettings
    seed: int
    step_index: int = 0
    initial_entropy: float | None = None

    def __post_init__(self) -> None:
        self.actor = actor_config(self.algorithm, self.settings)
        self.algo = algorithm_config(self.algorithm, self.settings)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=self.actor.optim.lr,
            betas=(self.actor.optim.betas[0], self.actor.optim.betas[1]),
            weight_decay=self.actor.optim.weight_decay,
        )
        self.generator = torch.Generator().manual_seed(self.seed)

    def step(self) -> StepRecord:
        self.step_index += 1
        problems = sample_problems(self.settings.prompts_per_step, self.generator, self.settings.min_operands,
                                   self.settings.max_operands)
        batch = rollout(self.model, self.vocab, problems, group_size=self.settings.group_size,
                        max_new_tokens=self.settings.max_new_tokens, generator=self.generator,
                        step=self.step_index, reward=self.settings.reward, temperature=self.settings.temperature)
        data = batch.data
        data = compute_advantages(data, self.algorithm, self.algo)
        batch.data = data
        if self.initial_entropy is None:
            # ⟨H⟩_ini as the spec defines it: the first batch, before any update. For GTPO the adapter
            # measured it and stored it in the algorithm config; for GRPO it is measured here the same
            # way, only for the diagnostics.
            stored = self.algo.gtpo.get("initial_entropy")
            self.initial_entropy = float(stored) if stored is not None else mean_completion_entropy(
                data.batch["entropy"], data.batch["response_mask"])
        diagnostics = diagnose(data, self.settings.knobs(self.algorithm), self.settings.norm_adv_by_std,
                               self.initial_entropy)
        protected = (diagnostics.weights == 0) & data.batch["response_mask"].bool()
        update = update_policy(self.model, self.optimizer, data, self.actor, protected, self.settings.mini_batches)
        mechanisms = self.measure_update(data, diagnostics)
        # For GTPO the adapter reports the same gtpo/* values it trained with; for GRPO they are diagnostic.
        gtpo_values = {**diagnostics.metrics, **data.meta_info.get("gtpo_metrics", {})}
        metrics = {"step": float(self.step_index), **rollout_metrics(batch), **gtpo_values, **update, **mechanisms}
        return StepRecord(batch, diagnostics, metrics)

    def measure_update(self, data: DataProto, diagnostics: Diagnostics) -> dict[str, float]:
        """What this step's update did to conflict tokens and format tags (:mod:`gtpo_plugin.demo.mechanisms`).

        One more teacher-forced pass of the updated policy over the batch, without gradient.
        """
        batch = data.batch
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            new_log_prob, _ = response_log_probs(self.model, batch["prompts"], batch["prompt_mask"], batch["responses"],
                                                 temperature=self.settings.temperature)
        self.model.train(was_training)
        tag_ids = torch.tensor(self.vocab.encode(FORMAT_TAG_TOKENS), device=batch["responses"].device)
        return mechanism_metrics(
            batch["old_log_probs"], new_log_prob, batch["response_mask"], diagnostics.conflicts,
            torch.isin(batch["responses"], tag_ids), diagnostics.group_advantage, diagnostics.completion_entropy,
            threshold=float(self.settings.gtpo.get("entropy_threshold", math.log(2.0))),
        )


def rollout_metrics(batch: Rollout) -> dict[str, float]:
    """Reward (the preset's), accuracy, format accuracy, token entropy (verl's ``actor/entropy``: token
    mean), length, a checksum of the sampled tokens (two arms sampled the same batch iff equal), and
    verl's own rollout-vs-actor comparison (``calculate_debug_metrics``: ``training/rollout_probs_diff_max``
    is the largest |p_sampler − p_actor| over valid tokens, 0 up to float rounding when the trainer's
    recomputed ``old_log_probs`` are the sampler's)."""
    mask = batch.data.batch["response_mask"].float()
    entropy = float((batch.data.batch["entropy"] * mask).sum() / mask.sum().clamp(min=1))
    diff = calculate_debug_metrics(batch.data)
    return {
        "demo/rollout_probs_diff_max": float(diff["training/rollout_probs_diff_max"]),
        "demo/rollout_probs_diff_mean": float(diff["training/rollout_probs_diff_mean"]),
        "reward/mean": float(np.mean(batch.rewards)),
        "accuracy/sampled": float(np.mean([g.correct for g in batch.grades])),
        "format/accuracy": float(np.mean([g.well_formed for g in batch.grades])),
        "demo/response_checksum": response_checksum(batch.data.batch["responses"]),
        "actor/entropy": entropy,
        "response_length/mean": float(mask.sum(dim=1).mean()),
    }


def run(trainer: Trainer, on_step: Callable[[StepRecord], None] | None = None) -> list[dict[str, float]]:
    """Run ``trainer.settings.steps`` steps; ``on_step`` sees every record (progress bar, group view)."""
    history = []
    for _ in range(trainer.settings.steps):
        record = trainer.step()
        # A mechanism metric is NaN in a step whose token set is empty (no positive completion, say).
        if not all(math.isfinite(v) or (key in MECHANISM_KEYS and math.isnan(v)) for key, v in record.metrics.items()):
            raise FloatingPointError(f"non-finite metric at step {trainer.step_index}: {record.metrics}")
        history.append(record.metrics)
        if on_step is not None:
            on_step(record)
    return history
