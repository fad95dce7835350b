"""GTPO in verl's experimental trainers, on CPU: the one-step-off-policy trainer, the fully async trainer and
their base ``SeparateRayPPOTrainer`` (separation), through their real ``__init__`` (verl's own Hydra configs
for them) and their real step methods on a ``DataProto``: ``_fit_compute_reward`` → ``_fit_compute_log_prob``
→ ``_fit_compute_advantage``, plus checkpoint resume; the fully async trainer also as the Ray actor verl runs.

Only the actor's GPU worker group is replaced, by :class:`OldPolicyWorkers`, a stand-in for verl's engine in
``compute_log_prob`` that returns what the engine returns (per-token log-probs and entropy, no-padding layout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid

import numpy as np
import pytest
import torch
from helpers import METRIC_KEYS

from gtpo_plugin import compute_gtpo_advantage, compute_gtpo_terms, gtpo_metrics, mean_completion_entropy

verl = pytest.importorskip("verl")
import ray  # noqa: E402
from tensordict import TensorDict  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.separation.ray_trainer import SeparateRayPPOTrainer  # noqa: E402
from verl.trainer.ppo.ray_trainer import RayPPOTrainer, compute_advantage  # noqa: E402
from verl.trainer.ppo.utils import Role  # noqa: E402
from verl.utils import tensordict_utils as tu  # noqa: E402
from verl_adapter import torch_unpadding  # noqa: E402
from verl_adapter.doubles import CheckpointWorkers  # noqa: E402  (the checkpoint stand-in)
from verl_adapter.experimental_trainers import CONFIGS, FullyAsyncActor, build, trainer_config  # noqa: E402
from verl_adapter.torch_unpadding import use_torch_unpadding_where_verl_needs_flash_attn  # noqa: E402

from gtpo_plugin.verl_adapter.trainer_hooks import OLD_ENTROPY  # noqa: E402

# CI runs it on verl 0.9.0 too (step 2): the one-step-off and fully async trainers.
pytestmark = pytest.mark.verl_compat


class Completions:
    """A batch as the agent loop hands it to these trainers: left-padded prompts, right-padded responses,
    ``rm_scores`` (the reward on each completion's last token), ``uid``; and each response token's entropy
    under the old policy, which :class:`OldPolicyWorkers` returns."""

    def __init__(self, seed: int, groups: int = 3, size: int = 2):
        rng = np.random.default_rng(seed)
        self.rows = []
        for _ in range(groups):
            uid, shared = str(uuid.uuid4()), rng.integers(1, 4, size=2).tolist()
            for _ in range(size):
                response = shared + rng.integers(1, 4, size=int(rng.integers(0, 5))).tolist()
                self.rows.append({"uid": uid, "prompt": rng.integers(10, 20, size=int(rng.integers(2, 5))).tolist(),
                                  "response": response, "score": float(rng.integers(0, 2)),
                                  "entropy": rng.uniform(0.05, 1.0, size=len(response)).tolist()})

    def padded(self):
        """``responses``, ``response_mask``, token-level rewards, ``entropy`` ``[B, L]`` and ``uid``.

        The same as ``doubles.pad_rows``, kept here on purpose: these completions are also sent to
        a Ray actor, whose process cannot import the test modules."""
        width = max(len(row["response"]) for row in self.rows)
        pad = [width - len(row["response"]) for row in self.rows]
        responses = torch.tensor([row["response"] + [0] * p for row, p in zip(self.rows, pad, strict=True)])
        mask = torch.tensor([[1] * len(row["response"]) + [0] * p for row, p in zip(self.rows, pad, strict=True)])
        entropy = torch.tensor([row["entropy"] + [0.0] * p for row, p in zip(self.rows, pad, strict=True)])
        rewards = torch.zeros(mask.shape)
        rewards[torch.arange(len(self.rows)), mask.sum(1) - 1] = torch.tensor([row["score"] for row in self.rows])
        return responses, mask, rewards, entropy, np.array([row["uid"] for row in self.rows], dtype=object)

    def data_proto(self) -> DataProto:
        responses, response_mask, rewards, _, uid = self.padded()
        width = max(len(row["prompt"]) for row in self.rows)
        prompts = torch.tensor([[0] * (width - len(row["prompt"])) + row["prompt"] for row in self.rows])
        prompt_mask = torch.tensor([[0] * (width - len(row["prompt"])) + [1] * len(row["prompt"]) for row in self.rows])
        attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
        return DataProto.from_dict(
            tensors={"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], dim=1),
                     "attention_mask": attention_mask, "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
                     "response_mask": response_mask, "rm_scores": rewards,
                     "ref_log_prob": torch.full(responses.shape, -0.5)},  # for runs with a KL term
            non_tensors={"uid": uid})


class OldPolicyWorkers:
    """Stands in for the actor worker group's ``compute_log_prob`` (verl's engine, on GPUs): per-token
    ``log_probs`` and ``entropy`` over each unpadded prompt+response, left-shifted by one as the engine's
    output is, and the ``mfu`` metric. Records what verl asked for."""

    def __init__(self, completions: Completions):
        self.entropy = [torch.tensor(row["entropy"]) for row in completions.rows]
        self.calculate_entropy = None

    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        self.calculate_entropy = tu.get(data, "calculate_entropy")
        prompt_lengths = data["attention_mask"][:, : data["prompts"].shape[1]].sum(1).tolist()
        entropy = [torch.cat([torch.zeros(p - 1), e, torch.zeros(1)]) for p, e in zip(prompt_lengths, self.entropy,
                                                                                          strict=True)]
        log_probs = [torch.full(e.shape, -0.4) for e in entropy]
        return tu.get_tensordict({"entropy": torch.nested.as_nested_tensor(entropy, layout=torch.jagged),
                                  "log_probs": torch.nested.as_nested_tensor(log_probs, layout=torch.jagged)},
                                 non_tensor_dict={"metrics": {"mfu": 0.0}})

    # the fully async trainer computes pi_old with the weights of the cycle's first step, kept in CPU memory
    def save_model_to_cpu(self, index):
        pass

    def restore_model_from_cpu(self, index):
        pass

    def clear_cpu_model(self, index):
        pass


def advantage_step(trainer, completions: Completions) -> DataProto:
    """The part of the trainers' ``fit_step`` from the reward to the advantages, with verl's own methods."""
    trainer.actor_rollout_wg = OldPolicyWorkers(completions)
    trainer.metrics, trainer.timing_raw = {}, {}
    batch = trainer._fit_compute_reward(completions.data_proto())
    batch = trainer._fit_compute_log_prob(batch)
    return trainer._fit_compute_advantage(batch)


def expected_advantages(completions: Completions, initial_entropy: float) -> torch.Tensor:
    responses, mask, rewards, entropy, uid = completions.padded()
    advantages, _ = compute_gtpo_advantage(rewards, mask, responses, uid, entropy, initial_entropy=initial_entropy)
    return advantages


# ------------------------------------------------------------------------------------------ the advantage step


@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_advantage_step_gives_gtpo_the_old_policy_entropy_and_logs_its_metrics(trainer):
    trainer_ = build(trainer, trainer_config(trainer))
    completions = Completions(seed=len(trainer))
    batch = advantage_step(trainer_, completions)

    assert trainer_.actor_rollout_wg.calculate_entropy is True
    responses, mask, rewards, entropy, uid = completions.padded()
    measured = mean_completion_entropy(entropy, mask)
    assert trainer_.config.algorithm.gtpo.initial_entropy == pytest.approx(measured)
    torch.testing.assert_close(batch.batch["advantages"], expected_advantages(completions, measured),
                               rtol=0, atol=1e-6)
    terms = compute_gtpo_terms(rewards, mask, responses, uid, entropy, initial_entropy=measured)
    assert {key: trainer_.metrics[key] for key in METRIC_KEYS} == pytest.approx(gtpo_metrics(terms))
    assert OLD_ENTROPY not in batch.batch and "entropys" not in batch.batch  # the actor update gets no extra field


@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_second_step_keeps_the_initial_entropy_of_the_first(trainer):
    trainer_ = build(trainer, trainer_config(trainer))
    first = Completions(seed=11)
    advantage_step(trainer_, first)
    measured = mean_completion_entropy(first.padded()[3], first.padded()[1])
    second = Completions(seed=12)
    batch = advantage_step(trainer_, second)
    assert trainer_.config.algorithm.gtpo.initial_entropy == pytest.approx(measured)
    torch.testing.assert_close(batch.batch["advantages"], expected_advantages(second, measured), rtol=0, atol=1e-6)


@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_other_estimators_pass_through_the_hooks(trainer):
    config = trainer_config(trainer, "algorithm.adv_estimator=grpo", "algorithm.rollout_correction.bypass_mode=false",
                            "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla", gtpo=False)
    trainer_ = build(trainer, config)
    completions = Completions(seed=5)
    batch = advantage_step(trainer_, completions)
    assert not METRIC_KEYS & set(trainer_.metrics) and "gtpo" not in config.algorithm
    assert OLD_ENTROPY not in batch.batch
    responses, mask, rewards, entropy, uid = completions.padded()
    grpo = compute_advantage(DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                                                 non_tensors={"uid": uid}), adv_estimator="grpo")
    torch.testing.assert_close(batch.batch["advantages"], grpo.batch["advantages"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_an_advantage_step_without_the_entropy_pass_raises_rather_than_computing_grpo(trainer):
    trainer_ = build(trainer, trainer_config(trainer))
    trainer_.metrics, trainer_.timing_raw = {}, {}
    batch = trainer_._fit_compute_reward(Completions(seed=3).data_proto())
    batch.batch["old_log_probs"] = torch.zeros(batch.batch["responses"].shape)
    with pytest.raises(RuntimeError, match="found no old-policy entropy"):
        trainer_._fit_compute_advantage(batch)


# -------------------------------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_their_own_configs_with_bypass_mode_are_refused_at_start_up_saying_what_to_set(trainer):
    with pytest.raises(ValueError, match="bypass_mode=true skips that pass; set it to false"):
        build(trainer, trainer_config(trainer, "algorithm.rollout_correction.bypass_mode=true"))


@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_start_up_validates_and_completes_the_gtpo_section(trainer):
    with pytest.raises(ValueError, match="invalid algorithm.gtpo: gtpo.entropy_coef must be >= 0"):
        build(trainer, trainer_config(trainer, "+algorithm.gtpo.entropy_coef=-1"))
    config = trainer_config(trainer, "+algorithm.gtpo.conflict_mode=any")
    build(trainer, config)
    assert config.algorithm.gtpo.conflict_mode == "any" and config.algorithm.gtpo.amplification == 2.0


class SeparationSubclass(SeparateRayPPOTrainer):
    """A trainer on verl's separation base that keeps its step methods (as one-step-off and fully async do)."""


