"""The arms a study compares: GRPO, GTPO, GTPO with every part off (the null test), and GTPO's ablations.

verl-free, so that the command line can list them without importing verl.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ALGORITHMS", "Algorithm"]


@dataclass(frozen=True)
class Algorithm:
    """How verl is told to run one arm of a study: its advantage estimator, policy loss and GTPO knobs.

    ``gtpo`` overrides the preset's GTPO knobs for this arm (an ablation turns one part off).
    """

    name: str
    adv_estimator: str
    loss_mode: str
    gtpo: tuple[tuple[str, Any], ...] = ()
    about: str = ""


# Each arm as a verl user selects it. Everything else (preset, loss aggregation, clip range, optimizer,
# data, seeds) is shared, so arms differ only by the algorithm. verl's "vanilla" loss differs from the
# plugin's "gtpo" loss only by dual-clip (a bound of 3 on the ratio of negative-advantage tokens), which
# the run logs as actor/pg_clipfrac_lower.
ALGORITHMS = {
    "gtpo": Algorithm("gtpo", "gtpo", "gtpo", about="GTPO, every part on"),
    "grpo": Algorithm("grpo", "grpo", "vanilla", about="verl's GRPO (estimator grpo, loss vanilla)"),
    "null": Algorithm("null", "gtpo", "gtpo", (("entropy_coef", 0.0), ("entropy_threshold", math.inf),
                                                 ("conflict_mode", "none")),
                      about="GTPO with every part off (gamma 0, no filter, no conflicts): GRPO's advantages"),
    "w1": Algorithm("w1", "gtpo", "gtpo", (("amplification", 1.0),), about="no amplification (w = 1)"),
    "gamma0": Algorithm("gamma0", "gtpo", "gtpo", (("entropy_coef", 0.0),), about="no entropy penalty (gamma = 0)"),
    "nofilter": Algorithm("nofilter", "gtpo", "gtpo", (("entropy_threshold", math.inf),),
                          about="no entropy filter (tau = inf)"),
    "noconflict": Algorithm("noconflict", "gtpo", "gtpo", (("conflict_mode", "none"),),
                            about="no conflict handling (mode none)"),
    "any": Algorithm("any", "gtpo", "gtpo", (("conflict_mode", "any"),), about="conflict mode any"),
}
