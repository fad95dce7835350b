"""The CPU stand-ins verl's Megatron engine needs, so that it runs in a test on a machine without a GPU.

On top of ``cpu_platform`` (verl's platform ``cpu``, gloo), this module changes only what CPU forces:

- verl registers its Megatron engine for ``cuda`` only: the same class is registered for ``cpu``;
- mbridge builds layers with Transformer Engine's spec: megatron-core's plain-torch spec is used, and
  mbridge's Qwen2 weight names get the two norms that spec keeps as their own modules;
- verl's ``McoreEngineConfig`` accepts bf16 and fp16 only: fp32, the dtype of the exact comparisons, passes;
- verl's padded (bshd) path hands megatron-core a (b, s) padding mask that Transformer Engine reads;
  megatron-core's own attention wants the (b, 1, s, s) mask of positions it must not see;
- megatron-core 0.16.1 and mbridge call ``torch.cuda``, create tensors on ``"cuda"``, move modules and
  tensors with ``.cuda()`` and compare ``Tensor.type()`` with CUDA type names: each gets the CPU equivalent;
- verl takes a model on the CPU for an offloaded one: here the CPU is the device.

Every stand-in is a :class:`StandIn` (one function, replaced) or a :class:`ModuleCudaStandIn` (one module's
``torch.cuda`` and ``device="cuda"``), named, with the reason, in :data:`STAND_INS`. Installing checks that
the installed releases are the ones the stand-ins are written for (megatron-core 0.16.1, mbridge 0.15.1) and
that each target still holds the call it answers; a moved target fails loudly, naming the stand-in. Each
records in :data:`HITS` that it was reached, so the tests keep the list down to what is used.
"""

from __future__ import annotations

import inspect
import json
import os
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

import cpu_platform  # noqa: F401  (registers verl's platform "cpu" before verl reads it)
import torch

PINNED_VERSIONS = {"megatron-core": "0.16.1", "mbridge": "0.15.1"}
HITS: Counter[str] = Counter()


class StandInTargetMoved(RuntimeError):
    """A stand-in's target is gone or no longer does what the stand-in replaces."""


@dataclass(frozen=True)
class StandIn:
    """Replace ``module.attribute`` (an attribute path such as ``Class.method``) by ``make(original)``.

    ``expect`` is a piece of the original's source that makes the stand-in necessary (a CUDA call,
    a check); when it is gone the stand-in fails instead of silently replacing something else. ``unless``,
    when the original's source holds it, means the installed release no longer needs the stand-in (verl 0.9.1
    where 0.9.0 did): it is then left out.
    """

    name: str
    module: str
    attribute: str
    expect: str
    why: str
    make: Callable[[Any], Any]
    unless: str = ""

    def install(self) -> bool:
        """Install; False when the installed release does not need it (``unless``)."""
        owner: Any = import_module(self.module)
        *parents, leaf = self.attribute.split(".")
        for part in parents:
            owner = getattr(owner, part)
        original = getattr(owner, leaf, None)
        if original is None:
            raise StandInTargetMoved(f"stand-in {self.name!r}: {self.module}.{self.attribute} no longer exists")
        source = inspect.getsource(inspect.unwrap(original))
        if self.expect not in source:
            raise StandInTargetMoved(f"stand-in {self.name!r}: {self.module}.{self.attribute} no longer contains "
                                     f"{self.expect!r}; check whether the stand-in is still needed")
        if self.unless and self.unless in source:
            return False
        replacement = self.make(original)

        def counted(*args: Any, **kwargs: Any) -> Any:
            HITS[self.name] += 1
            return replacement(*args, **kwargs)

        counted.__wrapped__ = replacement  # type: ignore[attr-defined]
        setattr(owner, leaf, staticmethod(counted) if isinstance(inspect.getattr_static(owner, leaf),
                                                                  staticmethod) else counted)
        return True


class CudaOnCpu(types.ModuleType):
    """``torch.cuda`` as seen by one megatron-core module: the calls it makes, answered for the CPU (random
    state: the CPU generator's; device: ``cpu``; synchronisation and caches: nothing to do). Other names are
    refused, naming the module, so that a new CUDA call shows up here instead of deep in torch."""

    ANSWERS: dict[str, Callable[..., Any]] = {
        "get_rng_state": lambda *args, **kwargs: torch.get_rng_state(),
        "set_rng_state": lambda state, *args, **kwargs: torch.set_rng_state(state),
        "manual_seed": lambda seed: torch.manual_seed(seed),
        "current_device": lambda: "cpu",
        "synchronize": lambda *args, **kwargs: None,
        "empty_cache": lambda: None,
        "is_available": lambda: False,
    }

    def __init__(self, stand_in: str):
        super().__init__(f"torch.cuda for {stand_in}")
        self.stand_in = stand_in

    def __getattr__(self, name: str) -> Any:
        if name == "random":
            return self
        if name not in self.ANSWERS:
            raise AttributeError(f"stand-in {self.stand_in!r} has no CPU answer for torch.cuda.{name}")
        HITS[f"{self.stand_in}: torch.cuda.{name}"] += 1
        return self.ANSWERS[name]


