"""What verl does not pass to estimators, for the batch being processed: a context the trainer hooks open.

Kept free of verl imports so that the trainer hooks load even when verl's registries have changed (the
start-up hooks then refuse GTPO runs, :mod:`.seam`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch

Inputs = tuple[torch.Tensor, torch.Tensor]


@dataclass
class GTPOBatch:
    """What verl does not pass to estimators, for one batch: ``[B, L]`` tensors row-aligned with it.

    Either the tensors themselves or ``load``, which fetches them when the estimator asks (:meth:`inputs`),
    so that they are not held while verl's earlier steps of the stage run. ``metrics`` is filled by the
    estimator with :func:`gtpo_plugin.gtpo_metrics` of the batch.
    """

    responses: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    load: Callable[[], Inputs] | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def inputs(self) -> Inputs:
        """``(responses, entropy)``; a lazy batch loads them now and keeps no reference to them."""
        if self.load is not None:
            return self.load()
        if self.responses is None or self.entropy is None:
            raise ValueError("GTPOBatch holds neither tensors nor a loader")
        return self.responses, self.entropy


_CURRENT: ContextVar[GTPOBatch | None] = ContextVar("gtpo_batch", default=None)


@contextmanager
def gtpo_batch(responses: torch.Tensor | None = None, entropy: torch.Tensor | None = None, *,
               load: Callable[[], Inputs] | None = None) -> Iterator[GTPOBatch]:
    """Make the inputs of the batch about to be processed visible to the estimator: ``responses`` and
    ``entropy``, or ``load`` to fetch them when the estimator runs."""
    inputs = GTPOBatch(responses=responses, entropy=entropy, load=load)
    token = _CURRENT.set(inputs)
    try:
        yield inputs
    finally:
        _CURRENT.reset(token)


def current_batch() -> GTPOBatch | None:
    """The enclosing :func:`gtpo_batch`'s inputs, or None outside one."""
    return _CURRENT.get()


def right_padded(tensor: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A jagged ``[B, *]`` tensor right-padded with 0 to ``[B, L_max]``, in ``dtype`` (a dense one: converted).

    Each row is copied straight into the result, so nothing but the result is allocated (``to_padded_tensor``
    followed by ``.to(dtype)`` holds two full-size tensors). Time O(B·L_max), memory: the result.
    """
    dtype = dtype or tensor.dtype
    if not tensor.is_nested:
        return tensor.to(dtype)
    values = tensor.values()
    if tensor.lengths() is not None or values.dim() != 1:  # type: ignore[attr-defined]  # holes, or rows of vectors
        return tensor.to_padded_tensor(0).to(dtype)
    offsets = tensor.offsets().tolist()  # type: ignore[attr-defined]
    lengths = [end - start for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
    padded = values.new_zeros((len(lengths), max(lengths, default=0)), dtype=dtype)
    for row, (start, length) in enumerate(zip(offsets[:-1], lengths, strict=True)):
        padded[row, :length] = values[start:start + length]
    return padded


def token_id_dtype(ids: torch.Tensor) -> torch.dtype:
    """int32 for int64 ``ids`` that all fit it (exact, and half the memory), else ``ids``' own dtype. O(n)."""
    values = ids.values() if ids.is_nested else ids
    if values.dtype != torch.int64:
        return values.dtype
    if values.numel():
        low, high = torch.aminmax(values)
        info = torch.iinfo(torch.int32)
        if int(low) < info.min or int(high) > info.max:
            return torch.int64
    return torch.int32
