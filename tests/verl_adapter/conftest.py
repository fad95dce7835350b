"""The TransferQueue fixture of the verl adapter tests (imports verl's dependencies only when used)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def transfer_queue():
    """verl's TransferQueue, in-process on a local Ray (controller and one storage unit)."""
    ray = pytest.importorskip("ray")
    tq = pytest.importorskip("transfer_queue")
    from omegaconf import OmegaConf

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    yield tq
    tq.close()
    if started:
        ray.shutdown()
