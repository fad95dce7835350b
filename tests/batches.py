"""Random and hand-made GTPO batches for the tests: lists for the naive reference, padded tensors for the core."""

from __future__ import annotations

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