class OwnStepSubclass(SeparateRayPPOTrainer):
    """One that replaces the advantage step, so the hooks cannot see its batch."""

    def _fit_compute_advantage(self, batch):
        return batch


HYBRID = ["actor_rollout_ref.hybrid_engine=true"]  # RayPPOTrainer.__init__ asserts it


def separation_trainer(cls, config):
    """Built through ``SeparateRayPPOTrainer.__init__``, which calls ``RayPPOTrainer.__init__``."""
    return cls(config=config, tokenizer=None, role_worker_mapping={Role.ActorRollout: object},
               resource_pool_manager=None, train_dataset=list(range(8)), val_dataset=list(range(2)))


def test_separation_base_supports_gtpo_through_the_legacy_init():
    trainer = separation_trainer(SeparationSubclass, trainer_config("one_step_off", *HYBRID))
    completions = Completions(seed=21)
    batch = advantage_step(trainer, completions)
    measured = trainer.config.algorithm.gtpo.initial_entropy
    assert measured == pytest.approx(mean_completion_entropy(completions.padded()[3], completions.padded()[1]))
    torch.testing.assert_close(batch.batch["advantages"], expected_advantages(completions, measured),
                               rtol=0, atol=1e-6)
    assert set(trainer.metrics) >= METRIC_KEYS


