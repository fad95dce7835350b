"""What defines the runs of one seed (``DemoOptions``); verl-free, so that the command line reads its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gtpo_plugin.demo.arms import ALGORITHMS
from gtpo_plugin.demo.presets import PRESETS
from gtpo_plugin.demo.regimes import REGIMES
from gtpo_plugin.demo.task import MAX_OPERANDS, MIN_OPERANDS, check_operand_range

MAX_POSITIONS = 64  # the demo model's max_position_embeddings (gtpo_plugin.demo.model)

if TYPE_CHECKING:
    from gtpo_plugin.demo.train import RLSettings


@dataclass(frozen=True)
class DemoOptions:
    """Everything that defines the runs of one seed; ``lr``/``group_size`` None take the preset's value.

    ``shipped_warmup``: start from the warm-up the package ships for these settings when it has one
    (:func:`gtpo_plugin.demo.pipeline.warmed_model`); False trains it here.

    ``eval_every`` > 0 also measures pass@1 on the evaluation set every that many RL steps (for the peak
    over training); before and after RL it is always measured.

    ``seed`` seeds reinforcement learning (prompts and sampling); the model is initialised and warmed
    up with ``warmup_seed``, the same for every seed of a study, as RL runs of a language model all
    start from one pretrained checkpoint. Seed-to-seed spread is then the spread of RL itself.
    """

    preset: str = "paper"
    regime: str = "default"
    steps: int = 24
    group_size: int | None = None
    prompts_per_step: int = 8
    seed: int = 0
    warmup_seed: int = 0
    device: str = "cpu"
    lr: float | None = None
    mini_batches: int = 2
    max_new_tokens: int = 40
    warmup_steps: int = 1500
    warmup_batch_size: int = 64
    warmup_noise: float = 0.1
    warmup_lr: float = 3e-3
    eval_problems: int = 256
    eval_every: int = 0
    shipped_warmup: bool = True
    min_operands: int = MIN_OPERANDS
    max_operands: int = MAX_OPERANDS
    algorithms: tuple[str, ...] = ("gtpo", "grpo")
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {self.regime!r}")
        check_operand_range(self.min_operands, self.max_operands)
        longest_prompt = 2 * self.max_operands + 1  # <bos>, digits, "+" between them, "="
        if longest_prompt + self.max_new_tokens > MAX_POSITIONS:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} with up to {self.max_operands} operands needs "
                             f"{longest_prompt + self.max_new_tokens} positions; the model has {MAX_POSITIONS}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: before and after RL only), got {self.eval_every}")
        unknown = [name for name in self.algorithms if name not in ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"algorithms must be names from {sorted(ALGORITHMS)}, got {list(self.algorithms)}")

    @classmethod
    def for_regime(cls, regime: str = "default", **explicit: Any) -> DemoOptions:
        """Options of ``regime`` (:mod:`gtpo_plugin.demo.regimes`); ``explicit`` values override the regime's.

        ``None`` in ``explicit`` means "not given" (the regime's value, else the default, stays).
        """
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {sorted(REGIMES)}, got {regime!r}")
        given = {key: value for key, value in explicit.items() if value is not None}
        return cls(regime=regime, **{**REGIMES[regime].options, **given})

    def settings(self) -> RLSettings:
        """The RL hyper-parameters of every arm: the preset's, with this run's sizes."""
        from gtpo_plugin.demo.train import RLSettings

        preset = PRESETS[self.preset]
        return RLSettings(
            steps=self.steps, group_size=self.group_size or preset.group_size, prompts_per_step=self.prompts_per_step,
            lr=self.lr if self.lr is not None else preset.lr, mini_batches=self.mini_batches,
            max_new_tokens=self.max_new_tokens, temperature=preset.temperature, reward=preset.reward,
            norm_adv_by_std=preset.norm_adv_by_std, max_grad_norm=preset.max_grad_norm, gtpo=dict(preset.gtpo),
            min_operands=self.min_operands, max_operands=self.max_operands,
        )
