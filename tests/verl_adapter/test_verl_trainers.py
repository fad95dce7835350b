"""GTPO inside verl's real trainers, on CPU: start-up checks, the v1 advantage stage over a real
TransferQueue (sync, colocate_async and separate_async trainers), metrics, checkpoint resume, and
the legacy trainer's refusal.

verl's trainer methods run unmodified; only the GPU workers are replaced by small stand-ins that
write to TransferQueue what verl's engine writes (``compute_log_prob``) or record checkpoint calls.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from helpers import METRIC_KEYS

from gtpo_plugin import compute_gtpo_advantage, compute_gtpo_terms, gtpo_metrics, mean_completion_entropy

verl = pytest.importorskip("verl")
import transfer_queue as tq  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from transfer_queue import KVBatchMeta  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo import ray_trainer  # noqa: E402  (by module: verl_changes.py renames its functions)
from verl.trainer.ppo.utils import need_critic, need_reference_policy  # noqa: E402
from verl.trainer.ppo.v1 import (  # noqa: E402
    PPOTrainer,
    PPOTrainerSync,
)
from verl.utils.config import validate_config  # noqa: E402
from verl_adapter.doubles import (  # noqa: E402
    TRAINERS,
    CheckpointWorkers,
    OldPolicyWorkers,
    Rollouts,
    advantages_in_queue,
    verl_config,
)

# CI runs it on verl 0.9.0 too (step 2): the v1 trainer's start-up, advantage stage and checkpoint methods.
pytestmark = pytest.mark.verl_compat


# ----------------------------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("name", ["ppo_trainer", "ppo_megatron_trainer"])
def test_recipe_settings_pass_verls_validation_and_load_no_reference_model(name):
    config = verl_config(name=name)
    assert need_reference_policy(config) is False
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    trainer = PPOTrainerSync(config)
    assert trainer.use_reference_policy is False and trainer.use_critic is False


def test_start_up_completes_the_gtpo_section_so_the_logged_config_shows_it():
    config = verl_config("+algorithm.gtpo.entropy_coef=0.05", "+algorithm.gtpo.conflict_mode=any")
    PPOTrainerSync(config)
    assert OmegaConf.to_container(config.algorithm.gtpo) == {
        "amplification": 2.0, "entropy_coef": 0.05, "entropy_threshold": pytest.approx(np.log(2)),
        "conflict_mode": "any", "initial_entropy": None}


@pytest.mark.parametrize(("override", "message"), [
    ("+algorithm.gtpo.conflict_mode=suffix", "invalid algorithm.gtpo: conflict_mode must be one of"),
    ("+algorithm.gtpo.entropy_coef=-0.1", "invalid algorithm.gtpo: gtpo.entropy_coef must be >= 0"),
    ("+algorithm.gtpo.amplification=0.5", "invalid algorithm.gtpo: amplification must be"),
    ("+algorithm.gtpo.entropy_threshold=0", "invalid algorithm.gtpo: gtpo.entropy_threshold must be > 0"),
    ("+algorithm.gtpo.initial_entropy=-1", "invalid algorithm.gtpo: initial_entropy must be"),
    ("+algorithm.gtpo.typo=1", "unknown key"),
    ("algorithm.rollout_correction.bypass_mode=true", "bypass_mode=true skips that pass"),
    ("algorithm.rollout_correction.rollout_rs=token_k1", "masks single tokens inside completions"),
    ("algorithm.rollout_correction.rollout_rs='seq_mean_k1,seq_new_k1'",
     r"allows only .*not \['seq_new_k1'\]"),
    ("algorithm.use_pf_ppo=true", r"use_pf_ppo=true .* refused on verl's v1 trainer.*verl#7956"),
])
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_bad_settings_stop_every_v1_trainer_at_start_up(trainer, override, message):
    cls, extra = TRAINERS[trainer]
    with pytest.raises(ValueError, match=message):
        cls(verl_config(*extra, override))


def test_sequence_level_rejection_sampling_is_allowed():
    config = verl_config("algorithm.rollout_correction.rollout_rs='seq_mean_k3,seq_max_k2'",
                         "algorithm.rollout_correction.rollout_rs_threshold=2.0")
    PPOTrainerSync(config)


def test_other_estimators_keep_pf_ppo_on_the_v1_trainer():
    PPOTrainerSync(verl_config("algorithm.adv_estimator=gae", "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla",
                               "algorithm.use_pf_ppo=true"))


def test_a_subclass_that_skips_super_init_gets_the_start_up_checks_at_its_first_gtpo_step():
    class Subclass(PPOTrainerSync):
        def __init__(self, config):  # verl's __init__ (and with it the start-up hook) never runs
            self.config = config

    trainer = Subclass(verl_config("algorithm.rollout_correction.rollout_rs=token_k1"))
    batch = KVBatchMeta(keys=["u_0_0"], tags=[{}], partition_id="train")
    with pytest.raises(ValueError, match="masks single tokens inside completions"):
        trainer._compute_advantage(batch, {})


def test_a_kl_term_is_allowed_with_a_warning(caplog):
    config = verl_config("actor_rollout_ref.actor.use_kl_loss=true")
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        trainer = PPOTrainerSync(config)
    assert "GTPO needs no reference model" in caplog.text
    assert trainer.use_reference_policy is True


@pytest.mark.parametrize(("overrides", "message"), [
    (["algorithm.use_kl_in_reward=true"], "KL term is on (algorithm.use_kl_in_reward=True"),
    (["actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"],
     "algorithm.adv_estimator=gtpo with policy_loss.loss_mode=vanilla"),
    (["algorithm.adv_estimator=grpo"], "policy_loss.loss_mode=gtpo with algorithm.adv_estimator=grpo"),
])
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_kl_in_reward_and_a_mismatched_loss_warn_once_at_start_up_naming_the_setting(trainer, overrides, message,
                                                                                   caplog):
    # Once per run: the check runs in __init__ only (the step-level "once" is tested on the experimental
    # trainers, whose steps run without TransferQueue: test_verl_experimental_trainers.py).
    cls, extra = TRAINERS[trainer]
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        cls(verl_config(*extra, *overrides))
    warnings = [record.getMessage() for record in caplog.records if record.name.startswith("gtpo_plugin")]
    assert len(warnings) == 1 and message in warnings[0]


def test_other_estimators_start_untouched():
    config = verl_config("algorithm.adv_estimator=grpo", "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla")
    PPOTrainerSync(config)
    assert "gtpo" not in config.algorithm


def test_legacy_trainer_stops_with_gtpo_and_says_to_use_v1():
    with pytest.raises(ValueError, match=r"does not run on RayPPOTrainer.*Use verl.s v1 trainer \(trainer.use_v1=true"):
        ray_trainer.RayPPOTrainer(config=verl_config("trainer.use_v1=false"), tokenizer=None, role_worker_mapping={},
                      resource_pool_manager=None)


# ------------------------------------------------------------------------- v1 advantage stage (TransferQueue)


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_v1_advantage_stage_gives_gtpo_its_fields_and_logs_its_metrics(transfer_queue, trainer):
    cls, extra = TRAINERS[trainer]
    config = verl_config(*extra)
    assert config.actor_rollout_ref.actor.entropy_coeff == 0 and not config.actor_rollout_ref.actor.calculate_entropy
    rollouts = Rollouts(seed=len(trainer))
    trainer_ = cls(config)
    trainer_.actor_rollout_wg = workers = OldPolicyWorkers(rollouts)
    metrics: dict = {}

    batch = trainer_._compute_old_log_prob(rollouts.put(), metrics)
    # verl asks the engine for the entropy in this pass even with entropy_coeff = 0 and calculate_entropy = false
    assert workers.extra_info["calculate_entropy"] is True
    trainer_._compute_advantage(batch, metrics)

    responses, mask, rewards, entropy, uid = rollouts.padded()
    measured = mean_completion_entropy(entropy, mask)
    assert config.algorithm.gtpo.initial_entropy == pytest.approx(measured)
    expected, _ = compute_gtpo_advantage(rewards, mask, responses, uid, entropy, initial_entropy=measured)
    torch.testing.assert_close(advantages_in_queue(rollouts.keys), expected, rtol=0, atol=1e-6)
    terms = compute_gtpo_terms(rewards, mask, responses, uid, entropy, initial_entropy=measured)
    assert {key: metrics[key] for key in METRIC_KEYS} == pytest.approx(gtpo_metrics(terms))
    tq.kv_clear(keys=rollouts.keys, partition_id="train")


def test_other_estimators_skip_the_hook(transfer_queue):
    rollouts = Rollouts(seed=5)
    trainer = PPOTrainerSync(verl_config("algorithm.adv_estimator=grpo"))
    trainer.actor_rollout_wg = OldPolicyWorkers(rollouts)
    metrics: dict = {}
    trainer._compute_advantage(trainer._compute_old_log_prob(rollouts.put(), metrics), metrics)
    assert not METRIC_KEYS & set(metrics)
    responses, mask, rewards, entropy, uid = rollouts.padded()
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": uid})
    grpo = ray_trainer.compute_advantage(data, adv_estimator="grpo")
    torch.testing.assert_close(advantages_in_queue(rollouts.keys), grpo.batch["advantages"], rtol=0, atol=1e-6)
    tq.kv_clear(keys=rollouts.keys, partition_id="train")


def stage_events(estimator: str, monkeypatch, *, rollout_log_probs: bool = True) -> tuple[list[tuple], torch.Tensor]:
    """The TransferQueue fetches as verl makes them (their fields) and verl's rollout correction, in order, in one
    v1 advantage stage; and the advantages it wrote."""
    from verl.trainer.ppo.v1 import trainer_base

    events: list[tuple] = []
    get, correct = tq.kv_batch_get, trainer_base.compute_rollout_correction_and_add_to_batch

    def recording_get(*args, **kwargs):
        events.append(("fetch", tuple(kwargs["select_fields"])))
        return get(*args, **kwargs)

    def recording_correction(*args, **kwargs):
        events.append(("rollout correction",))
        return correct(*args, **kwargs)

    rollouts = Rollouts(seed=11)
    # Without rollout log-probs the rollout is configured not to compute them (verl's old-log-prob pass reads them).
    trainer = PPOTrainerSync(verl_config(f"algorithm.adv_estimator={estimator}",
                                         f"actor_rollout_ref.rollout.calculate_log_probs={rollout_log_probs}"))
    trainer.actor_rollout_wg = OldPolicyWorkers(rollouts)
    batch = trainer._compute_old_log_prob(rollouts.put(rollout_log_probs), {})
    with monkeypatch.context() as patch:
        patch.setattr(tq, "kv_batch_get", recording_get)
        patch.setattr(trainer_base, "compute_rollout_correction_and_add_to_batch", recording_correction)
        trainer._compute_advantage(batch, {})
    advantages = advantages_in_queue(rollouts.keys)
    tq.kv_clear(keys=rollouts.keys, partition_id="train")
    return events, advantages


def expected_advantages(seed: int, initial_entropy: float) -> torch.Tensor:
    responses, mask, rewards, entropy, uid = Rollouts(seed=seed).padded()
    return compute_gtpo_advantage(rewards, mask, responses, uid, entropy, initial_entropy=initial_entropy)[0]


def test_with_rollout_correction_gtpo_fetches_its_inputs_after_it_and_leaves_verls_fetch_as_it_is(transfer_queue,
                                                                                                 monkeypatch):
    grpo, _ = stage_events("grpo", monkeypatch)
    gtpo, advantages = stage_events("gtpo", monkeypatch)
    assert [event[0] for event in grpo] == ["fetch", "rollout correction"]
    assert gtpo == [*grpo, ("fetch", ("responses", "entropy"))]
    _, mask, _, entropy, _ = Rollouts(seed=11).padded()
    torch.testing.assert_close(advantages, expected_advantages(11, mean_completion_entropy(entropy, mask)),
                               rtol=0, atol=1e-6)


def test_without_rollout_correction_verls_one_fetch_brings_gtpos_inputs_with_the_same_advantages(transfer_queue,
                                                                                                  monkeypatch):
    grpo, _ = stage_events("grpo", monkeypatch, rollout_log_probs=False)
    gtpo, advantages = stage_events("gtpo", monkeypatch, rollout_log_probs=False)
    assert [event[0] for event in grpo] == ["fetch"] and gtpo == grpo  # one call, asked for by verl as it is
    _, mask, _, entropy, _ = Rollouts(seed=11).padded()
    torch.testing.assert_close(advantages, expected_advantages(11, mean_completion_entropy(entropy, mask)),
                               rtol=0, atol=1e-6)


def test_outside_a_gtpo_stage_the_fetch_passes_straight_through(transfer_queue):
    from gtpo_plugin.verl_adapter import trainer_hooks

    assert trainer_hooks.is_hooked(tq.kv_batch_get)
    rollouts = Rollouts(seed=12)
    rollouts.put()
    data = tq.kv_batch_get(keys=rollouts.keys, partition_id="train", select_fields=["rm_scores"])
    assert set(data.keys()) == {"rm_scores"}
    tq.kv_clear(keys=rollouts.keys, partition_id="train")


def test_a_moved_or_changed_kv_batch_get_is_refused_by_its_probe():
    import types

    from gtpo_plugin.verl_adapter import seam, trainer_hooks

    hook = next(hook for hook in trainer_hooks.SEAMS["verl.trainer.ppo.v1.trainer_base"] if hook.name == "kv_batch_get")
    module = types.ModuleType("verl.trainer.ppo.v1.trainer_base")
    module.tq = types.SimpleNamespace()
    with pytest.raises(seam.ProbeError, match=r"trainer_base\.tq\.kv_batch_get is missing"):
        trainer_hooks._resolve(module, hook)
    module.tq = types.SimpleNamespace(kv_batch_get=lambda keys, partition_id: None)
    with pytest.raises(seam.ProbeError, match="expects .*select_fields"):
        trainer_hooks._resolve(module, hook)


def test_several_outputs_per_agent_session_are_refused():
    trainer = PPOTrainerSync(verl_config())
    batch = KVBatchMeta(keys=["u_0_0", "u_0_1", "u_1_0"], tags=[{}, {}, {}], partition_id="train")
    with pytest.raises(NotImplementedError, match="one output per agent-loop session"):
        trainer._compute_advantage(batch, {})


@pytest.mark.parametrize("key", ["u0", "u_0", "u_0_last"])
def test_a_key_not_in_verls_session_format_is_refused_not_passed(key):
    trainer = PPOTrainerSync(verl_config())
    with pytest.raises(ValueError, match=r"is not verl's '\{uid\}_\{session_id\}_\{index\}'"):
        trainer._compute_advantage(KVBatchMeta(keys=[key], tags=[{}], partition_id="train"), {})


# ------------------------------------------------------------------------------------- checkpoint and resume


def trainer_for_checkpoints(*overrides: str, mode: str = "sync") -> PPOTrainer:
    cls, extra = TRAINERS[mode]
    trainer = cls(verl_config(*extra, *overrides))
    trainer.actor_rollout_wg = CheckpointWorkers()
    trainer.train_dataloader = StatefulDataLoader(list(range(8)), batch_size=2)
    return trainer


def measure_initial_entropy(algorithm) -> float:
    """Run verl's advantage stage once on a first batch, as the trainer does, so that ⟨H⟩_ini gets measured."""
    responses, mask, rewards, entropy, uid = Rollouts(seed=7).padded()
    data = DataProto.from_dict(tensors={"responses": responses, "response_mask": mask, "token_level_rewards": rewards,
                                        "entropy": entropy}, non_tensors={"uid": uid})
    ray_trainer.compute_advantage(data, adv_estimator="gtpo", config=algorithm)
    return mean_completion_entropy(entropy, mask)


