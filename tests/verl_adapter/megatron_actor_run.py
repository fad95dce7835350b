"""GTPO steps through verl's real Megatron actor on CPU, one layout (TP, PP) per run, every rank a gloo process.

Run by ``test_verl_megatron_actor_cpu.py`` under torchrun (verl's platform and megatron-core's parallel state
are process-wide)::

    VERL_PLATFORM=cpu torchrun --standalone --nproc-per-node 2 megatron_actor_run.py \\
        --model DIR --run-dir DIR --tp 2 --pp 1 --dtype float32

What is real: verl's ``ActorRolloutRefWorker`` built from ``ppo_megatron_trainer`` (Megatron engine through
mbridge, megatron-core's TP/PP layers, its pipeline schedule and distributed optimizer, verl's ``ppo_loss`` with
the policy loss ``gtpo``, Megatron checkpoints), verl's ``compute_advantage`` with the estimator ``gtpo``, the
plugin's ``gtpo_state.json``. The worker is called on every rank the way verl's legacy trainer calls it
(``left_right_2_no_padding``, then ``compute_log_prob`` / ``update_actor``), without Ray.
What stands in: the GPU (``megatron_cpu_platform``) and the rollout: the completions of ``fsdp_actor_run.py``
(right and wrong answers, missing tags, a multi-turn one with masked tool tokens).

Steps 1 to 3 train, saving a checkpoint after step 2; then the run loads that checkpoint and ⟨H⟩_ini from its
``gtpo_state.json`` into a fresh algorithm config and does step 3 again. Rank 0 saves per step
``<run-dir>/steps/step_<N>.pt`` (``resumed_3.pt`` for the repeat: batch, entropy, log-probs, advantages, metrics,
the algorithm config), the actor's weights in Hugging Face names (``weights_<N>.pt``: initial, after step 1,
final, ``weights_resumed.pt``) and the stand-ins reached (``hits_rank<R>.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

GTPO = ["algorithm.adv_estimator=gtpo", "actor_rollout_ref.actor.policy_loss.loss_mode=gtpo",
        "actor_rollout_ref.actor.use_kl_loss=false"]
PROMPTS_PER_STEP = 2
COMPLETIONS_PER_PROMPT = 4
TEMPERATURE = 0.9
LEARNING_RATE = 1e-3
CLIP_GRAD = 1.0
STEPS = 3
SAVE_STEP = 2
# megatron-core on CPU: its own layers (no Transformer Engine, no fused kernels), weights built on the host, no
# sequence parallelism (torch's norms refuse it; mbridge turns it on for TP > 1 unless told otherwise)
CPU_TRANSFORMER = {"use_cpu_initialization": "true", "sequence_parallel": "false", "attention_backend": "local",
                   "gradient_accumulation_fusion": "false", "bias_activation_fusion": "false",
                   "bias_dropout_fusion": "false", "masked_softmax_fusion": "false", "apply_rope_fusion": "false",
                   "persist_layer_norm": "false"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the tiny model's folder")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--no-resume", action="store_true", help="skip the checkpoint and the resumed step")
    return parser.parse_args(argv)


def verl_config(args: argparse.Namespace, world_size: int):
    import verl
    from hydra import compose, initialize_config_dir

    megatron = "actor_rollout_ref.actor.megatron"
    overrides = [
        *GTPO,
        "algorithm.use_kl_in_reward=false", "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        f"actor_rollout_ref.model.path={args.model}", "actor_rollout_ref.model.use_remove_padding=false",
        f"{megatron}.tensor_model_parallel_size={args.tp}", f"{megatron}.pipeline_model_parallel_size={args.pp}",
        # megatron-core 0.16.1 cannot load an fp32 model's distributed-optimizer state (it copies in place
        # into the parameters' own storage, which autograd refuses): fp32 runs use the plain optimizer
        f"{megatron}.use_distributed_optimizer={args.dtype != 'float32'}",
        f"{megatron}.sequence_parallel=false", f"{megatron}.vanilla_mbridge=true", f"{megatron}.dtype={args.dtype}",
        *(f"++{megatron}.override_transformer_config.{key}={value}" for key, value in CPU_TRANSFORMER.items()),
        f"actor_rollout_ref.rollout.n={COMPLETIONS_PER_PROMPT}", f"actor_rollout_ref.rollout.temperature={TEMPERATURE}",
        f"data.train_batch_size={PROMPTS_PER_STEP}", f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS_PER_STEP}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        f"actor_rollout_ref.actor.optim.lr={LEARNING_RATE}", "actor_rollout_ref.actor.optim.weight_decay=0",
        f"actor_rollout_ref.actor.optim.clip_grad={CLIP_GRAD}",
        f"actor_rollout_ref.actor.optim.total_training_steps={args.steps}",
        f"trainer.n_gpus_per_node={world_size}", "trainer.nnodes=1",
    ]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_megatron_trainer", overrides=overrides)


def step_batch(step: int, tokenizer):
    """This step's completions as verl's padded batch: prompts left-padded, responses right-padded."""
    import numpy as np
    import torch
    from verl import DataProto
    from verl_adapter.fsdp_actor_run import completion_texts

    from gtpo_plugin.reward import compute_paper_score
    from gtpo_plugin.smoke.problems import problem_text

    prompts, responses, masks, scores, uids = [], [], [], [], []
    for index in range(PROMPTS_PER_STEP):
        a, b = 10 * step + index, 3 + index
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem_text(a, b)}],
                                               add_generation_prompt=True, tokenize=False)
        for parts in completion_texts(a, b):
            ids, mask = [], []
            for turn, part in enumerate(parts):
                part_ids = tokenizer.encode(part, add_special_tokens=False)
                ids += part_ids
                mask += [1 if turn % 2 == 0 else 0] * len(part_ids)
            prompts.append(tokenizer.encode(prompt, add_special_tokens=False))
            responses.append([*ids, tokenizer.eos_token_id])
            masks.append([*mask, 1])
            scores.append(compute_paper_score("smoke", "".join(parts[::2]), str(a + b))["score"])
            uids.append(f"step{step}-prompt{index}")
    pad = tokenizer.pad_token_id
    prompt_width, response_width = max(map(len, prompts)), max(map(len, responses))
    size = len(prompts)
    prompt_ids = torch.full((size, prompt_width), pad)
    prompt_attention = torch.zeros(size, prompt_width, dtype=torch.long)
    response_ids = torch.full((size, response_width), pad)
    response_attention = torch.zeros(size, response_width, dtype=torch.long)
    response_mask = torch.zeros(size, response_width, dtype=torch.long)
    rewards = torch.zeros(size, response_width)
    for i, (prompt, response, mask) in enumerate(zip(prompts, responses, masks, strict=True)):
        prompt_ids[i, prompt_width - len(prompt):] = torch.tensor(prompt)
        prompt_attention[i, prompt_width - len(prompt):] = 1
        response_ids[i, : len(response)] = torch.tensor(response)
        response_attention[i, : len(response)] = 1
        response_mask[i, : len(response)] = torch.tensor(mask)
        rewards[i, len(response) - 1] = scores[i]
    attention_mask = torch.cat([prompt_attention, response_attention], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return DataProto.from_dict(
        tensors={"prompts": prompt_ids, "responses": response_ids,
                 "input_ids": torch.cat([prompt_ids, response_ids], 1), "attention_mask": attention_mask,
                 "position_ids": position_ids, "response_mask": response_mask,
                 "token_level_rewards": rewards, "token_level_scores": rewards},
        non_tensors={"uid": np.array(uids, dtype=object)},
        meta_info={"temperature": TEMPERATURE, "multi_turn": False})


def from_output_rank(value):
    """The value of the one rank that holds the worker's output (TP rank 0 of the last pipeline stage)."""
    import torch.distributed as dist

    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    held = [v for v in values if v is not None]
    assert len(held) == 1, f"expected one rank with the worker's output, got {len(held)}"
    return held[0]


