"""The CPU demo: task and tokenizer, the verl round trip of a GTPO step, and a short end-to-end run."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import verl  # noqa: F401  (loads the GTPO plugin: adv_estimator and policy loss "gtpo")
from verl.trainer.ppo.core_algos import get_policy_loss_fn

from gtpo_plugin import GTPOConfig, compute_gtpo_advantage, conflict_weights, mean_completion_entropy
from gtpo_plugin.demo import main
from gtpo_plugin.demo.cli import OUTPUT_FILES
from gtpo_plugin.demo.model import build_model, response_log_probs
from gtpo_plugin.demo.report import PANELS
from gtpo_plugin.demo.task import Problem, build_vocab, completion_tokens, grade, noisy_demonstration
from gtpo_plugin.demo.train import ALGORITHMS, RLSettings, Trainer
from gtpo_plugin.demo.vocab import pad_left, pad_right
from gtpo_plugin.demo.warmup import warm_up

GTPO_KNOBS = {key: value for key, value in GTPOConfig().to_dict().items() if key != "initial_entropy"}


# --- task, tokenizer ---------------------------------------------------------------------------------

def test_problem_prompt_reasoning_and_grading():
    problem = Problem((3, 5, 7))
    assert problem.prompt_tokens() == ["<bos>", "3", "+", "5", "+", "7", "="]
    assert problem.running_sums() == [8, 15]
    good = completion_tokens([8, 15], 15)
    assert good == ["<r>", "8", "15", "</r>", "<a>", "15", "</a>", "<eos>"]
    assert grade(good, problem).correct and grade(good, problem).reward == 1.0
    # Right format, wrong sum: well-formed, reward 0. Wrong reasoning but right answer still scores (outcome reward).
    assert not grade(completion_tokens([8, 14], 14), problem).correct
    assert grade(completion_tokens([9, 15], 15), problem).correct
    # Malformed: missing closing tag, missing answer, no <eos>, empty reasoning, two answer tokens.
    malformed = (
        good[:-2] + ["<eos>"],
        ["<r>", "8", "15", "</r>", "<a>", "</a>", "<eos>"],
        good[:-1],
        ["<r>", "</r>", "<a>", "15", "</a>", "<eos>"],
        ["<r>", "15", "</r>", "<a>", "1", "5", "</a>", "<eos>"],
    )
    for tokens in malformed:
        result = grade(tokens, problem)
        assert not result.well_formed and result.reward == 0.0


def test_noisy_demonstration_is_well_formed_and_noise_zero_is_exact():
    generator = torch.Generator().manual_seed(0)
    problem = Problem((9, 9, 9))
    assert noisy_demonstration(problem, generator, noise=0.0) == completion_tokens([18, 27], 27)
    for _ in range(50):
        assert grade(noisy_demonstration(problem, generator, noise=1.0), problem).well_formed


def test_vocab_and_padding():
    vocab = build_vocab()
    assert len(vocab) == 9 + 28  # specials, tags, + and =, numbers 0..27
    assert vocab.decode(vocab.encode(["<r>", "27", "</a>"])) == ["<r>", "27", "</a>"]
    ids, mask = pad_left([[5, 6], [7]], vocab.pad_id)
    assert ids.tolist() == [[5, 6], [vocab.pad_id, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_right([[5, 6], [7]], vocab.pad_id, width=3)
    assert ids.tolist() == [[5, 6, vocab.pad_id], [7, vocab.pad_id, vocab.pad_id]]
    assert mask.tolist() == [[1, 1, 0], [1, 0, 0]]


def test_left_padding_does_not_change_log_probs():
    # Prompts of different lengths are left-padded; position ids count real tokens only, so a padded
    # prompt must give the same log-probs as the same prompt alone.
    vocab = build_vocab()
    model = build_model(len(vocab), seed=3).eval()
    short, long = Problem((1, 2)), Problem((3, 4, 5))
    rows = [vocab.encode(short.prompt_tokens()), vocab.encode(long.prompt_tokens())]
    prompts, prompt_mask = pad_left(rows, vocab.pad_id)
    responses = torch.tensor([vocab.encode(completion_tokens([3], 3)) + [vocab.pad_id]] * 2)
    with torch.no_grad():
        batched, _ = response_log_probs(model, prompts, prompt_mask, responses)
        alone, _ = response_log_probs(model, prompts[:1, 2:], prompt_mask[:1, 2:], responses[:1])
    torch.testing.assert_close(batched[0, :7], alone[0, :7], rtol=1e-5, atol=1e-5)


# --- one GTPO step through verl ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def warmed_model():
    vocab = build_vocab()
    model = build_model(len(vocab), seed=0)
    warm_up(model, vocab, steps=150, batch_size=64, noise=0.5, lr=3e-3, generator=torch.Generator().manual_seed(0))
    return vocab, model


def make_trainer(warmed_model, algorithm: str, steps: int = 3) -> Trainer:
    vocab, model = warmed_model
    settings = RLSettings(steps=steps, group_size=8, prompts_per_step=8, lr=3e-4, mini_batches=2,
                          max_new_tokens=10, gtpo=dict(GTPO_KNOBS))
    return Trainer(ALGORITHMS[algorithm], copy.deepcopy(model), vocab, settings, seed=1)


def test_gtpo_step_advantages_equal_the_core_function(warmed_model):
    trainer = make_trainer(warmed_model, "gtpo")
    for step in range(2):
        record = trainer.step()
        batch, uid = record.rollout.data.batch, record.rollout.data.non_tensor_batch["uid"]
        if step == 0:
            # ⟨H⟩_ini: measured by the adapter on the first batch, kept in the algorithm config.
            assert trainer.algo.gtpo.initial_entropy == pytest.approx(
                mean_completion_entropy(batch["entropy"], batch["response_mask"]), rel=1e-6)
        expected, _ = compute_gtpo_advantage(
            batch["token_level_rewards"], batch["response_mask"], batch["responses"], uid, batch["entropy"],
            initial_entropy=trainer.algo.gtpo.initial_entropy, **GTPO_KNOBS,
        )
        torch.testing.assert_close(batch["advantages"], expected, rtol=0, atol=0)
        assert record.rollout.data.meta_info["gtpo_metrics"]["gtpo/initial_entropy"] == pytest.approx(
            trainer.algo.gtpo.initial_entropy)


def _protected_and_negative(record) -> tuple[torch.Tensor, torch.Tensor]:
    batch, uid = record.rollout.data.batch, record.rollout.data.non_tensor_batch["uid"]
    mask = batch["response_mask"].bool()
    weights = conflict_weights(batch["responses"], mask, uid, record.diagnostics.group_advantage)
    return (weights == 0) & mask, record.diagnostics.group_advantage < 0


def test_gtpo_loss_has_zero_gradient_on_protected_tokens_of_negative_completions(warmed_model):
    # Take GTPO steps until a batch has protected tokens (λ = 0); then, on that batch, the loss restricted
    # to the negatively rewarded completions must have exactly zero gradient w.r.t. log π of those tokens,
    # while the same loss on GRPO's advantages (A_i on every token) pushes them down (gradient > 0).
    trainer = make_trainer(warmed_model, "gtpo", steps=5)
    for _ in range(trainer.settings.steps):
        record = trainer.step()
        protected, negative = _protected_and_negative(record)
        if bool(protected.any()):
            break
    assert bool(protected.any()), "no protected token in 5 steps: the test would prove nothing"
    batch = record.rollout.data.batch
    with torch.no_grad():
        updated, _ = response_log_probs(trainer.model, batch["prompts"], batch["prompt_mask"], batch["responses"])
    rows = negative[:, None] & batch["response_mask"].bool()

    def gradient(loss_mode: str, advantages: torch.Tensor, log_prob: torch.Tensor) -> torch.Tensor:
        leaf = log_prob.clone().requires_grad_(True)
        loss, _ = get_policy_loss_fn(loss_mode)(
            old_log_prob=batch["old_log_probs"], log_prob=leaf, advantages=advantages, response_mask=rows,
            loss_agg_mode=trainer.actor.loss_agg_mode, config=trainer.actor, rollout_is_weights=None,
        )
        loss.backward()
        assert leaf.grad is not None
        return leaf.grad

    # At the sampling policy (ratio 1, the first mini-batch of a step) and after the step's updates.
    for log_prob in (batch["old_log_probs"], updated):
        gtpo_grad = gradient("gtpo", batch["advantages"], log_prob)
        assert torch.count_nonzero(gtpo_grad[protected]) == 0
    gtpo_grad = gradient("gtpo", batch["advantages"], batch["old_log_probs"])
    assert bool((gtpo_grad[rows & ~protected] != 0).any())  # the non-conflict tokens are still updated
    # GRPO's advantages (A_i on every token), at ratio 1 where no clipping hides the gradient: every
    # protected token would be pushed down (dL/dlog p > 0).
    grpo_advantages = record.diagnostics.group_advantage[:, None] * batch["response_mask"]
    grpo_grad = gradient("vanilla", grpo_advantages, batch["old_log_probs"])
    assert bool((grpo_grad[protected] > 0).all())


# --- end to end -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["--steps", "4", "--prompts", "4", "--warmup-steps", "150", "--out", str(out), "--no-progress",
                 "--device", "cpu"])
    assert code == 0
    return out


@pytest.mark.slow
def test_short_run_writes_well_formed_outputs(short_run: Path):
    for name in OUTPUT_FILES.values():
        assert (short_run / name).is_file() and (short_run / name).stat().st_size > 0
    metrics = json.loads((short_run / OUTPUT_FILES["metrics"]).read_text(encoding="utf-8"))
    assert set(metrics["runs"]) == {"gtpo", "grpo"}
    assert metrics["runs"]["gtpo"]["adv_estimator"] == "gtpo" and metrics["runs"]["grpo"]["adv_estimator"] == "grpo"
    for run in metrics["runs"].values():
        assert [record["step"] for record in run["history"]] == [1, 2, 3, 4]
        for record in run["history"]:
            for key, _ in PANELS:
                assert isinstance(record[key], float) and math.isfinite(record[key]), key
            assert 0 <= record["reward/mean"] <= record["format/accuracy"] <= 1
        assert 0 <= run["eval_after"]["accuracy"] <= run["eval_after"]["format_accuracy"] <= 1
        assert run["eval_after"]["problems"] == 1100
    # Same warm-up weights and seeds: the first batch (sampled before any update) is the same for both.
    first = [metrics["runs"][name]["history"][0] for name in ("gtpo", "grpo")]
    assert first[0]["reward/mean"] == first[1]["reward/mean"]
    assert first[0]["actor/entropy"] == first[1]["actor/entropy"]
    png = (short_run / OUTPUT_FILES["plot"]).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    summary = (short_run / OUTPUT_FILES["summary"]).read_text(encoding="utf-8")
    assert "GTPO" in summary and "GRPO" in summary
    view = (short_run / OUTPUT_FILES["group_view"]).read_text(encoding="utf-8")
    assert "lambda" in view and "completion 8" in view


@pytest.mark.slow
def test_gtpo_run_never_pushed_down_a_protected_token(short_run: Path):
    # Every mini-batch of every GTPO step: the gradient of verl's loss w.r.t. log π, summed in absolute
    # value over the tokens with λ = 0, is exactly 0. GRPO, on the same kind of batches, pushes them down.
    metrics = json.loads((short_run / OUTPUT_FILES["metrics"]).read_text(encoding="utf-8"))
    gtpo = [record["demo/protected_grad_abs"] for record in metrics["runs"]["gtpo"]["history"]]
    grpo = [record["demo/protected_grad_abs"] for record in metrics["runs"]["grpo"]["history"]]
    assert gtpo == [0.0] * len(gtpo)
    assert any(value > 0 for value in grpo)


# --- options and imports ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps", "ten"], "--steps must be an integer"),
        (["--group-size", "1"], "--group-size must be >= 2"),
        (["--prompts", "3"], "--prompts must be even"),
        (["--lr", "-1"], "--lr must be a finite number > 0"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_bad_options_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_without_a_gpu_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--device", "cuda"])
    assert "no CUDA device" in capsys.readouterr().err


def test_out_must_be_a_folder(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(SystemExit):
        main(["--out", str(path)])
    assert "is not a folder" in capsys.readouterr().err


def test_gtpo_plugin_does_not_import_the_demo_or_verl():
    code = "import sys, gtpo_plugin; assert 'verl' not in sys.modules and 'gtpo_plugin.demo' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_uid_groups_are_contiguous_and_rewards_sit_on_the_last_token(warmed_model):
    trainer = make_trainer(warmed_model, "grpo")
    record = trainer.step()
    data = record.rollout.data
    uid = data.non_tensor_batch["uid"]
    assert len(set(uid)) == trainer.settings.prompts_per_step
    assert all(len(set(uid[i : i + 8])) == 1 for i in range(0, len(uid), 8))
    lengths = data.batch["response_mask"].sum(dim=1)
    rewards = data.batch["token_level_rewards"]
    expected = torch.tensor([g.reward for g in record.rollout.grades])
    torch.testing.assert_close(rewards.sum(dim=1), expected)
    nonzero = np.nonzero(rewards.numpy())
    assert all(int(col) == int(lengths[row]) - 1 for row, col in zip(*nonzero, strict=True))
