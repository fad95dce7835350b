"""A word-level tokenizer made in code: one token per symbol, nothing to download."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Vocab:
    """Maps the task's symbols to ids and back; ``<pad>``, ``<bos>`` and ``<eos>`` are required."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be unique")
        missing = {"<pad>", "<bos>", "<eos>"} - set(tokens)
        if missing:
            raise ValueError(f"vocabulary lacks the special token(s) {sorted(missing)}")
        self.tokens = list(tokens)
        self.ids = {token: i for i, token in enumerate(self.tokens)}
        self.pad_id = self.ids["<pad>"]
        self.bos_id = self.ids["<bos>"]
        self.eos_id = self.ids["<eos>"]

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        return [self.ids[token] for token in tokens]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> list[str]:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return [self.tokens[i] for i in values]


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists into ``(ids, attention_mask)``, both LongTensor ``[B, T]`` (prompts end aligned)."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``(ids, mask)``, both LongTensor ``[B, width]`` (verl's response layout)."""
    width = max(len(row) for row in rows) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