def test_a_subclass_with_its_own_advantage_step_and_the_legacy_trainer_are_refused_naming_the_trainers_to_use():
    for cls in (OwnStepSubclass, RayPPOTrainer):
        with pytest.raises(ValueError, match=f"does not run on {cls.__name__}.*Use verl's v1 trainer"):
            separation_trainer(cls, trainer_config("one_step_off", *HYBRID))


# -------------------------------------------------------------------------------------------------- warnings


def gtpo_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("gtpo_plugin") and record.levelno == logging.WARNING]


@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_kl_in_reward_warns_once_per_run_naming_the_setting(trainer, caplog):
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        trainer_ = build(trainer, trainer_config(trainer, "algorithm.use_kl_in_reward=true"))
        advantage_step(trainer_, Completions(seed=1))
        advantage_step(trainer_, Completions(seed=2))
    kl = [message for message in gtpo_warnings(caplog) if "algorithm.use_kl_in_reward=True" in message]
    assert len(kl) == 1 and "GTPO needs no reference model" in kl[0]


MISMATCHES = {  # overrides: what the one warning must say
    "estimator_without_its_loss": (["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"],
                                   "algorithm.adv_estimator=gtpo with policy_loss.loss_mode=vanilla"),
    "loss_without_its_estimator": (["algorithm.adv_estimator=grpo"],
                                   "policy_loss.loss_mode=gtpo with algorithm.adv_estimator=grpo"),
}


@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
@pytest.mark.parametrize("trainer", sorted(CONFIGS))
def test_estimator_and_loss_mismatch_warns_once_per_run_naming_both_settings(trainer, mismatch, caplog):
    overrides, message = MISMATCHES[mismatch]
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        trainer_ = build(trainer, trainer_config(trainer, *overrides))
        advantage_step(trainer_, Completions(seed=1))
        advantage_step(trainer_, Completions(seed=2))
    warnings = gtpo_warnings(caplog)  # one start-up warning, none from the two steps
    assert len(warnings) == 1 and message in warnings[0]


