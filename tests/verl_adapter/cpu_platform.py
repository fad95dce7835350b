"""A CPU "accelerator" for verl, so that verl's real FSDP engine runs in a test on a machine without a GPU.

verl picks its device through ``verl.plugin.platform`` (``VERL_PLATFORM`` overrides the detection) and
registers its FSDP engine for ``cuda`` and ``npu`` only. This module stands in for the GPU and nothing else:
it registers a platform named ``cpu`` (device ``cpu``, collective backend ``gloo``, memory queries answering
0, a worker's slot one of Ray's logical GPUs) and verl's own ``FSDPEngineWithLMHead`` for that device,
offloading without pinned memory. Import it in a process whose environment has ``VERL_PLATFORM=cpu`` before
verl reads its platform (verl caches it on first use): in a run of verl's own start-up, every Ray process
imports it through verl's ``VERL_USE_EXTERNAL_MODULES=cpu_platform``.

Where verl starts a worker's process group (``initialize_global_process_group_ray``, the first thing a
``TrainingWorker`` does), verl would ask torch for ``cpu:gloo,cpu:gloo`` on this platform, which torch
refuses: on the ``cpu`` platform only, it becomes plain ``gloo``, and the worker's process registers the FSDP
engine for ``cpu`` (and, on verl 0.9.0, flash-attn's un-padding in torch, ``torch_unpadding``) there.
Tests that run a worker in their own process call ``start_single_process_group`` instead, the one-rank
process group of a one-GPU job.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry
from verl.utils import distributed

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
        return "GPU"  # Ray's logical GPUs (ray.init(num_gpus=N), no device behind them): the slots verl reserves

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


@functools.cache
def register_fsdp_engine_for_cpu() -> None:
    """Register verl's own FSDP language-model engine for the ``cpu`` device (verl lists cuda and npu), once.

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


def _start_worker_on_cpu(start: Callable[..., Any]) -> Callable[..., Any]:
    """verl's ``initialize_global_process_group_ray``: where it starts a Ray worker's process group on the
    ``cpu`` platform, plain gloo and the worker's CPU stand-ins (the FSDP engine for ``cpu``; torch's
    un-padding on verl 0.9.0). A process that started its own group keeps its own stand-ins."""

    @functools.wraps(start)
    def start_on_cpu(timeout_second: int | None = None, backend: str | None = None) -> Any:
        from verl.plugin.platform import get_platform

        if get_platform().device_name != "cpu" or torch.distributed.is_initialized():
            return start(timeout_second=timeout_second, backend=backend)
        from torch_unpadding import use_torch_unpadding_where_verl_needs_flash_attn

        register_fsdp_engine_for_cpu()
        use_torch_unpadding_where_verl_needs_flash_attn()
        return start(timeout_second=timeout_second, backend="gloo")

    return start_on_cpu


def start_single_process_group() -> None:
    """torch.distributed with one rank and gloo, as a Ray worker of a one-GPU job has it (in a test that runs
    the worker in its own process)."""
    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)


def full_weights(worker: Any) -> dict[str, torch.Tensor]:
    """An actor worker's parameters as plain tensors (world size 1: every DTensor holds its whole tensor)."""
    module = worker.actor.engine.module
    return {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().clone()
            for name, value in module.state_dict().items()}


# verl's workers import the function by name (verl.workers.engine_workers): replaced before they do
distributed.initialize_global_process_group_ray = _start_worker_on_cpu(distributed.initialize_global_process_group_ray)