def old_log_prob(worker, batch):
    """verl's legacy trainer's old-log-prob stage: per response token, log-probs and entropy (padded)."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    data = left_right_2_no_padding(batch.to_tensordict())
    tu.assign_non_tensor(data, calculate_entropy=True, compute_loss=False)
    output = worker.compute_log_prob(data)
    if output is not None:
        output = {name: no_padding_2_padding(tu.get(output, name), data).float() for name in ("log_probs", "entropy")}
    return from_output_rank(output)


def update_actor(worker, batch) -> dict:
    """verl's legacy trainer's actor update: one mini-batch of the whole batch, one epoch; the metrics."""
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    data = left_right_2_no_padding(batch.to_tensordict())
    size = len(batch)
    tu.assign_non_tensor(data, calculate_entropy=False, distillation_use_topk=False, distillation_only=False,
                         global_batch_size=size, mini_batch_size=size, epochs=1, seed=42,
                         dataloader_kwargs={"shuffle": False}, compute_loss=True)
    output = worker.update_actor(data)
    return from_output_rank(None if output is None else dict(tu.get(output, "metrics")))


def hf_weights(worker) -> dict:
    """The actor's whole weights in Hugging Face names, through mbridge's export (a collective)."""
    engine = worker.actor.engine
    return {name: tensor.detach().float().cpu().clone() for name, tensor in engine.bridge.export_weights(engine.module)}


def train_step(worker, tokenizer, algorithm: dict, step: int) -> dict:
    from verl.trainer.ppo.ray_trainer import compute_advantage

    batch = step_batch(step, tokenizer)
    statistics = old_log_prob(worker, batch)
    batch.batch["old_log_probs"] = statistics["log_probs"]
    batch.batch["entropy"] = statistics["entropy"]
    batch = compute_advantage(batch, adv_estimator="gtpo", config=algorithm)
    record = {"batch": {name: value.clone() for name, value in batch.batch.items()},
              "uid": list(batch.non_tensor_batch["uid"]), "gtpo_metrics": dict(batch.meta_info["gtpo_metrics"])}
    record["metrics"] = update_actor(worker, batch)
    record["algorithm"] = {**algorithm, "gtpo": dict(algorithm["gtpo"])}
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("VERL_PLATFORM") != "cpu":
        raise SystemExit("run with VERL_PLATFORM=cpu: verl must take the CPU stand-in platform")
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(Path(__file__).parent.parent))
    import megatron_cpu_platform
    import torch
    import torch.distributed as dist

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "steps").mkdir(exist_ok=True)
    megatron_cpu_platform.install(hits_file=args.run_dir / f"hits_rank{rank}.json")
    dist.init_process_group("gloo", rank=rank, world_size=world_size)

    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from gtpo_plugin.verl_adapter.state import load_state, save_state

    config = verl_config(args, world_size)
    worker = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor")
    worker.init_model()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    algorithm = OmegaConf.to_container(config.algorithm, resolve=True)

    def save(value, name: str) -> None:
        if rank == 0:
            torch.save(value, args.run_dir / name)

    save(hf_weights(worker), "weights_0.pt")
    checkpoint = args.run_dir / "checkpoints" / f"global_step_{SAVE_STEP}"
    for step in range(1, args.steps + 1):
        save(train_step(worker, tokenizer, algorithm, step), f"steps/step_{step}.pt")
        if step == 1:
            save(hf_weights(worker), "weights_1.pt")
        if step == SAVE_STEP and not args.no_resume:
            worker.save_checkpoint(str(checkpoint / "actor"), global_step=step)
            if rank == 0:
                save_state(algorithm, str(checkpoint))
            dist.barrier()
    save(hf_weights(worker), "weights_final.pt")

    if not args.no_resume:
        resumed = OmegaConf.to_container(config.algorithm, resolve=True)  # ⟨H⟩_ini unknown, as at a restart
        load_state(resumed, str(checkpoint))
        worker.load_checkpoint(str(checkpoint / "actor"))
        save(train_step(worker, tokenizer, resumed, SAVE_STEP + 1), f"steps/resumed_{SAVE_STEP + 1}.pt")
        save(hf_weights(worker), "weights_resumed.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