# ----------------------------------------------------------------------------------------- checkpoint, resume


def test_one_step_off_saves_and_restores_the_initial_entropy(tmp_path):
    directory = f"trainer.default_local_dir={tmp_path}"
    trainer = build("one_step_off", trainer_config("one_step_off", directory))
    advantage_step(trainer, completions := Completions(seed=8))
    measured = mean_completion_entropy(completions.padded()[3], completions.padded()[1])
    trainer.actor_rollout_wg, trainer.global_steps = CheckpointWorkers(), 3
    trainer._save_checkpoint()
    assert json.loads((tmp_path / "global_step_3" / "gtpo_state.json").read_text()) == {
        "initial_entropy": pytest.approx(measured)}

    resumed = build("one_step_off", trainer_config("one_step_off", directory, "trainer.resume_mode=auto"))
    resumed.actor_rollout_wg = CheckpointWorkers()
    resumed._load_checkpoint()
    assert resumed.global_steps == 3 and resumed.actor_rollout_wg.loaded == [str(tmp_path / "global_step_3" / "actor")]
    assert resumed.config.algorithm.gtpo.initial_entropy == pytest.approx(measured)


class RollouterStandIn:
    """Stands in for the fully async trainer's handle on the rollouter actor (``save_checkpoint.remote``)."""

    class _Method:
        def remote(self, *args):
            return ray.put(None)

    save_checkpoint = _Method()


def test_fully_async_saves_and_restores_the_initial_entropy_per_parameter_version(tmp_path, local_ray):
    directory = f"trainer.default_local_dir={tmp_path}"
    trainer = build("fully_async", trainer_config("fully_async", directory))
    advantage_step(trainer, completions := Completions(seed=9))
    measured = mean_completion_entropy(completions.padded()[3], completions.padded()[1])
    trainer.actor_rollout_wg, trainer.rollouter, trainer.current_param_version = CheckpointWorkers(), \
        RollouterStandIn(), 2
    trainer._save_checkpoint()
    assert json.loads((tmp_path / "global_step_2" / "gtpo_state.json").read_text()) == {
        "initial_entropy": pytest.approx(measured)}

    resumed = build("fully_async", trainer_config("fully_async", directory, "trainer.resume_mode=auto"))
    resumed.actor_rollout_wg = CheckpointWorkers()
    assert asyncio.run(resumed.load_checkpoint()) == 2
    assert resumed.config.algorithm.gtpo.initial_entropy == pytest.approx(measured)


# ---------------------------------------------------------------------------------- the fully async Ray actor


@pytest.fixture(autouse=True)
def torch_unpadding_on_verl_090(monkeypatch):
    from verl.utils import attention_utils

    monkeypatch.setattr(attention_utils, "_get_attention_functions", attention_utils._get_attention_functions)
    use_torch_unpadding_where_verl_needs_flash_attn()  # undone by monkeypatch after each test


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with 2 CPUs (verl's actors ask for 10; the tests start them with num_cpus=0)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for module in (sys.modules[__name__], torch_unpadding):  # the actor cannot import the test modules
        ray.cloudpickle.register_pickle_by_value(module)
    yield
    if started:
        ray.shutdown()


def _remote_advantage_step(trainer, completions):
    use_torch_unpadding_where_verl_needs_flash_attn()  # the actor's own process
    batch = advantage_step(trainer, completions)
    return batch.batch["advantages"], dict(trainer.metrics), trainer.config.algorithm.gtpo.initial_entropy


def test_fully_async_trainer_as_a_ray_actor_hooks_itself_in_its_own_process(local_ray):
    # The actor's process imports verl, which loads the plugin there; the hooks must be in place in that process.
    completions = Completions(seed=4)
    actor = FullyAsyncActor.options(num_cpus=0).remote(config=trainer_config("fully_async"), tokenizer=None,
                                                       role_worker_mapping={}, resource_pool_manager=None)
    advantages, metrics, measured = ray.get(actor.__ray_call__.remote(_remote_advantage_step, completions),
                                            timeout=600)
    assert measured == pytest.approx(mean_completion_entropy(completions.padded()[3], completions.padded()[1]))
    torch.testing.assert_close(advantages, expected_advantages(completions, measured), rtol=0, atol=1e-6)
    assert set(metrics) >= METRIC_KEYS
    ray.kill(actor)

    refused = FullyAsyncActor.options(num_cpus=0).remote(
        config=trainer_config("fully_async", "algorithm.rollout_correction.bypass_mode=true"), tokenizer=None,
        role_worker_mapping={}, resource_pool_manager=None)
    with pytest.raises(ray.exceptions.RayActorError, match="bypass_mode=true skips that pass"):
        ray.get(refused.__ray_ready__.remote(), timeout=600)
