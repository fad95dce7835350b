"""verl's experimental trainers (one-step-off-policy, fully async) built as their main modules build them:
their own Hydra configs composed with the README's GTPO settings, their real ``__init__`` without worker
groups or datasets. Shared by ``test_verl_experimental_trainers.py`` and ``verl_changes.py``."""

from __future__ import annotations

import os

import verl
from hydra import compose, initialize_config_dir
from verl.experimental.fully_async_policy import fully_async_trainer
from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer

FullyAsyncActor = fully_async_trainer.FullyAsyncTrainer  # the Ray actor class verl's fully_async_main starts
FullyAsyncTrainer = FullyAsyncActor.__ray_metadata__.modified_class  # the class Ray runs in the actor's process

EXPERIMENTAL = os.path.join(os.path.dirname(verl.__file__), "experimental")
CONFIGS = {  # trainer: (its config folder, its config name), as its main module composes it
    "one_step_off": ("one_step_off_policy/config", "one_step_off_ppo_trainer"),
    "fully_async": ("fully_async_policy/config", "fully_async_ppo_trainer"),
}
GTPO = [  # the README's settings for these trainers
    "algorithm.adv_estimator=gtpo",
    "actor_rollout_ref.actor.policy_loss.loss_mode=gtpo",
    "actor_rollout_ref.actor.use_kl_loss=false",
    "algorithm.use_kl_in_reward=false",
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
    "algorithm.rollout_correction.bypass_mode=false",  # both configs set true, which skips the entropy pass
]
SETUP = [  # what these trainers need on their own (their launch scripts set the same), and no wandb in tests
    "actor_rollout_ref.hybrid_engine=false",
    "actor_rollout_ref.rollout.n=2",
    "data.train_batch_size=4",
    "trainer.logger=[console]",
]


def trainer_config(trainer: str, *overrides: str, gtpo: bool = True):
    """The trainer's own Hydra config (which extends verl's ppo_trainer), composed with overrides."""
    folder, name = CONFIGS[trainer]
    # one_step_off's config names verl's configs by a path relative to verl's source tree; point Hydra at the package
    with initialize_config_dir(config_dir=os.path.join(EXPERIMENTAL, folder), version_base=None):
        return compose(name, overrides=["hydra.searchpath=[pkg://verl.trainer.config]", *SETUP,
                                        *(GTPO if gtpo else []), *overrides])


def build(trainer: str, config):
    """The trainer, built as its main module builds it (worker groups and datasets aside)."""
    if trainer == "one_step_off":
        return OneStepOffRayTrainer(config=config, tokenizer=None, role_worker_mapping={}, resource_pool_manager=None,
                                    train_dataset=list(range(8)), val_dataset=list(range(2)))
    return FullyAsyncTrainer(config=config, tokenizer=None, role_worker_mapping={}, resource_pool_manager=None)