FACTORIES = frozenset({"tensor", "zeros", "ones", "empty", "full", "arange"})


def _is_cuda(device: Any) -> bool:
    """``"cuda"``, ``"cuda:0"``, a CUDA ``torch.device`` or a bare device index (what CUDA calls return)."""
    if device is None:
        return False
    return isinstance(device, int) or torch.device(device).type == "cuda"


class TorchWithCudaOnCpu(types.ModuleType):
    """The ``torch`` a megatron-core module sees: torch itself, except ``torch.cuda`` and tensors its functions
    create with ``device="cuda"`` (made on the CPU)."""

    def __init__(self, stand_in: str):
        super().__init__(f"torch for {stand_in}")
        self.cuda = CudaOnCpu(stand_in)
        self.stand_in = stand_in

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        if name not in FACTORIES:
            return value

        def on_cpu(*args: Any, **kwargs: Any) -> Any:
            if _is_cuda(kwargs.get("device")):
                HITS[f"{self.stand_in}: torch.{name}(device='cuda')"] += 1
                kwargs["device"] = "cpu"
            return value(*args, **kwargs)
        return on_cpu


@dataclass(frozen=True)
class ModuleCudaStandIn:
    """Give ``module`` (which imports ``torch`` and calls ``torch.cuda`` or creates tensors on ``"cuda"`` in its
    functions) a ``torch`` that answers on the CPU; every other use of torch is untouched."""

    name: str
    module: str
    why: str

    def install(self) -> bool:
        module = import_module(self.module)
        source = inspect.getsource(module)
        if getattr(module, "torch", None) is not torch or not ("torch.cuda." in source or "'cuda'" in source
                                                               or '"cuda"' in source):
            raise StandInTargetMoved(f"stand-in {self.name!r}: {self.module} no longer calls torch.cuda through "
                                     "its module-level torch; check whether the stand-in is still needed")
        module.torch = TorchWithCudaOnCpu(self.name)  # type: ignore[attr-defined]
        return True


def check_versions() -> None:
    """The stand-ins are written against these releases; any other fails here, naming the package."""
    for package, version in PINNED_VERSIONS.items():
        installed = metadata.version(package)
        if installed != version:
            raise StandInTargetMoved(f"the Megatron CPU stand-ins are written for {package}=={version}; "
                                     f"{installed} is installed: re-check each stand-in against it")


# --- verl ------------------------------------------------------------------------------------------------------

def _register_engine_for_cpu() -> None:
    from verl.workers.engine import EngineRegistry
    from verl.workers.engine.megatron.transformer_impl import MegatronEngineWithLMHead

    EngineRegistry.register(model_type="language_model", backend="megatron", device="cpu")(MegatronEngineWithLMHead)


def _fp32_engine_config(original: Callable[..., None]) -> Callable[..., None]:
    def __post_init__(self: Any) -> None:
        wanted = self.dtype
        if wanted == "float32":
            object.__setattr__(self, "dtype", "bfloat16")
        original(self)
        object.__setattr__(self, "dtype", wanted)
    return __post_init__


def _local_attention_mask(original: Callable[..., Any]) -> Callable[..., Any]:
    """verl's bshd path gives the model a (b, s) mask, True on tokens, which Transformer Engine reads;
    megatron-core's own attention applies a given mask as is, True where a query must not see a key, and
    adds causality only when there is none: so the (b, 1, s, s) mask of padding and future keys."""
    def forward(self: Any, query: Any, key: Any, value: Any, attention_mask: Any, *args: Any, **kwargs: Any) -> Any:
        if attention_mask is not None and attention_mask.dim() == 2:
            keep = attention_mask.bool()
            length = keep.shape[1]
            future = torch.ones(length, length, dtype=torch.bool, device=keep.device).triu(diagonal=1)
            attention_mask = ~(keep[:, None, :, None] & keep[:, None, None, :]) | future
        return original(self, query, key, value, attention_mask, *args, **kwargs)
    return forward


