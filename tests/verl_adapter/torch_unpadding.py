"""flash-attn's un-padding in plain torch, for verl 0.9.0 on CPU (flash-attn is GPU-only).

verl 0.9.0 un-pads batches (``verl.workers.utils.padding.left_right_2_no_padding``) with flash-attn's
``unpad_input`` and, unlike 0.9.1, has no CPU fallback. ``use_torch_unpadding_where_verl_needs_flash_attn``
points verl's dispatcher at the same arithmetic in plain torch, in the calling process, only there.
"""

from __future__ import annotations

import importlib.util

import torch


def _unpad_input(hidden_states, attention_mask, unused_mask=None):
    """Rows of ``hidden_states`` ``[B, S, ...]`` where the mask is 1, in row-major order, with flash-attn's
    return layout (rows, their flat indices, cumulative lengths, longest length, used lengths)."""
    mask = attention_mask if unused_mask is None else attention_mask + unused_mask
    lengths = mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten()).flatten()
    cumulative = torch.nn.functional.pad(torch.cumsum(lengths, dim=0, dtype=torch.int32), (1, 0))
    rows = hidden_states.reshape(-1, *hidden_states.shape[2:])[indices]
    return rows, indices, cumulative, int(lengths.max()), attention_mask.sum(dim=-1, dtype=torch.int32)


def _pad_input(rows, indices, batch, seqlen):
    padded = rows.new_zeros(batch * seqlen, *rows.shape[1:])
    padded[indices] = rows
    return padded.view(batch, seqlen, *rows.shape[1:])


def _rearrange(*args, **kwargs):
    from einops import rearrange

    return rearrange(*args, **kwargs)


def use_torch_unpadding_where_verl_needs_flash_attn() -> None:
    """On verl 0.9.0 without flash-attn, verl's attention functions become the torch ones above."""
    import verl

    if importlib.util.find_spec("flash_attn") is not None or verl.__version__ != "0.9.0":
        return
    from verl.utils import attention_utils

    functions = (lambda rows, indices: rows[indices], _pad_input, _rearrange, _unpad_input)
    attention_utils._get_attention_functions = lambda: functions
