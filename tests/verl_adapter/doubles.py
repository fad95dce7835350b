"""Stand-ins for verl's GPU workers and the rollout, shared by the verl adapter tests on CPU.

Each stands in for what verl's engine or agent loop writes, nothing more: ``Rollouts`` puts completions
into TransferQueue as the agent loop does, ``OldPolicyWorkers`` writes the log-probs and entropy the
actor's ``compute_log_prob`` writes, ``CheckpointWorkers`` records the worker group's checkpoint calls.
``verl_config`` composes verl's own Hydra config with the README's settings. Import after
``pytest.importorskip("verl")``: this module needs verl.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import torch
import transfer_queue as tq
import verl
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.v1 import PPOTrainerColocateAsync, PPOTrainerSeparateAsync, PPOTrainerSync
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
RECIPE = [  # the settings the README asks a user to change, plus what verl's validation needs on its own
    "algorithm.adv_estimator=gtpo",
    "actor_rollout_ref.actor.policy_loss.loss_mode=gtpo",
    "actor_rollout_ref.actor.use_kl_loss=false",
    "algorithm.use_kl_in_reward=false",
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
    "actor_rollout_ref.rollout.n=2",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
]
SEPARATE_ASYNC = [
    "trainer.v1.trainer_mode=separate_async", "trainer.v1.separate_async.parameter_sync_step=1",
    "data.train_batch_size=16", "actor_rollout_ref.actor.ppo_mini_batch_size=16",
    "actor_rollout_ref.rollout.nnodes=1", "actor_rollout_ref.rollout.n_gpus_per_node=1",
    "actor_rollout_ref.rollout.checkpoint_engine.backend=nccl",
]
TRAINERS = {"sync": (PPOTrainerSync, []), "colocate_async": (PPOTrainerColocateAsync,
            ["trainer.v1.trainer_mode=colocate_async"]), "separate_async": (PPOTrainerSeparateAsync, SEPARATE_ASYNC)}


def verl_config(*overrides: str, name: str = "ppo_trainer"):
    """verl's own Hydra config (ppo_trainer.yaml or ppo_megatron_trainer.yaml), composed with overrides."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(name, overrides=[*RECIPE, *overrides])


def pad_rows(rows: list[dict]):
    """``responses``, ``response_mask``, token-level rewards (the score on the last response token),
    ``entropy`` ``[B, L]``, right-padded with 0, and ``uid``; from rows with ``response``, ``mask``,
    ``entropy``, ``score`` and ``uid``."""
    width = max(len(row["response"]) for row in rows)
    pad = [width - len(row["response"]) for row in rows]
    responses = torch.tensor([row["response"] + [0] * p for row, p in zip(rows, pad, strict=True)])
    mask = torch.tensor([row["mask"] + [0] * p for row, p in zip(rows, pad, strict=True)])
    entropy = torch.tensor([row["entropy"] + [0.0] * p for row, p in zip(rows, pad, strict=True)])
    rewards = torch.zeros(mask.shape)
    last = torch.tensor([len(row["response"]) - 1 for row in rows])
    rewards[torch.arange(len(rows)), last] = torch.tensor([row["score"] for row in rows])
    return responses, mask, rewards, entropy, np.array([row["uid"] for row in rows], dtype=object)


class Rollouts:
    """Completions put into TransferQueue as verl's agent loop puts them (key ``{uid}_{session}_0``)."""

    def __init__(self, seed: int, groups: int = 3, size: int = 2):
        rng = np.random.default_rng(seed)
        self.rows = []
        for _ in range(groups):
            uid, shared = str(uuid.uuid4()), rng.integers(1, 4, size=2).tolist()
            for session in range(size):
                response = shared + rng.integers(1, 4, size=int(rng.integers(0, 5))).tolist()
                self.rows.append({
                    "key": f"{uid}_{session}_0", "uid": uid, "prompt": rng.integers(10, 20, size=3).tolist(),
                    "response": response, "mask": [1] * len(response), "score": float(rng.integers(0, 2)),
                    "entropy": rng.uniform(0.05, 1.0, size=len(response)).tolist(),
                })
        self.keys = [row["key"] for row in self.rows]

    def put(self, rollout_log_probs: bool = True) -> KVBatchMeta:
        """Put the rows; ``rollout_log_probs`` (which makes verl's advantage stage run its rollout correction) too."""
        fields, tags = [], []
        for row in self.rows:
            length = len(row["response"])
            scores = torch.zeros(length)
            scores[-1] = row["score"]
            fields.append({"uid": row["uid"], "prompts": torch.tensor(row["prompt"]),
                           "responses": torch.tensor(row["response"]),
                           "response_mask": torch.tensor(row["mask"], dtype=torch.int64), "rm_scores": scores})
            if rollout_log_probs:
                fields[-1]["rollout_log_probs"] = torch.full((length,), -0.5)
            tags.append({"status": "success", "prompt_len": 3, "response_len": length, "seq_len": 3 + length})
        return tq.kv_batch_put(keys=self.keys, partition_id="train", fields=list_of_dict_to_tensordict(fields),
                               tags=tags)

    def padded(self):
        return pad_rows(self.rows)


class OldPolicyWorkers:
    """Stands in for the actor's ``compute_log_prob``: writes ``log_probs`` and ``entropy`` over prompt+response
    tokens (left-shifted by one, verl's layout) to TransferQueue, and records what verl asked for."""

    def __init__(self, rollouts: Rollouts):
        self.rollouts = rollouts
        self.extra_info: dict = {}

    def compute_log_prob(self, batch: KVBatchMeta) -> KVBatchMeta:
        self.extra_info = dict(batch.extra_info)
        rows = {row["key"]: row for row in self.rollouts.rows}
        log_probs, entropy = [], []
        for key in batch.keys:
            response = torch.tensor(rows[key]["entropy"])
            log_probs.append(torch.cat([torch.zeros(2), torch.full(response.shape, -0.4), torch.zeros(1)]))
            entropy.append(torch.cat([torch.zeros(2), response, torch.zeros(1)]))

        def nested(rows_):
            return torch.nested.as_nested_tensor(rows_, layout=torch.jagged)

        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id,
                        fields=TensorDict({"log_probs": nested(log_probs), "entropy": nested(entropy)},
                                          batch_size=len(batch)))
        return batch

    # separate_async keeps pi_old in CPU memory between mini-batches; nothing to keep here
    def save_model_to_cpu(self, index):
        pass

    def restore_model_from_cpu(self, index):
        pass

    def clear_cpu_model(self, index):
        pass


def advantages_in_queue(keys) -> torch.Tensor:
    return tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages"])["advantages"] \
        .to_padded_tensor(0.0)


class CheckpointWorkers:
    """Stands in for the actor worker group's checkpoint calls."""

    def __init__(self):
        self.loaded: list[str] = []

    def save_checkpoint(self, local_path, *args, **kwargs):
        os.makedirs(local_path, exist_ok=True)

    def load_checkpoint(self, local_path, *args, **kwargs):
        self.loaded.append(local_path)
