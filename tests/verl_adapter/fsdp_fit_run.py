"""verl's ``PPOTrainer.fit()`` on CPU with the smoke recipe's own resolved config: the smoke run without a GPU.

Run by ``test_verl_fit_cpu.py`` in a fresh process, once per smoke-recipe run::

    VERL_PLATFORM=cpu python fsdp_fit_run.py SMOKE_DIR/configs/gtpo_first.yaml
    python fsdp_fit_run.py --device cuda SMOKE_DIR/configs/gtpo_first.yaml     # scripts/gpu_check.sh, on a GPU

The config is one that ``DRY_RUN=1 bash recipes/run_smoke_1gpu.sh`` printed (model, parquet data, rewards,
checkpoint and resume settings, the metrics file); only the settings a CPU cannot take are changed (FSDP2;
``sdpa`` attention instead of flash-attn's, as on a GPU without flash-attn). The recipes' packed layout
(``use_remove_padding=true``) stays. What runs is verl's: ``fit()`` and everything it calls (the dataset and
dataloader, the replay buffer, TransferQueue, ``AgentLoopManagerTQ`` and its agent-loop workers as Ray actors,
the single-turn agent loop, the LLM client and its load balancer, the reward loop workers with the recipe's
reward function, the FSDP actor and reference workers, checkpoints, the file logger, the plugin's hooks).
What stands in:
- the GPU: ``cpu_platform`` (the FSDP workers run in this process, world size 1, behind a one-rank stand-in
  for their Ray worker group); on verl 0.9.0, flash-attn's un-padding by the same arithmetic in torch
  (``torch_unpadding``);
- vLLM: ``HFRolloutServer``, a Ray actor answering the LLM client's ``generate`` with ``transformers``'
  ``generate`` (temperature, top-p, top-k, stop at end-of-sequence, the response budget as vLLM computes it);
- the weight transfer from the actor to vLLM (``CheckpointEngineManager``): ``WeightSync`` copies the actor's
  full weights into that server at the same moments (after loading a checkpoint and after every step).
With ``--device cuda`` the platform is verl's own CUDA one and only ``attn_implementation=sdpa`` is set
(no flash-attn there): FSDP as the recipe sets it, bf16 autocast, the packed layout; the rollout server
generates on the GPU; the other stand-ins are the same.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import ray

# settings a CPU cannot take: FSDP1's sync_module_states needs a GPU; flash-attention too (nor has the GPU check)
SDPA = {"actor_rollout_ref.model.override_config.attn_implementation": "sdpa"}
OVERRIDES = {
    "cpu": {"actor_rollout_ref.actor.strategy": "fsdp2", "actor_rollout_ref.ref.strategy": "fsdp2", **SDPA},
    "cuda": SDPA,
}
# Ray's logical CPUs: TransferQueue's 8 storage units, agent-loop and reward workers each reserve one
RAY_LOGICAL_CPUS = 16


@ray.remote(num_cpus=0)
class HFRolloutServer:
    """Stands in for one vLLM replica: ``generate`` with vLLM's signature and ``TokenOutput``."""

    def __init__(self, model_path: str, prompt_length: int, response_length: int, seed: int, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(model_path, attn_implementation="eager",
                                                          dtype=torch.float32).eval().to(device)
        self.eos_token_id = AutoTokenizer.from_pretrained(model_path).eos_token_id
        self.prompt_length, self.response_length = prompt_length, response_length
        torch.manual_seed(seed)  # transformers' sampling draws from torch's global generator
        self.global_steps: int | None = None

    def update_weights(self, weights: dict, global_steps: int) -> None:
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


class WeightSync:
    """Stands in for verl's ``CheckpointEngineManager``: the trainer's calls, the actor's weights to the server."""

    def __init__(self, actor_worker: Any, server: Any):
        self.actor_worker, self.server = actor_worker, server

    def update_weights(self, global_steps: int) -> None:
        import cpu_platform

        ray.get(self.server.update_weights.remote(cpu_platform.full_weights(self.actor_worker), global_steps))

    def sleep_replicas(self) -> None:
        pass  # nothing to free on CPU


def load_balancer(servers: dict[str, Any]) -> Any:
    """verl's global load balancer over ``servers``, built as its ``LLMServerManager`` builds it."""
    try:
        from verl.workers.rollout.router import get_router_handle
    except ImportError:  # verl 0.9.0: the balancer class lives in llm_server and is made a Ray actor there
        from verl.workers.rollout.llm_server import GlobalRequestLoadBalancer

        return ray.remote(GlobalRequestLoadBalancer).remote(servers=servers)
    return get_router_handle(servers=servers)


def load_config(path: Path, device: str = "cpu"):
    from omegaconf import OmegaConf, open_dict

    config = OmegaConf.load(path)
    with open_dict(config):
        for key, value in OVERRIDES[device].items():
            OmegaConf.update(config, key, value, force_add=True)
        config.transfer_queue.enable = True  # as verl's TaskRunnerV1.run sets it
    return config


def parse_args(argv: list[str] | None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="a config that DRY_RUN=1 bash recipes/run_smoke_1gpu.sh printed")
    parser.add_argument("--device", choices=sorted(OVERRIDES), default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (os.environ.get("VERL_PLATFORM") == "cpu") != (args.device == "cpu"):
        raise SystemExit("run with VERL_PLATFORM=cpu exactly when --device is cpu: verl must take the CPU stand-in "
                         "platform on CPU and its own on a GPU")
    sys.path.insert(0, str(Path(__file__).parent))
    import cpu_platform
    from torch_unpadding import use_torch_unpadding_where_verl_needs_flash_attn

    if args.device == "cpu":
        cpu_platform.register_fsdp_engine_for_cpu()
    else:  # verl's rollout server actors get no GPU of their own from Ray: keep the GPU visible to them
        os.environ["RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"] = "1"
    cpu_platform.start_single_process_group(args.device)
    use_torch_unpadding_where_verl_needs_flash_attn()

    import transfer_queue as tq
    from verl.experimental.reward_loop import RewardLoopManager
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ, get_trainer_cls
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.rollout.llm_server import LLMServerClient

    config = load_config(args.config, args.device)
    os.environ.update({key: str(value) for key, value in config.ray_kwargs.ray_init.runtime_env.env_vars.items()})
    Path(os.environ["VERL_FILE_LOGGER_PATH"]).parent.mkdir(parents=True, exist_ok=True)  # as the recipe does
    # Ray's workers (agent loop, reward loop, rollout server) detect verl's platform as usual
    ray.init(num_cpus=RAY_LOGICAL_CPUS, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"VERL_PLATFORM": "", "PYTHONPATH": os.pathsep.join(sys.path),
                                       "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}})
    tq.init(config.transfer_queue)
    try:
        trainer = get_trainer_cls(config.trainer.v1.trainer_mode)(config=config)
        # trainer.init() without its Ray worker groups and vLLM replicas: the same steps, in the same order
        trainer._init_tokenizer()
        trainer._init_dataloader()
        trainer._init_dump_executor()
        trainer._init_resource_pool_mgr()
        trainer.ref_in_actor = False
        actor = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor")
        actor.init_model()
        trainer.actor_rollout_wg = cpu_platform.OneRankWorkerGroup(actor)
        if trainer.use_reference_policy:
            reference = ActorRolloutRefWorker(config.actor_rollout_ref, role="ref")
            reference.init_model()
            trainer.ref_policy_wg = cpu_platform.OneRankWorkerGroup(reference)
        trainer.reward_loop_manager = RewardLoopManager(config=config, rm_resource_pool=None)
        trainer.teacher_model_manager, trainer.distillation_config = None, None
        rollout = config.actor_rollout_ref.rollout
        server = HFRolloutServer.remote(config.actor_rollout_ref.model.path, rollout.prompt_length,
                                        rollout.response_length, seed=config.data.get("seed") or 0,
                                        device=args.device)
        trainer.checkpoint_manager = WeightSync(actor, server)
        trainer._load_checkpoint()
        trainer.on_init_end()

        client = LLMServerClient(config=config, load_balancer_handle=load_balancer({"hf-0": server}))
        agent_loop_manager = AgentLoopManagerTQ.create(config=config, llm_client=client, teacher_client=None,
                                                       reward_loop_worker_handles=trainer.get_reward_handles())
        trainer.fit(agent_loop_manager)
        trainer.logger.finish(exit_code=0)
    finally:
        tq.close()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
