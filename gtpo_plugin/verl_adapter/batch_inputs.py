"""What verl does not pass to estimators, for the batch being processed: a context the trainer hooks open.

Kept free of verl imports so that the trainer hooks load even when verl's registries have changed (the
start-up hooks then refuse GTPO runs, :mod:`.seam`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch


@dataclass
class GTPOBatch:
    """What verl does not pass to estimators, for one batch: ``[B, L]`` tensors row-aligned with it.

    ``metrics`` is filled by the estimator with :func:`gtpo_plugin.gtpo_metrics` of the batch.
    """

    responses: torch.Tensor
    entropy: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


_CURRENT: ContextVar[GTPOBatch | None] = ContextVar("gtpo_batch", default=None)


@contextmanager
def gtpo_batch(responses: torch.Tensor, entropy: torch.Tensor) -> Iterator[GTPOBatch]:
    """Make ``responses`` and ``entropy`` of the batch about to be processed visible to the estimator."""
    inputs = GTPOBatch(responses=responses, entropy=entropy)
    token = _CURRENT.set(inputs)
    try:
        yield inputs
    finally:
        _CURRENT.reset(token)


def current_batch() -> GTPOBatch | None:
    """The enclosing :func:`gtpo_batch`'s inputs, or None outside one."""
    return _CURRENT.get()