def _resident_on_cpu(original: Callable[..., str]) -> Callable[..., str]:
    """verl takes a model on the CPU for an offloaded one and, before saving, loads it "back" into buffers
    that exist only after an offload; here the CPU is the device, so the model is resident."""
    def device_of(models: Any) -> str:
        device = original(models)
        return "cpu, resident" if device == "cpu" else device
    return device_of


def _torch_padding_helpers(original: Callable[..., Any]) -> Callable[..., Any]:
    """verl 0.9.0 takes its unpad/pad helpers from flash-attn (GPU only) unless on an NPU; its own pure-torch
    port of them (``verl.utils.npu_flash_attn_utils``, the NPU's) serves the CPU too."""
    def _get_attention_functions() -> Any:
        from verl.utils import attention_utils
        from verl.utils import npu_flash_attn_utils as helpers

        functions = (helpers.index_first_axis, helpers.pad_input, helpers.rearrange, helpers.unpad_input)
        (attention_utils._index_first_axis, attention_utils._pad_input, attention_utils._rearrange,
         attention_utils._unpad_input) = functions
        return functions
    return _get_attention_functions


# --- mbridge ---------------------------------------------------------------------------------------------------

def _local_layer_spec(original: Callable[..., Any]) -> Callable[..., Any]:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec

    def _get_transformer_layer_spec(self: Any, vp_stage: int | None = None) -> Any:
        return get_gpt_decoder_block_spec(self.config, use_transformer_engine=False, vp_stage=vp_stage)
    return _get_transformer_layer_spec


def _qwen2_local_norm_names() -> None:
    """The plain-torch spec keeps each layer's norms as modules of their own (``input_layernorm``,
    ``pre_mlp_layernorm``) where Transformer Engine fuses them into the next linear layer."""
    from mbridge.models.qwen2 import Qwen2Bridge

    Qwen2Bridge._OTHER_MAPPING = {**Qwen2Bridge._OTHER_MAPPING,
                                  "input_layernorm.weight": ["model.layers.{layer_number}.input_layernorm.weight"]}
    Qwen2Bridge._MLP_MAPPING = {**Qwen2Bridge._MLP_MAPPING, "pre_mlp_layernorm.weight": [
        "model.layers.{layer_number}.post_attention_layernorm.weight"]}


def _cpu_rng_get(original: Callable[..., Any]) -> Callable[..., Any]:
    return lambda *args, clone=False, **kwargs: torch.get_rng_state().clone() if clone else torch.get_rng_state()


def _cpu_rng_set(original: Callable[..., Any]) -> Callable[..., Any]:
    return lambda new_state, *args, **kwargs: torch.set_rng_state(new_state)