@pytest.mark.parametrize("mode", ["sync", "colocate_async"])
def test_measured_initial_entropy_survives_a_resume(tmp_path, request, mode):
    if mode != "sync":
        request.getfixturevalue("transfer_queue")  # async trainers also checkpoint TransferQueue's state
    directory = f"trainer.default_local_dir={tmp_path}"
    trainer = trainer_for_checkpoints(directory, mode=mode)
    measured = measure_initial_entropy(trainer.config.algorithm)
    trainer.global_steps = 3
    trainer._save_checkpoint()
    assert json.loads((tmp_path / "global_step_3" / "gtpo_state.json").read_text()) == {
        "initial_entropy": pytest.approx(measured)}
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text() == "3"

    for resume in (["trainer.resume_mode=auto"],
                   ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={tmp_path}/global_step_3"]):
        resumed = trainer_for_checkpoints(directory, *resume, mode=mode)
        assert resumed.config.algorithm.gtpo.initial_entropy is None
        resumed._load_checkpoint()
        assert resumed.global_steps == 3
        assert resumed.actor_rollout_wg.loaded == [os.path.join(tmp_path, "global_step_3", "actor")]
        assert resumed.config.algorithm.gtpo.initial_entropy == pytest.approx(measured)


def test_resume_keeps_an_explicit_initial_entropy_and_warns_when_it_differs(tmp_path, caplog):
    trainer = trainer_for_checkpoints(f"trainer.default_local_dir={tmp_path}")
    measure_initial_entropy(trainer.config.algorithm)
    trainer.global_steps = 2
    trainer._save_checkpoint()
    resumed = trainer_for_checkpoints(f"trainer.default_local_dir={tmp_path}", "+algorithm.gtpo.initial_entropy=1.5")
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        resumed._load_checkpoint()
    assert resumed.config.algorithm.gtpo.initial_entropy == 1.5
    assert "keeping the configured value" in caplog.text


def test_resume_from_a_checkpoint_without_gtpo_state_measures_again(tmp_path, caplog):
    trainer = trainer_for_checkpoints(f"trainer.default_local_dir={tmp_path}", "algorithm.adv_estimator=grpo")
    trainer.global_steps = 4
    trainer._save_checkpoint()  # a GRPO run: no GTPO state written
    assert not (tmp_path / "global_step_4" / "gtpo_state.json").exists()
    resumed = trainer_for_checkpoints(f"trainer.default_local_dir={tmp_path}")
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        resumed._load_checkpoint()
    assert resumed.global_steps == 4
    assert resumed.config.algorithm.gtpo.initial_entropy is None
    assert "will be measured on the first batch after resume" in caplog.text
