"""Multi-turn completions (response_mask with holes) through verl: its ``compute_advantage`` and the v1
trainers' advantage stage over a real TransferQueue, laid out as verl's tool agent loop lays them out
(model turns with mask 1, tool outputs with mask 0 inside the response, right padding)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from batches import random_turn_batch, turns
from helpers import METRIC_KEYS
from naive_reference import naive_multiturn_gtpo_advantage

from gtpo_plugin import compute_gtpo_advantage, compute_gtpo_terms, gtpo_metrics, mean_completion_entropy

verl = pytest.importorskip("verl")
import transfer_queue as tq  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.ppo.ray_trainer import compute_advantage  # noqa: E402
from verl_adapter.doubles import (  # noqa: E402  (the TransferQueue fixture is in conftest.py)
    TRAINERS,
    OldPolicyWorkers,
    Rollouts,
    advantages_in_queue,
    verl_config,
)

# CI runs it on verl 0.9.0 too (step 2): agent-loop masks through compute_advantage and the v1 advantage stage.
pytestmark = pytest.mark.verl_compat


def algorithm(**gtpo) -> OmegaConf:
    return OmegaConf.create({"adv_estimator": "gtpo", "norm_adv_by_std_in_grpo": True, "gtpo": gtpo})


def turn_data(batch) -> DataProto:
    return DataProto.from_dict(
        tensors={"responses": batch.responses(), "response_mask": batch.mask(),
                 "token_level_rewards": batch.token_level_rewards(), "entropy": batch.entropy()},
        non_tensors={"uid": batch.index()},
    )


# ----------------------------------------------------------------------------- verl's compute_advantage


@pytest.mark.parametrize("mode", ["prefix_suffix", "any", "none"])
def test_verls_compute_advantage_on_holed_batches_matches_the_naive_reference(mode):
    rng = random.Random(17)
    for _ in range(20):
        batch = random_turn_batch(rng)  # tool columns hold NaN, -3 or 1e6 entropy: all must be ignored
        config = algorithm(conflict_mode=mode)
        data = compute_advantage(turn_data(batch), adv_estimator="gtpo", config=config)
        measured = config.gtpo.initial_entropy
        model_rows = batch.mask().sum(1) > 0
        if bool(model_rows.any()):
            assert measured == pytest.approx(mean_completion_entropy(batch.entropy(), batch.mask()))
        expected = naive_multiturn_gtpo_advantage(batch.rows, batch.masks, batch.groups, batch.scores,
                                                  batch.entropies, conflict_mode=mode, initial_entropy=measured)
        got = data.batch["advantages"]
        for i, want in enumerate(expected):
            assert got[i, : len(want)].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert got[batch.mask() == 0].eq(0).all() and torch.isfinite(got).all()
        assert set(data.meta_info["gtpo_metrics"]) == METRIC_KEYS


def test_verls_compute_advantage_on_a_two_turn_tool_call():
    # Turn 1 calls a tool (shared "<tool_call> search"), the tool answers with outputs of different lengths,
    # turn 2 answers and closes with the shared "</answer> <eos>". Rewards 1, 0.
    good = turns(("model", [11, 12, 3]), ("tool", [90, 91]), ("model", [4, 20, 21]))
    bad = turns(("model", [11, 12, 5]), ("tool", [90, 92, 93, 94, 95]), ("model", [6, 20, 21]))
    rows, masks = [good[0], bad[0]], [good[1], bad[1]]
    width = max(len(r) for r in rows)
    responses = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([m + [0] * (width - len(m)) for m in masks])
    entropy = torch.where(mask.bool(), 0.25, float("nan"))
    rewards = torch.zeros(2, width)
    rewards[0, len(rows[0]) - 1], rewards[1, len(rows[1]) - 1] = 1.0, 0.0
    data = DataProto.from_dict(tensors={"responses": responses, "response_mask": mask, "entropy": entropy,
                                        "token_level_rewards": rewards},
                               non_tensors={"uid": np.array(["q", "q"], dtype=object)})
    data = compute_advantage(data, adv_estimator="gtpo", config=algorithm(entropy_coef=0.0))
    a = 0.5 / (np.sqrt(0.5) + 1e-6)
    lam_good = [2, 2, 1, 0, 0, 1, 2, 2]  # prefix run "11 12", suffix run "20 21" over model tokens
    lam_bad = [0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]
    torch.testing.assert_close(data.batch["advantages"][0, :8], a * torch.tensor(lam_good, dtype=torch.float32))
    torch.testing.assert_close(data.batch["advantages"][1], -a * torch.tensor(lam_bad, dtype=torch.float32))


# ----------------------------------------------------------------------------- v1 trainers over TransferQueue


class MultiTurnRollouts(Rollouts):
    """Multi-turn completions put into TransferQueue as verl's tool agent loop puts them: ``responses`` holds
    model and tool tokens, ``response_mask`` is 0 on the tool tokens; the old policy's entropy on tool
    tokens is large (the model predicts tool output badly), which must not enter ⟨H⟩_i."""

    def __init__(self, seed: int, groups: int = 3, size: int = 4):
        super().__init__(seed, groups, size)
        rng = np.random.default_rng(seed)
        for row in self.rows:
            segments, who = [], "tool"
            for _ in range(int(rng.integers(1, 5))):
                segments.append((who, rng.integers(1, 4, size=int(rng.integers(0 if who == "tool" else 1, 4)))
                                 .tolist()))
                who = "tool" if who == "model" else "model"
            response, mask = turns(("model", row["response"][:2]), *segments)
            row["response"], row["mask"] = response, mask
            row["entropy"] = [float(rng.uniform(0.05, 1.0)) if keep else 9.0 for keep in mask]


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_v1_advantage_stage_accepts_agent_loop_masks_with_holes(transfer_queue, trainer):  # noqa: F811
    cls, extra = TRAINERS[trainer]
    rollouts = MultiTurnRollouts(seed=3 + len(trainer))
    responses, mask, rewards, entropy, uid = rollouts.padded()
    assert any(m != sorted(m, reverse=True) for m in mask.tolist())  # there are holes
    config = verl_config(*extra)
    trainer_ = cls(config)
    trainer_.actor_rollout_wg = OldPolicyWorkers(rollouts)
    metrics: dict = {}
    trainer_._compute_advantage(trainer_._compute_old_log_prob(rollouts.put(), metrics), metrics)

    measured = mean_completion_entropy(entropy, mask)
    assert measured < 1.0  # tool tokens' entropy (9.0) is left out
    assert config.algorithm.gtpo.initial_entropy == pytest.approx(measured)
    expected, _ = compute_gtpo_advantage(rewards, mask, responses, uid, entropy, initial_entropy=measured)
    torch.testing.assert_close(advantages_in_queue(rollouts.keys), expected, rtol=0, atol=1e-6)
    naive = naive_multiturn_gtpo_advantage([row["response"] for row in rollouts.rows],
                                           [row["mask"] for row in rollouts.rows], list(uid),
                                           [row["score"] for row in rollouts.rows],
                                           [row["entropy"] for row in rollouts.rows], initial_entropy=measured)
    for i, want in enumerate(naive):
        assert expected[i, : len(want)].tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)
    terms = compute_gtpo_terms(rewards, mask, responses, uid, entropy, initial_entropy=measured)
    assert {key: metrics[key] for key in METRIC_KEYS} == pytest.approx(gtpo_metrics(terms))
    tq.kv_clear(keys=rollouts.keys, partition_id="train")
