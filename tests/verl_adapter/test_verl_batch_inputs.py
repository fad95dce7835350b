"""How the v1 trainer's hook hands GTPO its inputs: padded row by row, token ids narrowed to int32, fetched lazily."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("verl")
from gtpo_plugin.verl_adapter.batch_inputs import (  # noqa: E402
    GTPOBatch,
    right_padded,
    token_id_dtype,
)


def jagged(rows: list[list[float]], dtype: torch.dtype) -> torch.Tensor:
    return torch.nested.as_nested_tensor([torch.tensor(row, dtype=dtype) for row in rows], layout=torch.jagged)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float32])
def test_right_padded_equals_to_padded_tensor(dtype):
    rows = [[5, 1, 2], [], [7], [3, 3, 3, 3, 9]]
    tensor = jagged(rows, dtype)
    padded = right_padded(tensor)
    assert padded.dtype == dtype
    assert torch.equal(padded, tensor.to_padded_tensor(0))


def test_right_padded_converts_exactly_and_passes_dense_tensors_through():
    tensor = jagged([[151_935, 0, 42], [2**31 - 1]], torch.int64)
    assert torch.equal(right_padded(tensor, torch.int32).long(), tensor.to_padded_tensor(0))
    dense = torch.tensor([[1, 2], [3, 0]])
    assert torch.equal(right_padded(dense, torch.int32), dense.int())


@pytest.mark.parametrize(("ids", "expected"), [
    ([[0, 151_935], [2**31 - 1]], torch.int32),
    ([[0, 2**31]], torch.int64),
    ([[-(2**31) - 1]], torch.int64),
    ([[]], torch.int32),
])
def test_token_ids_are_narrowed_to_int32_only_when_every_id_fits(ids, expected):
    assert token_id_dtype(jagged(ids, torch.int64)) == expected


def test_other_dtypes_are_kept():
    assert token_id_dtype(torch.ones(2, 3, dtype=torch.int16)) == torch.int16


def test_a_lazy_batch_loads_when_asked_and_keeps_nothing():
    calls = []

    def load():
        calls.append(1)
        return torch.zeros(1, 2, dtype=torch.int32), torch.ones(1, 2)

    batch = GTPOBatch(load=load)
    assert not calls
    responses, entropy = batch.inputs()
    assert calls == [1] and batch.responses is None and batch.entropy is None
    assert responses.shape == entropy.shape == (1, 2)
