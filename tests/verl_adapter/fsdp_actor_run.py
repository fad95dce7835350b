"""GTPO steps of verl's v1 trainer stages with verl's real FSDP actor on CPU, on chosen completions, in fp32.

Run by ``test_verl_fsdp_actor_cpu.py`` in a fresh process (verl's platform and torch.distributed are
process-wide)::

    VERL_PLATFORM=cpu python fsdp_actor_run.py --model DIR --run-dir DIR --steps 3 --save-step 2
    VERL_PLATFORM=cpu python fsdp_actor_run.py --model DIR --run-dir DIR --steps 1 --remove-padding

The first layout is padded (``use_remove_padding=false``, eager attention); ``--remove-padding`` is the
recipes' (``use_remove_padding=true``: verl packs the batch into one row and cuts the entropy back out per
token) with ``sdpa`` attention, as on a GPU without flash-attn.

What is real: verl's ``ActorRolloutRefWorker`` (FSDP2 engine: log-probabilities, entropy, the update with the
policy loss ``gtpo``, checkpoints), verl's TransferQueue, the agent loop's own ``_agent_loop_postprocess``
that writes completions to it, the trainer's stages ``_compute_old_log_prob``, ``_compute_advantage``,
``_update_actor``, ``_save_checkpoint`` and ``_load_checkpoint``.
What stands in: the GPU (``cpu_platform``), and vLLM: completions are fixed texts in the paper's format
(right and wrong answers, missing tags, one multi-turn completion whose tool tokens are masked out), so the
groups share the format-tag tokens GTPO's conflict handling is about (sampling from the random tiny model
would give none; ``fsdp_fit_run.py`` samples); rewards are ``compute_paper_score``. The worker is called in
this process instead of through Ray (world size 1).

After every step the batch as TransferQueue holds it (padded) and the step's metrics are saved to
``<run-dir>/steps/step_<N>.pt``; after the last step the actor's full weights to ``<run-dir>/final_weights.pt``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import uuid
from pathlib import Path

GTPO = ["algorithm.adv_estimator=gtpo", "actor_rollout_ref.actor.policy_loss.loss_mode=gtpo",
        "actor_rollout_ref.actor.use_kl_loss=false"]
PROMPTS_PER_STEP = 2
COMPLETIONS_PER_PROMPT = 4
TEMPERATURE = 0.9
LEARNING_RATE = 1e-3
# fp32 in forward and backward (verl's default is bf16 there), so that the references can be exact
FP32 = "++actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the tiny model's folder")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3, help="train until this global step")
    parser.add_argument("--save-step", type=int, default=2, help="save a checkpoint after this step")
    parser.add_argument("--resume-from", type=Path, help="a global_step_<N> folder to resume from")
    parser.add_argument("--remove-padding", action="store_true",
                        help="use_remove_padding=true with sdpa attention (default: padded, eager)")
    return parser.parse_args(argv)


def verl_config(args: argparse.Namespace, checkpoints: Path):
    import verl
    from hydra import compose, initialize_config_dir

    overrides = [
        *GTPO, FP32,
        "algorithm.use_kl_in_reward=false", "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
        "actor_rollout_ref.actor.strategy=fsdp2",
        f"actor_rollout_ref.model.path={args.model}",
        f"actor_rollout_ref.model.use_remove_padding={str(args.remove_padding).lower()}",
        f"+actor_rollout_ref.model.override_config.attn_implementation={'sdpa' if args.remove_padding else 'eager'}",
        f"actor_rollout_ref.rollout.n={COMPLETIONS_PER_PROMPT}", f"actor_rollout_ref.rollout.temperature={TEMPERATURE}",
        "actor_rollout_ref.rollout.calculate_log_probs=false",
        f"data.train_batch_size={PROMPTS_PER_STEP}", f"actor_rollout_ref.actor.ppo_mini_batch_size={PROMPTS_PER_STEP}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        f"actor_rollout_ref.actor.optim.lr={LEARNING_RATE}",
        f"trainer.default_local_dir={checkpoints}",
        *(["trainer.resume_mode=resume_path", f"trainer.resume_from_path={args.resume_from}"] if args.resume_from
          else ["trainer.resume_mode=disable"]),
        "trainer.n_gpus_per_node=1", "trainer.nnodes=1",
    ]
    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def completion_texts(a: int, b: int) -> list[list[str]]:
    """Four completions of ``a + b`` as (assistant, tool, assistant, ...) text parts: right, wrong, no answer
    tags, and a multi-turn one whose middle part is a tool's reply (masked out of the loss)."""
    right, wrong = a + b, a + b + 1
    return [
        [f"<reasoning>\n{a} + {b} = {right}\n</reasoning>\n<answer>\n{right}\n</answer>"],
        [f"<reasoning>\n{a} + {b} = {wrong}\n</reasoning>\n<answer>\n{wrong}\n</answer>"],
        [f"<reasoning>\n{a} plus {b}\n</reasoning>\n{right}"],
        [f"<reasoning>\n{a} + {b}", f"\ntool: {right}\n", f"</reasoning>\n<answer>\n{right}\n</answer>"],
    ]


