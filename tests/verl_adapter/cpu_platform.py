"""A CPU "accelerator" for verl, so that verl's real FSDP engine runs in a test on a machine without a GPU.

verl picks its device through ``verl.plugin.platform`` (``VERL_PLATFORM`` overrides the detection) and
registers its FSDP engine for ``cuda`` and ``npu`` only. This module stands in for the GPU and nothing else:
it registers a platform named ``cpu`` (device ``cpu``, collective backend ``gloo``, memory queries answering
0) and verl's own ``FSDPEngineWithLMHead`` for that device, offloading without pinned memory. Import it in a
fresh process whose environment has ``VERL_PLATFORM=cpu`` before verl reads its platform (verl caches it on
first use); ``start_single_process_group`` then stands in for the one-rank process group of a one-GPU job.
"""

from __future__ import annotations

import contextlib
import os
import socket
import types
from collections.abc import Iterator
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

ZERO_MEMORY = frozenset({"memory_allocated", "max_memory_allocated", "memory_reserved", "max_memory_reserved"})
NO_OP = frozenset({"empty_cache", "reset_peak_memory_stats", "ipc_collect", "set_device", "manual_seed",
                   "manual_seed_all"})


class CpuDeviceModule(types.ModuleType):
    """``torch.cpu`` plus the ``torch.cuda`` calls verl makes on its device module (memory: 0, cache: no-op,
    random state: the CPU generator's)."""

    def __getattr__(self, name: str) -> Any:
        if hasattr(torch.cpu, name):
            return getattr(torch.cpu, name)
        if name in ZERO_MEMORY:
            return lambda *args, **kwargs: 0
        if name in NO_OP:
            return lambda *args, **kwargs: None
        if name == "mem_get_info":
            return lambda *args, **kwargs: (0, 0)
        if name in {"get_rng_state", "set_rng_state"}:  # the CPU generator is the device's generator
            return getattr(torch, name)
        if name == "get_device_name":
            return lambda *args, **kwargs: "CPU"
        raise AttributeError(f"the CPU stand-in for verl's device module has no {name!r}")


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """verl's platform interface answered for the CPU (device index ``"cpu"``, so ``.to(device_id)`` works)."""

    device_name = "cpu"
    vendor_name = "cpu"
    device_module = CpuDeviceModule("verl_cpu_device")

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        return False  # never auto-detected: only VERL_PLATFORM=cpu selects it

    def current_device(self) -> Any:
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        pass

    def synchronize(self, device_index: int | None = None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str) -> Iterator[None]:
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def register_fsdp_engine_for_cpu() -> None:
    """Register verl's own FSDP language-model engine for the ``cpu`` device (verl lists cuda and npu).

    The engine offloads a forward-only model (the reference model) with FSDP2's ``CPUOffloadPolicy`` in
    pinned memory; pinning needs an accelerator, so here the policy is built unpinned (the parameters stay
    in CPU memory either way).
    """
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.fsdp import transformer_impl
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    pinned_policy = transformer_impl.CPUOffloadPolicy

    def unpinned_policy(*args: Any, **kwargs: Any) -> Any:
        return pinned_policy(*args, **{**kwargs, "pin_memory": False})

    transformer_impl.CPUOffloadPolicy = unpinned_policy

    EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device=["cpu"])(
        FSDPEngineWithLMHead)


def start_single_process_group(device: str = "cpu") -> None:
    """torch.distributed with one rank, as a Ray worker of a one-GPU job has it: gloo on CPU (verl's own
    initialisation would ask for ``cpu:gloo,cpu:gloo``, which torch refuses), verl's ``cpu:gloo,cuda:nccl``
    on a GPU."""
    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group("gloo" if device == "cpu" else "cpu:gloo,cuda:nccl", rank=0, world_size=1)


def full_weights(worker: Any) -> dict[str, torch.Tensor]:
    """An actor worker's parameters as plain tensors (world size 1: every DTensor holds its whole tensor)."""
    module = worker.actor.engine.module
    return {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
            for name, value in module.state_dict().items()}


class OneRankWorkerGroup:
    """Stands in for a ``RayWorkerGroup`` of one rank: methods go straight to the worker in this process (its
    ``@register`` wrappers, TransferQueue bridge included, still run); dispatch info is the list of ranks'."""

    def __init__(self, worker: Any):
        self.worker = worker
        self.world_size = 1
        self._dispatch_info: dict[str, list[int]] = {}

    def _query_dispatch_info(self, mesh_name: str) -> list[int]:
        return [self.worker._query_dispatch_info(mesh_name)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)
