"""Input checks shared by the core functions: each error names the argument and what was expected."""

from __future__ import annotations

from collections.abc import Sequence
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
    """Turn a bool/int/float ``[B, L]`` mask into ``(bool mask, valid tokens per row)``, checking right-padding.

    Valid tokens must form a leading block in every row (verl right-pads responses); a left-padded
    or holed mask would misalign the suffix comparison, so it is refused. A row is a leading block
    exactly when its count of valid tokens equals the column of its first padding slot.
    Cost: three O(B·L) passes over 1-byte data.
    """
    check_matrix("response_mask", response_mask, shape)
    mask = response_mask if response_mask.dtype == torch.bool else response_mask != 0
    flags = mask.view(torch.uint8)
    lengths = flags.sum(dim=1, dtype=torch.int32).long()
    if mask.shape[1] == 0:
        return mask, lengths
    first_padding = flags.argmin(dim=1)  # the first 0; 0 when the row is all ones
    rows = torch.arange(mask.shape[0], device=mask.device)
    block_end = torch.where(mask[rows, first_padding], mask.shape[1], first_padding)
    if not bool(torch.equal(block_end, lengths)):
        raise ValueError(
            "response_mask must be right-padded: in every row the valid tokens must form a leading block "
            "(1…1 0…0); found a valid token after padding (left-padded or holed mask)"
        )
    return mask, lengths


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
    """Σ_t H_{i,t} over valid tokens, float32 ``[B]``, after checking the entropies.

    Requires finite, non-negative values on valid tokens; padding may hold anything (verl leaves
    garbage there) and is ignored. A tiny negative value from floating-point error (> -1e-4) is
    accepted. Read without gradient. Cost: O(B·L) time, one masked copy of ``entropy`` in memory.
    """
    check_matrix("entropy", entropy, mask.shape)
    if not entropy.dtype.is_floating_point:
        raise TypeError(f"entropy must be a floating-point tensor (nats per token), got dtype {entropy.dtype}")
    masked = torch.where(mask, entropy.detach(), torch.zeros((), dtype=entropy.dtype, device=entropy.device))
    row_sums = masked.sum(dim=1, dtype=torch.float32)
    if not bool(torch.isfinite(row_sums).all()):  # NaN and inf survive the sum
        raise ValueError("entropy holds NaN or inf on valid tokens (response_mask = 1); "
                         "check the old-log-prob pass that computed it")
    if masked.numel() and float(masked.min()) < -1e-4:
        raise ValueError(f"entropy must be >= 0 on valid tokens (it is -Σ p ln p), got minimum {float(masked.min())}")
    return row_sums
