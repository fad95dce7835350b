"""GTPO's knobs in one typed, validated config.

The verl adapter reads these fields from ``algorithm.gtpo`` of a verl config; the core functions
take them as keyword arguments. Defaults follow the paper (arXiv 2508.03772 v5) and the authors'
public configuration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

CONFLICT_MODES = ("prefix_suffix", "any", "none")


@dataclass
class GTPOConfig:
    """GTPO hyper-parameters.

    Attributes:
        amplification: w > 1 (``>= 1`` accepted). Weight λ of a conflict token in a positively
            rewarded completion; 2.0 in the paper. In ``prefix_suffix`` mode a token in both runs
            gets w².
        entropy_coef: γ ≥ 0. Each kept completion's advantage is reduced by γ·⟨H⟩_i; 0.1 in the
            paper. Set 0 to turn the entropy penalty off.
        entropy_threshold: τ > 0 in nats. When ⟨H⟩_ini ≤ τ, completions with ⟨H⟩_i > τ are
            dropped (δ_i = 0). ln 2 is the paper's bound. ``math.inf`` turns the filter off.
        conflict_mode: ``"prefix_suffix"`` (default; the leading and trailing runs of conflict
            positions, left- and right-aligned), ``"any"`` (every conflicting position, counted
            from the start) or ``"none"`` (λ = 1 everywhere; ablation).
        initial_entropy: ⟨H⟩_ini in nats. ``None`` means "measure it on the first training batch"
            (the mean of the completions' ⟨H⟩_i), then keep it fixed; ``math.inf`` turns the
            filter off as well.
    """

    amplification: float = 2.0
    entropy_coef: float = 0.1
    entropy_threshold: float = math.log(2.0)
    conflict_mode: str = "prefix_suffix"
    initial_entropy: float | None = None

    def __post_init__(self) -> None:
        check_amplification(self.amplification)
        check_conflict_mode(self.conflict_mode)
        if not (isinstance(self.entropy_coef, (int, float)) and math.isfinite(self.entropy_coef)):
            raise ValueError(f"gtpo.entropy_coef must be a finite number, got {self.entropy_coef!r}")
        if self.entropy_coef < 0:
            raise ValueError(
                f"gtpo.entropy_coef must be >= 0 (0 turns the entropy penalty off), got {self.entropy_coef}"
            )
        if not isinstance(self.entropy_threshold, (int, float)) or math.isnan(self.entropy_threshold):
            raise ValueError(f"gtpo.entropy_threshold must be a number, got {self.entropy_threshold!r}")
        if self.entropy_threshold <= 0:
            raise ValueError(
                f"gtpo.entropy_threshold must be > 0 nats (ln 2 = 0.6931 is the paper's bound; "
                f"use inf to turn the filter off), got {self.entropy_threshold}"
            )
        if self.initial_entropy is not None:
            check_initial_entropy(self.initial_entropy)

    @classmethod
    def from_mapping(cls, values: Any) -> GTPOConfig:
        """Build from a dict-like (a plain dict or an OmegaConf node); unknown keys are an error."""
        data = dict(values.items()) if values is not None else {}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) under algorithm.gtpo: {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_amplification(amplification: float) -> None:
    if not isinstance(amplification, (int, float)) or not math.isfinite(amplification) or amplification < 1:
        raise ValueError(
            f"amplification must be a finite number >= 1 (w in the paper, default 2.0), got {amplification!r}"
        )


def check_conflict_mode(mode: str) -> None:
    if mode not in CONFLICT_MODES:
        raise ValueError(f"conflict_mode must be one of {CONFLICT_MODES}, got {mode!r}")


def check_initial_entropy(initial_entropy: float) -> None:
    if not isinstance(initial_entropy, (int, float)) or math.isnan(initial_entropy) or initial_entropy < 0:
        raise ValueError(
            f"initial_entropy must be a number >= 0 in nats (or inf to turn the filter off), got {initial_entropy!r}"
        )
