"""A rollout named ``hf`` for verl: ``transformers``' ``generate`` where verl would start vLLM (no GPU, no vLLM).

Loaded in every process of a run by verl's own ``VERL_USE_EXTERNAL_MODULES=hf_rollout``, it registers the
two halves verl looks up by ``actor_rollout_ref.rollout.name``, as vLLM's do in hybrid mode:
- ``HFReplica`` (``RolloutReplicaRegistry``): ``LLMServerManager`` makes one per replica and calls its
  ``init_hybrid``; its ``launch_servers`` starts one ``HFRolloutServer`` Ray actor, the handle the LLM client
  and its load balancer send ``generate`` to. ``sleep`` frees nothing: the server holds no KV cache.
- ``HFServerAdapter`` (``get_rollout_class``): the rollout object of the hybrid actor worker. verl's naive
  checkpoint engine (``ActorRolloutRefWorker.update_weights``) hands it the actor's full weights after
  loading a checkpoint and after every step; it copies them into the server. ``resume`` and ``release``
  have nothing to move.
The server answers vLLM's ``generate`` signature with a ``TokenOutput``: temperature, top-p, top-k, stop at
end-of-sequence, the response budget as vLLM computes it, and the sampling distribution's log-probabilities.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from verl.utils.device import get_device_name
from verl.workers.rollout import base
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

NAME = "hf"


def server_name(replica_rank: int) -> str:
    return f"{NAME}_server_{replica_rank}"


class HFRolloutServer:
    """Stands in for one vLLM server: ``generate`` with vLLM's signature and ``TokenOutput``."""

    def __init__(self, model_path: str, prompt_length: int, response_length: int, seed: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = get_device_name()
        self.model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="eager",
                                                          dtype=torch.float32).eval().to(self.device)
        self.eos_token_id = AutoTokenizer.from_pretrained(model_path).eos_token_id
        self.prompt_length, self.response_length = prompt_length, response_length
        torch.manual_seed(seed)  # transformers' sampling draws from torch's global generator
        self.global_steps: int | None = None

    def update_weights(self, weights: dict, global_steps: int | None) -> None:
        self.model.load_state_dict(weights, strict=True)
        self.global_steps = global_steps

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: Any = None, video_data: Any = None, **kwargs: Any):
        import torch
        from verl.workers.rollout.replica import TokenOutput

        params = dict(sampling_params)
        max_tokens = params.get("max_tokens") or params.get("max_new_tokens") or min(
            self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        temperature = float(params.get("temperature", 1.0))
        top_k = int(params.get("top_k", -1))
        sampling = dict(do_sample=True, temperature=temperature, top_p=float(params.get("top_p", 1.0)),
                        top_k=top_k if top_k > 0 else None) if temperature > 0 else dict(do_sample=False)
        with torch.no_grad():
            output = self.model.generate(torch.tensor([prompt_ids], device=self.device), max_new_tokens=max_tokens,
                                         eos_token_id=self.eos_token_id, pad_token_id=self.eos_token_id,
                                         return_dict_in_generate=True, output_logits=True, **sampling)
        response = output.sequences[0, len(prompt_ids):].tolist()
        log_probs = None
        if params.get("logprobs"):  # of the sampling distribution: raw logits over the temperature
            scale = temperature if temperature > 0 else 1.0
            log_probs = [float(torch.log_softmax(logits[0].double() / scale, -1)[token])
                         for logits, token in zip(output.logits, response, strict=True)]
        return TokenOutput(token_ids=response, log_probs=log_probs, stop_reason="completed",
                           extra_fields={"global_steps": self.global_steps})


class HFReplica(RolloutReplica):
    """One rollout replica: one ``HFRolloutServer`` actor, visible to the device as verl's vLLM servers are."""

    async def launch_servers(self) -> None:
        from verl.plugin.platform import get_platform

        env_vars = {var: "1" for var in get_platform().ray_noset_envvars()}  # the GPU stays visible to it
        server = ray.remote(HFRolloutServer).options(
            name=server_name(self.replica_rank), num_cpus=0, runtime_env={"env_vars": env_vars},
        ).remote(self.model_config.path, self.config.prompt_length, self.config.response_length, self.config.seed)
        self.servers = [server]
        self._server_handle = server
        self._server_address = server_name(self.replica_rank)

    async def sleep(self) -> None:
        pass  # a transformers model keeps no KV cache between requests: nothing to free


class HFServerAdapter(base.BaseRollout):
    """The hybrid worker's rollout: the actor's weights, as verl's naive checkpoint engine hands them, to the
    server (sent by each replica's first rank, after every rank has gathered them)."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        world_size = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                      * self.config.pipeline_model_parallel_size)
        rank = int(os.environ["RANK"])
        self.replica_rank = rank // world_size if replica_rank == -1 else replica_rank
        self.is_leader = rank % world_size == 0

    async def resume(self, tags: list[str]) -> None:
        pass  # the server's weights and memory stay where they are

    async def release(self) -> None:
        pass

    async def update_weights(self, weights: Any, wire_format: str = "named_tensors", global_steps: int | None = None,
                             **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf rollout takes full tensors only, got wire_format={wire_format!r}")
        state = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights}
        if self.is_leader:
            await ray.get_actor(server_name(self.replica_rank)).update_weights.remote(state, global_steps)


RolloutReplicaRegistry.register(NAME, lambda: HFReplica)
base._ROLLOUT_REGISTRY[(NAME, "async")] = f"{__name__}.HFServerAdapter"  # verl's table for get_rollout_class
