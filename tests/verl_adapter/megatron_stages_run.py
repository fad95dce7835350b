"""One GTPO step of verl's v1 trainer stages with verl's real Megatron actor on CPU (TP=1), through TransferQueue.

Run by ``test_verl_megatron_actor_cpu.py`` in a fresh process::

    VERL_PLATFORM=cpu python megatron_stages_run.py --model DIR --run-dir DIR

As ``fsdp_actor_run.py`` (the same completions written to TransferQueue by the agent loop's own
post-processing, the same trainer stages ``_compute_old_log_prob``, ``_compute_advantage``, ``_update_actor``),
with the Megatron worker of ``megatron_actor_run.py`` in place of the FSDP one. Saves ``<run-dir>/step_1.pt``:
the batch as TransferQueue holds it after the advantage stage, and the step's metrics.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if os.environ.get("VERL_PLATFORM") != "cpu":
        raise SystemExit("run with VERL_PLATFORM=cpu: verl must take the CPU stand-in platform")
    sys.path.insert(0, str(Path(__file__).parent))
    sys.path.insert(0, str(Path(__file__).parent.parent))
    import megatron_cpu_platform

    args.run_dir.mkdir(parents=True, exist_ok=True)
    megatron_cpu_platform.install(hits_file=args.run_dir / "hits_rank0.json")
    import cpu_platform

    cpu_platform.start_single_process_group()

    import ray
    import torch
    import transfer_queue as tq
    from omegaconf import OmegaConf, open_dict
    from transfer_queue import KVBatchMeta
    from transformers import AutoTokenizer
    from verl.trainer.ppo.v1 import PPOTrainerSync
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl_adapter.fsdp_actor_run import batch_in_queue, put_completions
    from verl_adapter.megatron_actor_run import verl_config

    config = verl_config(argparse.Namespace(model=args.model, tp=1, pp=1, dtype="float32", steps=1), world_size=1)
    with open_dict(config):
        config.trainer.resume_mode = "disable"
        config.trainer.default_local_dir = str(args.run_dir / "checkpoints")
        config.actor_rollout_ref.rollout.calculate_log_probs = False
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    trainer = PPOTrainerSync(config)  # the plugin's start-up checks run here, as in verl's main_ppo
    trainer.actor_rollout_wg = ActorRolloutRefWorker(config.actor_rollout_ref, role="actor")
    trainer.actor_rollout_wg.init_model()
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    trainer.global_steps = 1
    metrics: dict = {}
    keys = put_completions(1, tokenizer)
    batch = KVBatchMeta(partition_id="train", keys=keys, tags=[{"status": "success"}] * len(keys))
    batch = trainer._compute_old_log_prob(batch, metrics)
    batch = trainer._compute_advantage(batch, metrics)
    queued = batch_in_queue(keys)
    trainer._update_actor(batch, metrics)
    torch.save({"batch": queued, "metrics": metrics}, args.run_dir / "step_1.pt")
    tq.close()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
