"""Input checks shared by the core functions: each error names the argument and what was expected."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

GroupIndex = np.ndarray | torch.Tensor | Sequence[Any]


def check_matrix(name: str, tensor: Any, shape: torch.Size | None = None) -> torch.Tensor:
    """Require a 2-D tensor ``[B, L]``, of ``shape`` when given."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [batch, response_length], got {type(tensor).__name__}")
    if tensor.dim() != 2:
        raise ValueError(f"{name} must have shape [batch, response_length], got {tuple(tensor.shape)}")
    if shape is not None and tensor.shape != shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)} like responses")
    return tensor


def check_token_ids(name: str, responses: Any) -> torch.Tensor:
    """Require integer token ids ``[B, L]`` (a float tensor usually means the wrong field was passed)."""
    check_matrix(name, responses)
    if responses.dtype.is_floating_point or responses.dtype.is_complex or responses.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {responses.dtype}")
    return responses


def check_response_mask(response_mask: Any, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a bool/int/float ``[B, L]`` 0/1 mask into ``(bool mask, model tokens per row)``.

    1 marks the model's own tokens; 0 marks padding and, in multi-turn completions, the tool or
    user tokens verl's agent loops place between the model's turns (holes). Any layout is accepted:
    GTPO counts positions over the model's tokens (:class:`ModelPositions`), so a leading block, a
    mask with holes and even a left-padded mask describe the same completion when they mark the
    same tokens in the same order. What is still refused, because it means a wrong field was passed:
    a tensor that is not 2-D or not shaped like ``responses``, a complex dtype, and any value other
    than 0 or 1 (verl's masks are 0/1 ints; a weight, a NaN or a count is not a mask).
    Cost: O(B·L) time: one pass to count; a non-bool mask also takes a value check and a conversion.
    """
    check_matrix("response_mask", response_mask, shape)
    if response_mask.dtype.is_complex:
        raise TypeError(f"response_mask must be bool, integer or float 0/1, got dtype {response_mask.dtype}")
    if response_mask.dtype == torch.bool:
        mask = response_mask
    else:
        if response_mask.numel() and not _only_zeros_and_ones(response_mask):
            raise ValueError("response_mask must hold only 0 and 1 (1 on the model's own tokens, 0 on padding and "
                             "tool or user tokens); found another value")
        mask = response_mask != 0
    lengths = mask.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()
    return mask, lengths


def _only_zeros_and_ones(values: torch.Tensor) -> bool:
    """One pass (min and max) for integer tensors; floats also need an equality test (0.5, NaN)."""
    if values.dtype.is_floating_point:
        return bool(((values == 0) | (values == 1)).all())
    low, high = torch.aminmax(values)
    return bool(low >= 0) and bool(high <= 1)


@dataclass
class ModelPositions:
    """Where each row's k-th model token (``response_mask`` = 1) sits among the response columns.

    GTPO counts positions over the model's own tokens (GTPO_SPEC "Completions with tokens masked
    inside"). When every row is a leading block the k-th model token is in column k and nothing is
    stored (``flat is None``), so single-turn batches pay only the layout test. Otherwise ``flat``
    lists the flat indices (row·L + column) of all model tokens, row after row, int64 ``[N]`` with
    N = Σ lengths ≤ B·L, and row i's k-th model token is ``flat[starts[i] + k]``: one pass over the
    mask (``nonzero``) and O(N) memory.
    """

    lengths: torch.Tensor
    width: int
    flat: torch.Tensor | None = None
    starts: torch.Tensor | None = None

    @classmethod
    def of(cls, mask: torch.Tensor, lengths: torch.Tensor) -> ModelPositions:
        """Positions of a checked bool ``mask`` ``[B, L]`` with its ``lengths`` ``[B]``."""
        if is_leading_block(mask, lengths):
            return cls(lengths, mask.shape[1])
        flat = mask.reshape(-1).nonzero().squeeze(1)
        return cls(lengths, mask.shape[1], flat, torch.cumsum(lengths, 0) - lengths)

    def take(self, tensor: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: entry ``[i, j]`` of ``tensor`` at row i's model token ``positions[i, j]``.

        ``positions`` is ``[B, K]`` or ``[1, K]``; entries at positions ≥ ``lengths[i]`` are
        arbitrary (the caller masks them). Cost O(B·K).
        """
        positions = positions.expand(tensor.shape[0], -1)
        if self.flat is None or self.starts is None:
            return tensor.gather(1, positions.clamp(max=max(self.width - 1, 0)))
        if self.flat.numel() == 0:
            return tensor.new_zeros(positions.shape)
        index = (self.starts[:, None] + positions).clamp_(max=self.flat.numel() - 1)
        return tensor.reshape(-1)[self.flat[index]]

    def column(self, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Columns of the model tokens at ``positions`` of ``rows`` (1-D, same length, positions in range)."""
        if self.flat is None or self.starts is None:
            return positions
        return self.flat[self.starts[rows] + positions] - rows * self.width


def is_leading_block(mask: torch.Tensor, lengths: torch.Tensor) -> bool:
    """Whether in every row the model tokens form a leading block (1…1 0…0): single-turn and right-padded.

    A row is a leading block exactly when its count of ones equals the column of its first zero.
    Cost: two O(B·L) passes over 1-byte data.
    """
    if mask.shape[1] == 0:
        return True
    first_zero = mask.view(torch.uint8).argmin(dim=1)  # 0 when the row is all ones
    rows = torch.arange(mask.shape[0], device=mask.device)
    block_end = torch.where(mask[rows, first_zero], mask.shape[1], first_zero)
    return bool(torch.equal(block_end, lengths))


def group_ids(index: GroupIndex, batch_size: int) -> torch.Tensor:
    """Map a per-row group id (verl's ``uid``: strings or ints, numpy, list or tensor) to 0..n_groups-1.

    Returns a LongTensor ``[B]`` on the CPU. Cost: O(B log B).
    """
    if isinstance(index, torch.Tensor):
        if index.dim() != 1 or index.numel() != batch_size:
            raise ValueError(f"index must be a 1-D tensor of length {batch_size} (one group id per row), "
                             f"got shape {tuple(index.shape)}")
        return torch.unique(index.cpu(), return_inverse=True)[1].long()
    array = np.asarray(index)
    if array.ndim != 1 or array.shape[0] != batch_size:
        raise ValueError(f"index must hold one group id per row: length {batch_size} expected, "
                         f"got shape {array.shape}")
    if batch_size == 0:
        return torch.zeros(0, dtype=torch.long)
    try:
        inverse = np.unique(array, return_inverse=True)[1]
    except TypeError as error:
        raise TypeError(f"index must hold comparable group ids (all str or all int), got {array.dtype}: {error}") \
            from error
    return torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def check_vector(name: str, tensor: Any, batch_size: int) -> torch.Tensor:
    """Require a 1-D float tensor ``[B]``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [batch], got {type(tensor).__name__}")
    if tensor.shape != (batch_size,):
        raise ValueError(f"{name} must have shape [{batch_size}] (one value per completion), got {tuple(tensor.shape)}")
    return tensor


def entropy_row_sums(entropy: Any, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t H_{i,t} over model tokens (``mask`` true), float32 ``[B]``, after checking the entropies.

    Requires finite, non-negative values on model tokens; padding and tool or user tokens may hold
    anything (verl leaves garbage there) and are ignored. A tiny negative value from floating-point error (> -1e-4) is
    accepted. Read without gradient. Cost: O(B·L) time, one masked copy of ``entropy`` in memory.
    """
    check_matrix("entropy", entropy, mask.shape)
    if not entropy.dtype.is_floating_point:
        raise TypeError(f"entropy must be a floating-point tensor (nats per token), got dtype {entropy.dtype}")
    masked = torch.where(mask, entropy.detach(), torch.zeros((), dtype=entropy.dtype, device=entropy.device))
    row_sums = masked.sum(dim=1, dtype=torch.float32)
    if not bool(torch.isfinite(row_sums).all()):  # NaN and inf survive the sum
        raise ValueError("entropy holds NaN or inf on the model's tokens (response_mask = 1); "
                         "check the old-log-prob pass that computed it")
    if masked.numel() and float(masked.min()) < -1e-4:
        raise ValueError(f"entropy must be >= 0 on the model's tokens (it is -Σ p ln p), "
                         f"got minimum {float(masked.min())}")
    return row_sums
