"""Regimes of the demo's task in which GTPO's mechanisms have something to act on; verl-free.

A regime is a documented preset of the task and run sizes (``DemoOptions`` fields), never a code path
of the algorithm: every arm of a study runs the same regime. Explicit command-line options override
the regime's values. Sizes were measured on the shared warm-up (seed 0); see docs/ab-testing.md.

- ``default``: the demo: the shipped warm-up of 1,500 steps (greedy accuracy 0.93 and pass@1 about 0.5 at
  the start of RL), 24 RL steps of 8 prompts.
- ``format-fragile``: the warm-up stops at 50 steps, so RL starts with the format half learned
  (sampled format accuracy ~0.65) and ⟨H⟩_ini ≈ 1.4 > τ (so GTPO's filter stays off, as the spec
  says for a model that starts uncertain). Conflict tokens (the format tags above all) still carry
  gradient for GRPO to push down.
- ``negative-heavy``: problems of 6 or 7 operands instead of 4 to 6 (the warm-up is the default's),
  so sampled accuracy starts at ~0.06 and ~60% of groups hold no right answer: most completions of a
  group are wrong and negative advantages dominate. Completions get up to 44 tokens.
- ``long``: the default task for 200 RL steps; run it at ``--lr`` 3e-4 (the default) and at rates
  between that and 3e-3 (where both arms collapsed within 3 steps, docs/stress).

The three non-default regimes train 200 RL steps of 2 prompts × 8 completions (a quarter of the
default's prompts per step, one group per mini-batch, so that 8 seeds × 3 arms fit a shared 2-core
machine; the authors train one prompt per step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["REGIMES", "Regime"]

LONG_RUN = {"steps": 200, "prompts_per_step": 2}


@dataclass(frozen=True)
class Regime:
    """A named set of ``DemoOptions`` values; ``about`` says what it changes and why."""

    name: str
    about: str
    options: dict[str, Any] = field(default_factory=dict)


REGIMES = {
    "default": Regime("default", "the task learned (1500 warm-up steps, shipped), 24 RL steps"),
    "format-fragile": Regime("format-fragile", "50 warm-up steps: RL starts at ~65% sampled format accuracy",
                             {**LONG_RUN, "warmup_steps": 50}),
    "negative-heavy": Regime("negative-heavy", "6-7 operands: ~6% sampled accuracy, most groups all wrong",
                             {**LONG_RUN, "min_operands": 6, "max_operands": 7, "max_new_tokens": 44}),
    "long": Regime("long", "the default task for 200 RL steps (vary --lr)", dict(LONG_RUN)),
}
