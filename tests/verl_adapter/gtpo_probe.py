"""A probe of a ``main_ppo`` run: what GTPO read, and the tokens of verl's validation, saved for a test.

Loaded by ``fsdp_fit_run.py --probe DIR`` through verl's ``VERL_USE_EXTERNAL_MODULES``; it observes and changes
nothing (each wrapper returns what it wraps returned), in the trainer's process:
- where the GTPO adapter hands the estimator a batch's ``responses`` and ``entropy`` from TransferQueue in the
  advantage stage (``trainer_hooks._load_inputs``), it fetches the same batch's ``prompts`` and
  ``response_mask`` beside them and saves all four as ``DIR/batch_<k>.pt`` (``k`` = 1, 2, ... in the run's
  order);
- where verl's validation reads the prompts and responses it decodes (TransferQueue's ``kv_batch_get`` of
  ``["prompts", "responses"]`` in the partition ``val``), it saves them as ``DIR/validation_<k>.pt``.
Each file holds one tensor a row, unpadded.
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
VALIDATION_FIELDS = ["prompts", "responses"]


def rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    return [row.detach().clone() for row in tensor.unbind(0)]


def record(hooks: ModuleType) -> None:
    fetch = hooks._load_inputs
    saved = 0

    @functools.wraps(fetch)
    def fetch_and_record(batch: Any, *args: Any) -> Any:
        nonlocal saved
        result = fetch(batch, *args)
        data = hooks.tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=list(FIELDS))
        saved += 1
        torch.save({field: rows(data[field]) for field in FIELDS}, Path(DIRECTORY) / f"batch_{saved}.pt")
        return result

    hooks._load_inputs = fetch_and_record


def record_validation(tq: ModuleType) -> None:
    get = tq.kv_batch_get
    saved = 0

    @functools.wraps(get)
    def get_and_record(*args: Any, **kwargs: Any) -> Any:
        nonlocal saved
        data = get(*args, **kwargs)
        if kwargs.get("partition_id") == "val" and kwargs.get("select_fields") == VALIDATION_FIELDS:
            saved += 1
            torch.save({field: rows(data[field]) for field in VALIDATION_FIELDS},
                       Path(DIRECTORY) / f"validation_{saved}.pt")
        return data

    tq.kv_batch_get = get_and_record


if DIRECTORY:
    Path(DIRECTORY).mkdir(parents=True, exist_ok=True)
    after_import("gtpo_plugin.verl_adapter.trainer_hooks", record)
    after_import("transfer_queue", record_validation)
