"""A probe of what GTPO read in a ``main_ppo`` run: each batch's tokens and entropy, written where a test reads them.

Loaded by ``fsdp_fit_run.py --probe DIR`` through verl's ``VERL_USE_EXTERNAL_MODULES``. In the process where
the GTPO adapter fetches a batch's ``responses`` and ``entropy`` from TransferQueue for the advantage stage
(``trainer_hooks._fetch_responses_and_entropy``), it fetches the same batch's ``prompts`` and ``response_mask``
beside them and saves all four as ``DIR/batch_<k>.pt`` (``k`` = 1, 2, ... in the run's order), one tensor a
row, unpadded. What GTPO receives is unchanged: the probe returns the adapter's own result.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from after_import import after_import

DIRECTORY = os.environ.get("GTPO_PROBE_DIR")
FIELDS = ("prompts", "responses", "response_mask", "entropy")


def rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    return [row.detach().clone() for row in tensor.unbind(0)]


def record(hooks: ModuleType) -> None:
    fetch = hooks._fetch_responses_and_entropy
    saved = 0

    @functools.wraps(fetch)
    def fetch_and_record(batch: Any) -> Any:
        nonlocal saved
        result = fetch(batch)
        data = hooks.tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(FIELDS))
        saved += 1
        torch.save({field: rows(data[field]) for field in FIELDS}, Path(DIRECTORY) / f"batch_{saved}.pt")
        return result

    hooks._fetch_responses_and_entropy = fetch_and_record


if DIRECTORY:
    Path(DIRECTORY).mkdir(parents=True, exist_ok=True)
    after_import("gtpo_plugin.verl_adapter.trainer_hooks", record)
