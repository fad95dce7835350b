"""Random and hand-made GTPO batches for the tests: lists for the naive reference, padded tensors for the core."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch

PAD = 0


@dataclass
class Batch:
    completions: list[list[int]]  # valid token ids per completion
    groups: list[str]
    scores: list[float]
    entropies: list[list[float]]  # per valid token

    @property
    def width(self) -> int:
        return max([len(c) for c in self.completions] + [1])

    def responses(self, width: int | None = None) -> torch.Tensor:
        width = width or self.width
        return torch.tensor([c + [PAD] * (width - len(c)) for c in self.completions], dtype=torch.long)

    def mask(self, width: int | None = None) -> torch.Tensor:
        width = width or self.width
        return torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in self.completions], dtype=torch.long)

    def index(self) -> np.ndarray:
        return np.array(self.groups, dtype=object)

    def token_level_rewards(self, width: int | None = None) -> torch.Tensor:
        """Outcome reward placed on the last valid token, as verl's reward managers do."""
        width = width or self.width
        rewards = torch.zeros(len(self.completions), width)
        for i, completion in enumerate(self.completions):
            rewards[i, max(len(completion) - 1, 0)] = self.scores[i]
        return rewards

    def entropy(self, width: int | None = None, padding_value: float = float("nan")) -> torch.Tensor:
        """Per-token entropy; padding holds ``padding_value`` (NaN by default: it must be ignored)."""
        width = width or self.width
        return torch.tensor([e + [padding_value] * (width - len(e)) for e in self.entropies], dtype=torch.float32)


def random_batch(rng: random.Random, *, vocab: int = 3, max_len: int = 8, max_groups: int = 4, max_group: int = 6,
                 binary_rewards: bool = True, shuffle: bool = True) -> Batch:
    """Small vocabularies make conflicts frequent; lengths include 0; groups include singletons."""
    completions, groups, scores = [], [], []
    for g in range(rng.randint(1, max_groups)):
        for _ in range(rng.randint(1, max_group)):
            length = rng.randint(0, max_len)
            completions.append([rng.randint(1, vocab) for _ in range(length)])
            groups.append(f"uid-{g}")
            scores.append(float(rng.randint(0, 1)) if binary_rewards else round(rng.uniform(-1, 1), 3))
    order = list(range(len(completions)))
    if shuffle:
        rng.shuffle(order)
    entropies = [[rng.uniform(0.0, 1.5) for _ in completions[i]] for i in order]
    return Batch([completions[i] for i in order], [groups[i] for i in order], [scores[i] for i in order], entropies)


def unpad(matrix: torch.Tensor, batch: Batch) -> list[list[float]]:
    return [matrix[i, : len(c)].tolist() for i, c in enumerate(batch.completions)]


TOOL_NAN = float("nan")


@dataclass
class TurnBatch:
    """Multi-turn completions as verl's agent loops lay them out: full rows where the model's own tokens
    (mask 1) alternate with tool or user tokens (mask 0), right-padded to a common width."""

    rows: list[list[int]]  # every token of the response: model and tool tokens, no padding
    masks: list[list[int]]  # 1 on the model's tokens, 0 on tool or user tokens
    groups: list[str]
    scores: list[float]
    entropies: list[list[float]]  # per column of ``rows``; tool columns hold garbage (NaN, negative)

    @property
    def width(self) -> int:
        return max([len(r) for r in self.rows] + [1])

    def responses(self) -> torch.Tensor:
        return torch.tensor([r + [PAD] * (self.width - len(r)) for r in self.rows], dtype=torch.long)

    def mask(self) -> torch.Tensor:
        return torch.tensor([m + [0] * (self.width - len(m)) for m in self.masks], dtype=torch.long)

    def index(self) -> np.ndarray:
        return np.array(self.groups, dtype=object)

    def token_level_rewards(self) -> torch.Tensor:
        """Outcome reward on the last token of the row, as verl's agent loop puts it (a tool token may hold it)."""
        rewards = torch.zeros(len(self.rows), self.width)
        for i, row in enumerate(self.rows):
            rewards[i, max(len(row) - 1, 0)] = self.scores[i]
        return rewards

    def entropy(self) -> torch.Tensor:
        return torch.tensor([e + [TOOL_NAN] * (self.width - len(e)) for e in self.entropies], dtype=torch.float32)


def turns(*segments: tuple[str, list[int]]) -> tuple[list[int], list[int]]:
    """A row from ``("model", ids)`` and ``("tool", ids)`` segments: (tokens, mask)."""
    row, mask = [], []
    for who, ids in segments:
        assert who in ("model", "tool")
        row += ids
        mask += [int(who == "model")] * len(ids)
    return row, mask


def random_turn_batch(rng: random.Random, *, vocab: int = 3, max_turns: int = 4, max_segment: int = 4,
                      max_groups: int = 4, max_group: int = 6, binary_rewards: bool = True) -> TurnBatch:
    """Random multi-turn rows: model and tool segments of random lengths (0 included), tool tokens from the
    same small vocabulary (so counting them would create or break conflicts), sometimes a leading tool
    segment, rows with only tool tokens, and garbage entropy on tool columns."""
    rows, masks, groups, scores, entropies = [], [], [], [], []
    for g in range(rng.randint(1, max_groups)):
        for _ in range(rng.randint(1, max_group)):
            row, mask, entropy = [], [], []
            who = rng.choice([1, 1, 1, 0])
            for _ in range(rng.randint(0, 2 * max_turns)):
                for _ in range(rng.randint(0, max_segment)):
                    row.append(rng.randint(1, vocab))
                    mask.append(who)
                    entropy.append(rng.uniform(0.0, 1.5) if who else rng.choice([TOOL_NAN, -3.0, 1e6]))
                who = 1 - who
            rows.append(row)
            masks.append(mask)
            entropies.append(entropy)
            groups.append(f"uid-{g}")
            scores.append(float(rng.randint(0, 1)) if binary_rewards else round(rng.uniform(-1, 1), 3))
    order = list(range(len(rows)))
    rng.shuffle(order)
    return TurnBatch(*([values[i] for i in order] for values in (rows, masks, groups, scores, entropies)))


def random_gtpo_options(rng: random.Random) -> dict:
    """GTPO's knobs drawn for a randomised comparison with the naive reference (filter on and off, w, γ, τ, std)."""
    return dict(
        initial_entropy=rng.choice([0.3, 0.9, math.inf]),
        amplification=rng.choice([1.0, 2.0, 3.0]),
        entropy_coef=rng.choice([0.0, 0.1, 0.5]),
        entropy_threshold=rng.choice([math.log(2), 0.5]),
        norm_adv_by_std=rng.random() < 0.7,
    )
