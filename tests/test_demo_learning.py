"""Tests that would catch a broken learner in the demo, whatever the task: rollout, log-prob, reward, update.

- Consistency: the ``old_log_probs`` the trainer recomputes are the sampler's own log-probabilities of the
  tokens it drew (verl's ``calculate_debug_metrics`` on the batch, as the demo logs it every step).
- Sign: one update on a batch whose only non-zero advantages are positive raises the log-probability of
  those completions; negative-only lowers it (verl's ``vanilla`` and the plugin's ``gtpo`` loss).
- Sanity: GRPO and GTPO through the demo's own ``Trainer`` climb a trivially learnable reward.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch

pytest.importorskip("verl")
from verl.utils.debug.metrics import calculate_debug_metrics  # noqa: E402

from gtpo_plugin.demo.arms import ALGORITHMS  # noqa: E402
from gtpo_plugin.demo.model import build_model, response_log_probs  # noqa: E402
from gtpo_plugin.demo.options import DemoOptions  # noqa: E402
from gtpo_plugin.demo.presets import PRESETS  # noqa: E402
from gtpo_plugin.demo.rollout import rollout  # noqa: E402
from gtpo_plugin.demo.task import Grade, Problem, build_vocab, sample_problems  # noqa: E402
from gtpo_plugin.demo.train import RLSettings, Trainer, actor_config, update_policy  # noqa: E402
from gtpo_plugin.demo.warmup import warm_up  # noqa: E402

VOCAB = build_vocab()


@pytest.fixture(scope="module")
def warmed():
    """A briefly warmed-up model: it writes the format, so completions end at <eos> with varied lengths."""
    model = build_model(len(VOCAB), seed=0)
    warm_up(model, VOCAB, steps=60, batch_size=64, noise=0.2, lr=3e-3, generator=torch.Generator().manual_seed(0))
    return model


def a_batch(model: torch.nn.Module, temperature: float, prompts: int = 4, group_size: int = 4):
    problems = sample_problems(prompts, torch.Generator().manual_seed(7))
    return rollout(model, VOCAB, problems, group_size=group_size, max_new_tokens=24,
                   generator=torch.Generator().manual_seed(8), step=1, reward="correctness", temperature=temperature)


# --- consistency -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0.9, 1.0])
def test_the_recomputed_old_log_probs_are_the_samplers_own(warmed, temperature):
    batch = a_batch(warmed, temperature)
    mask = batch.data.batch["response_mask"].bool()
    assert int(mask.sum()) > 100
    difference = (batch.data.batch["old_log_probs"] - batch.data.batch["rollout_log_probs"]).abs()[mask]
    assert float(difference.max()) < 1e-4  # float32: a cached decoding step against one full pass
    assert calculate_debug_metrics(batch.data)["training/rollout_probs_diff_max"] < 1e-5


def test_the_consistency_check_sees_log_probs_at_the_wrong_temperature(warmed):
    # What the check exists for: a trainer that recomputed log-probs at T = 1 while the sampler drew at 0.9
    # (a classic rollout/trainer mismatch) is off by far more than the bound above.
    batch = a_batch(warmed, 0.9)
    data = batch.data
    wrong, _ = response_log_probs(warmed, data.batch["prompts"], data.batch["prompt_mask"], data.batch["responses"],
                                  temperature=1.0)
    data.batch["old_log_probs"] = wrong.detach()
    assert calculate_debug_metrics(data)["training/rollout_probs_diff_max"] > 1e-2


def test_each_training_step_logs_the_consistency_metric(warmed):
    settings = DemoOptions(preset="paper", steps=1, prompts_per_step=2).settings()
    record = Trainer(ALGORITHMS["grpo"], copy.deepcopy(warmed), VOCAB, settings, seed=1).step()
    assert 0 <= record.metrics["demo/rollout_probs_diff_max"] < 1e-5


# --- sign ------------------------------------------------------------------------------------------------

def completion_log_prob(model: torch.nn.Module, data, rows: torch.Tensor, temperature: float) -> float:
    """Sum of log π over the valid tokens of ``rows``: the log-probability of those completions."""
    with torch.no_grad():
        log_prob, _ = response_log_probs(model, data.batch["prompts"], data.batch["prompt_mask"],
                                         data.batch["responses"], temperature=temperature)
    return float((log_prob * data.batch["response_mask"])[rows].sum())


@pytest.mark.parametrize("algorithm", ["grpo", "gtpo"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_update_moves_the_completions_log_prob_with_the_sign_of_their_advantage(warmed, algorithm, sign):
    temperature = 1.0
    batch = a_batch(warmed, temperature)
    data = batch.data
    rows = torch.zeros(len(data), dtype=torch.bool)
    rows[:4] = True  # the first group; every other advantage is 0
    data.batch["advantages"] = sign * rows[:, None].float() * data.batch["response_mask"].float()
    settings = RLSettings(steps=1, group_size=4, prompts_per_step=4, lr=1e-4, mini_batches=1, max_new_tokens=24,
                          temperature=temperature)
    config = actor_config(ALGORITHMS[algorithm], settings)
    model = copy.deepcopy(warmed)
    before = completion_log_prob(model, data, rows, temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0)
    update_policy(model, optimizer, data, config, torch.zeros_like(data.batch["response_mask"], dtype=torch.bool), 1)
    change = completion_log_prob(model, data, rows, temperature) - before
    assert change * sign > 1e-3, change
    untouched = completion_log_prob(model, data, ~rows, temperature)
    assert math.isfinite(untouched)


# --- sanity ----------------------------------------------------------------------------------------------

def small_first_number(tokens: Sequence[str], _problem: Problem, _grade: Grade) -> float:
    """1 when the completion opens with a number below 20, else 0: a random model earns it ~40% of the time."""
    return 1.0 if tokens and tokens[0].isdigit() and int(tokens[0]) < 20 else 0.0


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "gtpo"])
def test_grpo_and_gtpo_climb_a_trivially_learnable_reward(algorithm):
    # From a random model (no warm-up), 30 steps of 8 prompts x 8 completions through the demo's Trainer:
    # rollout, verl's compute_advantage and policy loss, AdamW. The mean reward must go from about 0.4 to
    # at least 0.9. A broken sign, advantage, log-prob or reward placement would keep it near 0.4 or lower.
    preset = PRESETS["verl"]
    settings = RLSettings(steps=30, group_size=8, prompts_per_step=8, lr=3e-3, mini_batches=2, max_new_tokens=4,
                          temperature=1.0, reward=small_first_number, norm_adv_by_std=True, gtpo=dict(preset.gtpo))
    trainer = Trainer(ALGORITHMS[algorithm], build_model(len(VOCAB), seed=0), VOCAB, settings, seed=1)
    rewards = [trainer.step().metrics["reward/mean"] for _ in range(settings.steps)]
    assert sum(rewards[:3]) / 3 < 0.6, rewards
    assert sum(rewards[-5:]) / 5 >= 0.9, rewards


# --- the shipped warm-up: RL's start -----------------------------------------------------------------------

def test_the_default_warm_up_ships_with_the_package_and_knows_the_task():
    from gtpo_plugin.demo.evaluate import evaluate, evaluation_problems
    from gtpo_plugin.demo.pipeline import shipped_warmup_path, warmed_model

    options = DemoOptions()
    assert shipped_warmup_path(options).is_file()
    model, losses = warmed_model(options)
    assert len(losses) == options.warmup_steps == 1500 and losses[-1] < 0.35
    # What makes RL learn here (docs/ab-testing.md): the warm-up has learnt the task's arithmetic and copying.
    greedy = evaluate(model, VOCAB, evaluation_problems(64), max_new_tokens=options.max_new_tokens)
    assert greedy["accuracy"] >= 0.85 and greedy["format_accuracy"] == 1.0


def test_the_warm_up_is_read_from_the_cache_then_the_package_then_trained(tmp_path, monkeypatch):
    import gtpo_plugin.demo.pipeline as pipeline

    options = DemoOptions(warmup_steps=3, warmup_batch_size=4)
    monkeypatch.setattr(pipeline, "SHIPPED_WARMUPS", tmp_path / "shipped")
    shipped = pipeline.shipped_warmup_path(options)
    shipped.parent.mkdir()
    zeros = {key: torch.zeros_like(value) for key, value in build_model(len(VOCAB), 0).state_dict().items()}
    torch.save({"model": zeros, "losses": torch.tensor([9.0, 9.0, 9.0])}, shipped)
    model, losses = pipeline.warmed_model(options)
    assert losses == [9.0, 9.0, 9.0] and all(float(p.abs().sum()) == 0 for p in model.parameters())
    model, losses = pipeline.warmed_model(replace(options, shipped_warmup=False))
    assert len(losses) == 3 and losses != [9.0, 9.0, 9.0] and any(float(p.abs().sum()) > 0 for p in model.parameters())
    cached = replace(options, cache=str(tmp_path / "cache"), shipped_warmup=False)
    trained, _ = pipeline.warmed_model(cached)  # trains and keeps it in the cache
    again, losses = pipeline.warmed_model(replace(cached, shipped_warmup=True))  # the cache comes first
    assert losses != [9.0, 9.0, 9.0]
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), again.parameters(), strict=True))