def _stays_on_cpu(kind: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """While the original runs, ``kind.cuda`` (``nn.Module`` or ``Tensor``) leaves its object on the CPU."""
    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def on_cpu(*args: Any, **kwargs: Any) -> Any:
            to_gpu = kind.cuda  # type: ignore[attr-defined]
            kind.cuda = lambda self, *cuda_args, **cuda_kwargs: self  # type: ignore[attr-defined]
            try:
                return original(*args, **kwargs)
            finally:
                kind.cuda = to_gpu  # type: ignore[attr-defined]
        return on_cpu
    return make


def _cpu_tensors_typed_as_cuda(original: Callable[..., Any]) -> Callable[..., Any]:
    """While ``original`` runs, ``Tensor.type()`` names a CPU tensor as its CUDA twin (``torch.FloatTensor``
    as ``torch.cuda.FloatTensor``): megatron-core sorts parameters into fp32 and 16-bit by these names."""
    def typed_as_cuda(*args: Any, **kwargs: Any) -> Any:
        type_of = torch.Tensor.type

        def cuda_name(self: torch.Tensor, *type_args: Any, **type_kwargs: Any) -> Any:
            name = type_of(self, *type_args, **type_kwargs)
            if type_args or type_kwargs or self.is_cuda:
                return name
            return name.replace("torch.", "torch.cuda.", 1)
        torch.Tensor.type = cuda_name  # type: ignore[method-assign,assignment]
        try:
            return original(*args, **kwargs)
        finally:
            torch.Tensor.type = type_of  # type: ignore[method-assign]
    return typed_as_cuda


RANDOM = "megatron.core.tensor_parallel.random"
STAND_INS: list[StandIn | ModuleCudaStandIn] = [
    ModuleCudaStandIn("RNG tracker", RANDOM, "CudaRNGStatesTracker seeds and reads the CUDA generator"),
    StandIn("RNG state read", RANDOM, "_get_cuda_rng_state", "torch.cuda.default_generators",
            "reads the CUDA generator's state", _cpu_rng_get),
    StandIn("RNG state write", RANDOM, "_set_cuda_rng_state", "_lazy_call",
            "sets the CUDA generator's state", _cpu_rng_set),
    ModuleCudaStandIn("gradient buffers", "megatron.core.distributed.param_and_grad_buffer",
                      "the DDP buffers for parameters and gradients are allocated on the current CUDA device"),
    ModuleCudaStandIn("optimizer", "megatron.core.optimizer.optimizer", "overflow flags and loss scale on 'cuda'"),
    StandIn("distributed optimizer dtypes", "megatron.core.optimizer.distrib_optimizer",
            "DistributedOptimizer.__init__", "'torch.cuda.BFloat16Tensor'", "sorts parameters by CUDA type names",
            _cpu_tensors_typed_as_cuda),
    StandIn("clipping dtype check", "megatron.core.optimizer.optimizer", "clip_grad_by_total_norm_fp32",
            "'torch.cuda.FloatTensor'", "asserts CUDA fp32 gradients", _cpu_tensors_typed_as_cuda),
    ModuleCudaStandIn("gradient clipping", "megatron.core.optimizer.clip_grads", "norms reduced in 'cuda' tensors"),
    ModuleCudaStandIn("pipeline schedules", "megatron.core.pipeline_parallel.schedules",
                      "the token count of a batch in a 'cuda' tensor"),
    ModuleCudaStandIn("pipeline p2p", "megatron.core.pipeline_parallel.p2p_communication",
                      "receive buffers and shape exchange on the current CUDA device"),
    ModuleCudaStandIn("rotary embedding", "megatron.core.models.common.embeddings.rotary_pos_embedding",
                      "the rotary frequencies are made on the current CUDA device"),
    ModuleCudaStandIn("megatron-core utils", "megatron.core.utils", "global buffers and norms on 'cuda'"),
    ModuleCudaStandIn("checkpoint writer", "megatron.core.dist_checkpointing.strategies.filesystem_async",
                      "synchronises the CUDA device before writing tensors"),
    ModuleCudaStandIn("checkpoint saver", "megatron.core.dist_checkpointing.strategies.state_dict_saver",
                      "agrees on the save plan in 'cuda' tensors"),
    ModuleCudaStandIn("mbridge device", "mbridge.core.util", "get_model and the PP broadcast of the weight "
                      "export allocate on torch.cuda.current_device()"),
    StandIn("model stays on CPU", "mbridge.core.bridge", "get_model", "model_module.cuda(",
            "mbridge moves the built model to the GPU", _stays_on_cpu(torch.nn.Module)),
    StandIn("tied embedding on CPU", "megatron.core.models.common.language_module.language_module",
            "LanguageModule.setup_embeddings_and_output_layer", "weight.data = weight.data.cuda()",
            "at PP > 1 the tied output layer's copy is moved to the GPU before its all-reduce with the embedding",
            _stays_on_cpu(torch.Tensor)),
    StandIn("model is resident", "verl.workers.engine.megatron.transformer_impl", "get_megatron_module_device",
            "return next(module.parameters()).device.type", "a model on the CPU is not offloaded here",
            _resident_on_cpu),
    StandIn("padding helpers without flash-attn", "verl.utils.attention_utils", "_get_attention_functions",
            "from flash_attn.bert_padding import", "verl 0.9.0 unpads batches with flash-attn's helpers",
            _torch_padding_helpers, unless="except ImportError"),
    StandIn("fp32 engine config", "verl.workers.config.engine", "McoreEngineConfig.__post_init__",
            'self.dtype in ["bfloat16", "float16"]', "verl refuses fp32, the dtype of the exact comparisons",
            _fp32_engine_config),
    StandIn("local attention mask", "megatron.core.transformer.dot_product_attention", "DotProductAttention.forward",
            "self.scale_mask_softmax(", "verl's bshd mask is Transformer Engine's (b, s); megatron-core's own "
            "attention wants (b, 1, s, s)", _local_attention_mask),
    StandIn("plain-torch layer spec", "mbridge.core.llm_bridge", "LLMBridge._get_transformer_layer_spec",
            "use_transformer_engine=True", "Transformer Engine is GPU only", _local_layer_spec),
]


def install(hits_file: str | os.PathLike[str] | None = None) -> None:
    """Install every stand-in (call once, before verl builds the engine); with ``hits_file``, write the
    stand-ins' names and :data:`HITS` there when the process exits."""
    check_versions()
    _register_engine_for_cpu()
    _qwen2_local_norm_names()
    names = [stand_in.name for stand_in in STAND_INS if stand_in.install()]
    if hits_file is not None:
        import atexit

        atexit.register(lambda: Path(hits_file).write_text(json.dumps({"stand_ins": names, "hits": dict(HITS)})))