def put_completions(step: int, tokenizer) -> list[str]:
    """Write this step's completions to TransferQueue through verl's agent-loop post-processing; their keys."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

    from gtpo_plugin.reward import compute_paper_score
    from gtpo_plugin.smoke.problems import problem_text

    # the agent loop worker without its Ray actor and servers: no processor (text only), no reward loop
    # (scores come with the outputs), no distillation teacher
    loop_worker = object.__new__(AgentLoopWorkerTQ.__ray_actor_class__)
    loop_worker.processor, loop_worker.reward_loop_worker_handles, loop_worker.distillation_enabled = None, None, False
    keys = []
    for index in range(PROMPTS_PER_STEP):
        a, b = 10 * step + index, 3 + index
        uid = str(uuid.UUID(int=1000 * step + index))
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": problem_text(a, b)}],
                                               add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        for session, parts in enumerate(completion_texts(a, b)):
            response_ids, response_mask = [], []
            for turn, part in enumerate(parts):
                ids = tokenizer.encode(part, add_special_tokens=False)
                response_ids += ids
                response_mask += [1 if turn % 2 == 0 else 0] * len(ids)
            response_ids.append(tokenizer.eos_token_id)
            response_mask.append(1)
            text = "".join(parts[::2])
            score = compute_paper_score("smoke", text, str(a + b))["score"]
            output = AgentLoopOutput(prompt_ids=prompt_ids, response_ids=response_ids, response_mask=response_mask,
                                     reward_score=score, num_turns=2 + len(parts) - 1, metrics=AgentLoopMetrics(),
                                     extra_fields={})
            asyncio.run(loop_worker._agent_loop_postprocess(output, validate=False, uid=uid, session_id=session,
                                                            global_steps=step))
            keys.append(f"{uid}_{session}_0")
    return keys


def batch_in_queue(keys: list[str]) -> dict:
    """What TransferQueue holds for ``keys`` after the advantage stage, right-padded with 0, with the lengths."""
    import transfer_queue as tq

    fields = ["prompts", "responses", "response_mask", "rm_scores", "entropy", "old_log_probs", "advantages"]
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
    padded = {name: data[name].to_padded_tensor(0) for name in fields}
    padded["prompt_length"] = data["prompts"].offsets().diff()
    padded["response_length"] = data["responses"].offsets().diff()
    uid = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["uid"])["uid"]
    padded["uid"] = [str(value) for value in uid]
    return padded


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("VERL_PLATFORM") != "cpu":
        raise SystemExit("run with VERL_PLATFORM=cpu: verl must take the CPU stand-in platform")
    sys.path.insert(0, str(Path(__file__).parent))
    import cpu_platform  # registers the platform before verl reads it
    from torch_unpadding import use_torch_unpadding_where_verl_needs_flash_attn

    cpu_platform.register_fsdp_engine_for_cpu()
    cpu_platform.start_single_process_group()
    use_torch_unpadding_where_verl_needs_flash_attn()

    import ray
    import torch
    import transfer_queue as tq
    from omegaconf import OmegaConf
    from torchdata.stateful_dataloader import StatefulDataLoader
    from transfer_queue import KVBatchMeta
    from transformers import AutoTokenizer
    from verl.trainer.ppo.v1 import PPOTrainerSync
    from verl.workers.engine_workers import ActorRolloutRefWorker

    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "steps").mkdir(exist_ok=True)
    checkpoints = args.run_dir / "checkpoints"
    config = verl_config(args, checkpoints)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    trainer = PPOTrainerSync(config)  # the plugin's start-up checks run here, as in verl's main_ppo
    trainer.actor_rollout_wg = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor")
    trainer.actor_rollout_wg.init_model()
    # checkpoints hold the dataloader's position; this run feeds its own completions, so any loader will do
    trainer.train_dataloader = StatefulDataLoader(list(range(8)), batch_size=PROMPTS_PER_STEP)
    trainer._load_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    for step in range(trainer.global_steps + 1, args.steps + 1):
        trainer.global_steps = step
        metrics: dict = {}
        keys = put_completions(step, tokenizer)
        batch = KVBatchMeta(partition_id="train", keys=keys, tags=[{"status": "success"}] * len(keys))
        batch = trainer._compute_old_log_prob(batch, metrics)
        batch = trainer._compute_advantage(batch, metrics)
        queued = batch_in_queue(keys)
        batch = trainer._update_actor(batch, metrics)
        if step == args.save_step or step == args.steps:
            trainer._save_checkpoint()
        algorithm = OmegaConf.to_container(trainer.config.algorithm, resolve=True)
        torch.save({"batch": queued, "metrics": metrics, "algorithm": algorithm},
                   args.run_dir / "steps" / f"step_{step}.pt")
        tq.kv_clear(keys=keys, partition_id="train")
    torch.save(cpu_platform.full_weights(trainer.actor_rollout_wg), args.run_dir / "final_weights.pt")
    tq.close()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
