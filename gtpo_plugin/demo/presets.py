"""The two settings the demo compares GTPO and GRPO under; both algorithms always share one.

- ``paper``: the GTPO authors' setting (GTPO_SPEC, "The authors' training setting"): reward = format
  reward + correctness reward (0–20), group advantage R − mean without std division, rollout
  temperature 0.9, G = 8, w = 2, γ = 0.1, τ = ln 2. There |A_i| reaches ~15 and γ·⟨H⟩_i is a few
  percent of it.
- ``verl``: verl's GRPO default: 0/1 correctness reward, advantage divided by the group std,
  temperature 1. There γ·⟨H⟩_i weighs 5–20 times more, and in a group whose rewards are all equal
  it is the whole signal.

The authors' learning rate 1e-6 and max grad norm 0.1 are for LoRA on a 3B model over 7,500 steps;
the demo's 0.3M-parameter model trained for 24 steps uses lr 3e-4 (AdamW) and max grad norm 1.0 in
both presets, the values at which its warm-up policy moves visibly within a run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Reward, advantage normalisation, sampling temperature and optimiser settings of one setting."""

    name: str
    reward: str  # "paper" (format + correctness, 0–20) or "correctness" (0/1)
    norm_adv_by_std: bool
    temperature: float
    group_size: int = 8
    lr: float = 3e-4
    max_grad_norm: float = 1.0
    gtpo: dict[str, Any] = field(default_factory=lambda: {
        "amplification": 2.0, "entropy_coef": 0.1, "entropy_threshold": math.log(2.0), "conflict_mode": "prefix_suffix",
    })


PRESETS = {
    "paper": Preset("paper", reward="paper", norm_adv_by_std=False, temperature=0.9),
    "verl": Preset("verl", reward="correctness", norm_adv_by_std=True, temperature=1.0),
}
