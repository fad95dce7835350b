"""What defines the runs of one seed (``DemoOptions``); verl-free, so that the command line reads its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gtpo_plugin.demo.arms import ALGORITHMS
from gtpo_plugin.demo.presets import PRESETS

if TYPE_CHECKING:
    from gtpo_plugin.demo.train import RLSettings


@dataclass(frozen=True)
class DemoOptions:
    """Everything that defines the runs of one seed; ``lr``/``group_size`` None take the preset's value.

    ``seed`` seeds reinforcement learning (prompts and sampling); the model is initialised and warmed
    up with ``warmup_seed``, the same for every seed of a study, as RL runs of a language model all
    start from one pretrained checkpoint. Seed-to-seed spread is then the spread of RL itself.
    """

    preset: str = "paper"
    steps: int = 24
    group_size: int | None = None
    prompts_per_step: int = 8
    seed: int = 0
    warmup_seed: int = 0
    device: str = "cpu"
    lr: float | None = None
    mini_batches: int = 2
    max_new_tokens: int = 40
    warmup_steps: int = 300
    warmup_batch_size: int = 64
    warmup_noise: float = 0.1
    warmup_lr: float = 3e-3
    eval_problems: int = 256
    algorithms: tuple[str, ...] = ("gtpo", "grpo")
    cache: str | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        unknown = [name for name in self.algorithms if name not in ALGORITHMS]
        if unknown or not self.algorithms:
            raise ValueError(f"algorithms must be names from {sorted(ALGORITHMS)}, got {list(self.algorithms)}")

    def settings(self) -> RLSettings:
        """The RL hyper-parameters of every arm: the preset's, with this run's sizes."""
        from gtpo_plugin.demo.train import RLSettings

        preset = PRESETS[self.preset]
        return RLSettings(
            steps=self.steps, group_size=self.group_size or preset.group_size, prompts_per_step=self.prompts_per_step,
            lr=self.lr if self.lr is not None else preset.lr, mini_batches=self.mini_batches,
            max_new_tokens=self.max_new_tokens, temperature=preset.temperature, reward=preset.reward,
            norm_adv_by_std=preset.norm_adv_by_std, max_grad_norm=preset.max_grad_norm, gtpo=dict(preset.gtpo),
        )
