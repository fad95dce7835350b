"""The CPU demo: task and reward, tokenizer, sampling, the verl round trip of a step, the null test, the study."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

verl = pytest.importorskip("verl")  # also loads the GTPO plugin: adv_estimator and policy loss "gtpo"
from verl.trainer.ppo.core_algos import get_policy_loss_fn  # noqa: E402

from gtpo_plugin import compute_gtpo_advantage, conflict_weights, mean_completion_entropy  # noqa: E402
from gtpo_plugin.demo import main  # noqa: E402
from gtpo_plugin.demo.arms import ALGORITHMS  # noqa: E402
from gtpo_plugin.demo.cli import OUTPUT_FILES  # noqa: E402
from gtpo_plugin.demo.mechanisms import MECHANISM_KEYS  # noqa: E402
from gtpo_plugin.demo.model import build_model, next_token_logits, response_log_probs  # noqa: E402
from gtpo_plugin.demo.options import DemoOptions  # noqa: E402
from gtpo_plugin.demo.presets import PRESETS  # noqa: E402
from gtpo_plugin.demo.rollout import sample  # noqa: E402
from gtpo_plugin.demo.study import FINAL_METRICS, run_study  # noqa: E402
from gtpo_plugin.demo.task import (  # noqa: E402
    Problem,
    build_vocab,
    completion_text,
    completion_tokens,
    grade,
    noisy_demonstration,
)
from gtpo_plugin.demo.train import Trainer, compute_advantages  # noqa: E402
from gtpo_plugin.demo.vocab import pad_left, pad_right  # noqa: E402
from gtpo_plugin.demo.warmup import warm_up  # noqa: E402

PROBLEM = Problem((3, 5, 4, 2))
# <r> 3 + 5 = 8 , 4 + 8 = 12 , + 2 = 14 </r> <a> 14 </a> <eos>
GOOD = completion_tokens(PROBLEM, [8, 12, 14], ["sum_first", "operand_first", "implied"])


# --- task, reward, tokenizer ----------------------------------------------------------------------------

def test_problem_prompt_and_step_forms():
    assert PROBLEM.prompt_tokens() == ["<bos>", "3", "+", "5", "+", "4", "+", "2", "="]
    assert PROBLEM.running_sums() == [8, 12, 14] and PROBLEM.answer == 14
    assert GOOD == ["<r>", "3", "+", "5", "=", "8", ",", "4", "+", "8", "=", "12", ",", "+", "2", "=", "14",
                    "</r>", "<a>", "14", "</a>", "<eos>"]
    assert completion_text(GOOD).endswith("<a> 14 </a>")
    with pytest.raises(ValueError, match="one written sum and one form per step"):
        completion_tokens(PROBLEM, [8, 12], ["implied", "implied"])


@pytest.mark.parametrize(
    ("tokens", "format_reward", "correct"),
    [
        (GOOD, 10.0, True),
        (GOOD[:-1], 10.0, True),  # no <eos> (cut at max_new_tokens) but ends with the answer block
        (GOOD[:-3] + ["15", "</a>", "<eos>"], 10.0, False),  # wrong answer, full format
        # wrong reasoning, right answer: outcome reward only
        (completion_tokens(PROBLEM, [9, 13, 14], ["implied"] * 3), 10.0, True),
        (GOOD[:17] + ["</r>", "14", "<eos>"], 1.0, False),  # reasoning block only
        (GOOD[:17] + ["</r>", "<a>", "14", "<eos>"], 1.5, False),  # reasoning block, answer tag unclosed
        (GOOD[1:17] + ["<a>", "14", "</a>", "<eos>"], 1.0, False),  # answer block only
        (GOOD[:17] + ["<a>", "14", "</a>", "<eos>"], 1.5, False),  # answer block, reasoning tag unclosed
        (GOOD[:-1] + ["14", "<eos>"], 1.5, False),  # text after the answer block
        (["14", "<eos>"], 0.0, False),
    ],
)
def test_grade_follows_the_authors_format_rules(tokens, format_reward, correct):
    result = grade(tokens, PROBLEM)
    assert (result.format_reward, result.correct) == (format_reward, correct)
    assert result.reward("paper") == format_reward + (10.0 if correct else 0.0)
    assert result.reward("correctness") == (1.0 if correct else 0.0)


def test_grade_needs_the_exact_answer():
    # The authors' "reference contained in the answer" would accept 14 for 4; the demo compares exactly.
    problem = Problem((1, 1, 1, 1))
    tokens = completion_tokens(problem, [2, 3, 14], ["implied"] * 3)
    assert not grade(tokens, problem).correct
    with pytest.raises(ValueError, match="reward kind must be"):
        grade(GOOD, PROBLEM).reward("binary")


def test_noisy_demonstration():
    generator = torch.Generator().manual_seed(0)
    wrong = 0
    for _ in range(20):
        exact = noisy_demonstration(PROBLEM, generator, noise=0.0)
        assert grade(exact, PROBLEM).correct
        noisy = noisy_demonstration(PROBLEM, generator, noise=1.0)
        assert grade(noisy, PROBLEM).well_formed
        wrong += not grade(noisy, PROBLEM).correct
    assert wrong >= 15  # every step is off by 1 or 2; only offsets that cancel out give the right answer
    forms = {tuple(noisy_demonstration(PROBLEM, generator, 0.0)[:6]) for _ in range(40)}
    assert len(forms) == 3  # the three step forms all occur
    one_form = {tuple(noisy_demonstration(PROBLEM, generator, 0.0, ("sum_first",))) for _ in range(10)}
    assert one_form == {tuple(completion_tokens(PROBLEM, [8, 12, 14], ["sum_first"] * 3))}
    with pytest.raises(ValueError, match="forms must be a non-empty selection of"):
        noisy_demonstration(PROBLEM, generator, 0.0, ("backwards",))


def test_vocab_and_padding():
    vocab = build_vocab()
    assert len(vocab) == 10 + 41  # specials, tags, + = and ",", numbers 0..40
    assert vocab.decode(vocab.encode(["<r>", "40", "</a>"])) == ["<r>", "40", "</a>"]
    ids, mask = pad_left([[5, 6], [7]], vocab.pad_id)
    assert ids.tolist() == [[5, 6], [vocab.pad_id, 7]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_right([[5, 6], [7]], vocab.pad_id, width=3)
    assert ids.tolist() == [[5, 6, vocab.pad_id], [7, vocab.pad_id, vocab.pad_id]]
    assert mask.tolist() == [[1, 1, 0], [1, 0, 0]]


# --- model and sampling -----------------------------------------------------------------------------------

def test_left_padding_does_not_change_log_probs():
    vocab = build_vocab()
    model = build_model(len(vocab), seed=3).eval()
    short, long = Problem((1, 2, 3, 4)), Problem((3, 4, 5, 1, 2))
    rows = [vocab.encode(short.prompt_tokens()), vocab.encode(long.prompt_tokens())]
    prompts, prompt_mask = pad_left(rows, vocab.pad_id)
    responses = torch.tensor([vocab.encode(GOOD)] * 2)
    with torch.no_grad():
        batched, _ = response_log_probs(model, prompts, prompt_mask, responses)
        alone, _ = response_log_probs(model, prompts[:1, 2:], prompt_mask[:1, 2:], responses[:1])
    torch.testing.assert_close(batched[0], alone[0], rtol=1e-5, atol=1e-5)


def test_log_probs_and_entropy_at_a_temperature():
    vocab = build_vocab()
    model = build_model(len(vocab), seed=4).eval()
    prompts, prompt_mask = pad_left([vocab.encode(PROBLEM.prompt_tokens())], vocab.pad_id)
    responses = torch.tensor([vocab.encode(GOOD)])
    with torch.no_grad():
        log_probs, entropy = response_log_probs(model, prompts, prompt_mask, responses, temperature=0.9,
                                                with_entropy=True)
        ids = torch.cat([prompts, responses], dim=1)
        logits = next_token_logits(model, ids, torch.ones_like(ids))[:, prompts.shape[1] - 1 : -1] / 0.9
    expected = torch.log_softmax(logits, -1).gather(-1, responses[..., None]).squeeze(-1)
    torch.testing.assert_close(log_probs, expected, rtol=1e-5, atol=1e-5)
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(entropy, -(probs * torch.log(probs)).sum(-1), rtol=1e-4, atol=1e-5)


def test_cached_greedy_decoding_equals_a_full_recompute_loop():
    # The sampler caches keys and values; a naive loop recomputes the whole sequence for every token.
    vocab = build_vocab()
    model = build_model(len(vocab), seed=5).eval()
    problems = [Problem((1, 2, 3, 4)), Problem((5, 5, 5, 5, 5, 5))]
    prompts, mask = pad_left([vocab.encode(p.prompt_tokens()) for p in problems], vocab.pad_id)
    rows = sample(model, prompts, mask, eos_id=vocab.eos_id, pad_id=vocab.pad_id, max_new_tokens=12, generator=None)
    with torch.no_grad():
        for i in range(len(problems)):
            ids = prompts[i : i + 1, mask[i].argmax() :]
            expected = []
            for _ in range(12):
                token = int(next_token_logits(model, ids, torch.ones_like(ids))[0, -1].argmax())
                expected.append(token)
                if token == vocab.eos_id:
                    break
                ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            assert rows[i] == expected


# --- one step through verl ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def warmed_model():
    vocab = build_vocab()
    model = build_model(len(vocab), seed=0)
    warm_up(model, vocab, steps=60, batch_size=64, noise=0.2, lr=3e-3, generator=torch.Generator().manual_seed(0))
    return vocab, model


def make_trainer(warmed_model, algorithm: str, preset: str = "paper", steps: int = 3) -> Trainer:
    vocab, model = warmed_model
    settings = DemoOptions(preset=preset, steps=steps, prompts_per_step=4).settings()
    return Trainer(ALGORITHMS[algorithm], copy.deepcopy(model), vocab, settings, seed=1)


@pytest.mark.parametrize("preset", ["paper", "verl"])
def test_gtpo_step_advantages_equal_the_core_function(warmed_model, preset):
    trainer = make_trainer(warmed_model, "gtpo", preset)
    knobs = PRESETS[preset].gtpo
    for step in range(2):
        record = trainer.step()
        batch, uid = record.rollout.data.batch, record.rollout.data.non_tensor_batch["uid"]
        if step == 0:
            assert trainer.algo.gtpo.initial_entropy == pytest.approx(
                mean_completion_entropy(batch["entropy"], batch["response_mask"]), rel=1e-6)
        expected, _ = compute_gtpo_advantage(
            batch["token_level_rewards"], batch["response_mask"], batch["responses"], uid, batch["entropy"],
            initial_entropy=trainer.algo.gtpo.initial_entropy, norm_adv_by_std=PRESETS[preset].norm_adv_by_std,
            **knobs,
        )
        torch.testing.assert_close(batch["advantages"], expected, rtol=0, atol=0)
        rewards = set(batch["token_level_rewards"].sum(dim=1).tolist())
        allowed = {0.0, 1.0, 1.5, 10.0, 20.0} if preset == "paper" else {0.0, 1.0}
        assert rewards <= allowed


def test_null_arm_advantages_are_grpo_advantages(warmed_model):
    # On the same batch: the null arm (GTPO with every part off) gives bit-for-bit verl's GRPO advantages
    # in the paper preset (R - mean of rewards in {0, 1, 1.5, 10, 20} over 8 is exact in float32); in the
    # verl preset the float64 (GTPO) and float32 (verl) std divisions agree to rounding.
    for preset in ("paper", "verl"):
        trainer = make_trainer(warmed_model, "null", preset)
        record = trainer.step()
        data = record.rollout.data
        grpo = make_trainer(warmed_model, "grpo", preset)
        again = compute_advantages(copy.deepcopy(data), ALGORITHMS["grpo"], grpo.algo)
        if preset == "paper":
            assert torch.equal(data.batch["advantages"], again.batch["advantages"])
        else:
            torch.testing.assert_close(data.batch["advantages"], again.batch["advantages"], rtol=1e-6, atol=1e-6)


def test_gtpo_loss_has_zero_gradient_on_protected_tokens_of_negative_completions(warmed_model):
    trainer = make_trainer(warmed_model, "gtpo", steps=6)
    for _ in range(trainer.settings.steps):
        record = trainer.step()
        batch, uid = record.rollout.data.batch, record.rollout.data.non_tensor_batch["uid"]
        mask = batch["response_mask"].bool()
        weights = conflict_weights(batch["responses"], mask, uid, record.diagnostics.group_advantage)
        protected, negative = (weights == 0) & mask, record.diagnostics.group_advantage < 0
        if bool(protected.any()):
            break
    assert bool(protected.any()), "no protected token in 6 steps: the test would prove nothing"
    rows = negative[:, None] & mask

    def gradient(loss_mode: str, advantages: torch.Tensor) -> torch.Tensor:
        leaf = batch["old_log_probs"].clone().requires_grad_(True)
        loss, _ = get_policy_loss_fn(loss_mode)(
            old_log_prob=batch["old_log_probs"], log_prob=leaf, advantages=advantages, response_mask=rows,
            loss_agg_mode=trainer.actor.loss_agg_mode, config=trainer.actor, rollout_is_weights=None,
        )
        loss.backward()
        assert leaf.grad is not None
        return leaf.grad

    gtpo_grad = gradient("gtpo", batch["advantages"])
    assert torch.count_nonzero(gtpo_grad[protected]) == 0
    assert bool((gtpo_grad[rows & ~protected] != 0).any())
    grpo_grad = gradient("vanilla", record.diagnostics.group_advantage[:, None] * batch["response_mask"])
    assert bool((grpo_grad[protected] > 0).all())


def test_uid_groups_are_contiguous_and_rewards_sit_on_the_last_token(warmed_model):
    trainer = make_trainer(warmed_model, "grpo")
    record = trainer.step()
    data = record.rollout.data
    uid = data.non_tensor_batch["uid"]
    assert len(set(uid)) == trainer.settings.prompts_per_step
    assert all(len(set(uid[i : i + 8])) == 1 for i in range(0, len(uid), 8))
    lengths = data.batch["response_mask"].sum(dim=1)
    rewards = data.batch["token_level_rewards"]
    torch.testing.assert_close(rewards.sum(dim=1), torch.tensor(record.rollout.rewards))
    nonzero = np.nonzero(rewards.numpy())
    assert all(int(col) == int(lengths[row]) - 1 for row, col in zip(*nonzero, strict=True))
    assert float(lengths.float().mean()) >= 20  # reasoning-length completions


# --- the null test of the harness, and a study end to end ---------------------------------------------------

@pytest.mark.parametrize("preset", ["paper", "verl"])
def test_null_arm_and_grpo_train_identically_without_dual_clip(warmed_model, preset):
    # The harness is deterministic: with verl's dual-clip bound out of reach (the only difference between
    # the vanilla and gtpo losses), GTPO with every part off and GRPO sample the same tokens, log the same
    # losses and end with the same weights. Paper preset: bit for bit. verl preset: GTPO's float64 std
    # division and verl's float32 one differ by rounding, so the weights agree to float32 precision.
    vocab, model = warmed_model
    settings = replace(DemoOptions(preset=preset, prompts_per_step=4).settings(), dual_clip_ratio=1e9)
    trainers = [Trainer(ALGORITHMS[arm], copy.deepcopy(model), vocab, settings, seed=1) for arm in ("null", "grpo")]
    for _ in range(4):
        null, grpo = (trainer.step().metrics for trainer in trainers)
        assert null["demo/response_checksum"] == grpo["demo/response_checksum"]
        assert null["reward/mean"] == grpo["reward/mean"]
        for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_loss"):
            if preset == "paper":
                assert null[key] == grpo[key], key
            else:
                assert null[key] == pytest.approx(grpo[key], rel=1e-4, abs=1e-7), key
    for ours, theirs in zip(trainers[0].model.parameters(), trainers[1].model.parameters(), strict=True):
        if preset == "paper":
            assert torch.equal(ours, theirs)
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)  # Adam amplifies rounding a little


def test_null_study_is_exactly_grpo_and_the_harness_sees_a_real_difference(tmp_path):
    # The null test of the harness through the study code and verl's default dual-clip, able to fail:
    # GTPO with every part off samples the same batches as GRPO on every seed (same warm-up, same RL
    # seed per pair), so every paired difference and its interval is exactly 0. A harness that paired
    # different seeds or warm-ups, or a null arm that were not GRPO's update, breaks this. GTPO itself,
    # in the same study, must part from GRPO: a harness that compared an arm with itself would not.
    options = DemoOptions(algorithms=("grpo", "null", "gtpo"), cache=str(tmp_path), steps=3, prompts_per_step=2,
                          warmup_steps=30, eval_problems=16)
    study, _ = run_study(options, seeds=[0, 1, 2], jobs=1)
    assert study["null_identity"]["seeds_identical_throughout"] == 3
    for key in study["metrics"]:
        null = study["paired_vs_grpo"]["null"][key]
        assert (null["mean"], null["ci_low"], null["ci_high"]) == (0.0, 0.0, 0.0), key
    widths = [study["paired_vs_grpo"]["gtpo"][key]["ci_high"] - study["paired_vs_grpo"]["gtpo"][key]["ci_low"]
              for key in ("sampled_reward", "entropy", "response_length")]
    assert all(width > 0 for width in widths), widths


@pytest.fixture(scope="module")
def short_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["--seeds", "2", "--steps", "3", "--prompts", "2", "--warmup-steps", "30", "--jobs", "1",
                 "--arms", "gtpo,grpo", "--out", str(out), "--no-progress", "--device", "cpu",
                 "--eval-problems", "24", "--eval-every", "2"])
    assert code == 0
    return out


@pytest.mark.slow
def test_study_writes_study_json_with_cis_and_paired_differences(short_study: Path):
    for name in OUTPUT_FILES.values():
        assert (short_study / name).is_file() and (short_study / name).stat().st_size > 0
    study = json.loads((short_study / OUTPUT_FILES["study"]).read_text(encoding="utf-8"))
    assert study["seeds"] == [0, 1] and study["arms"] == ["gtpo", "grpo"] and study["preset"] == "paper"
    assert "Student t" in study["ci_method"]
    # every metric but the mechanism ones (undefined when a tiny run has no such token) is summarised
    always = {key for key, _ in FINAL_METRICS if not key.startswith(("conflict_logprob", "format_tag"))}
    assert always <= set(study["metrics"])
    for key in study["metrics"]:
        values = [study["per_seed"]["gtpo"][seed][key] for seed in ("0", "1")]
        interval = study["summary"]["gtpo"][key]
        assert interval["mean"] == pytest.approx(np.mean(values))
        assert interval["ci_low"] <= interval["mean"] <= interval["ci_high"] and interval["n"] == 2
        diffs = [study["per_seed"]["gtpo"][s][key] - study["per_seed"]["grpo"][s][key] for s in ("0", "1")]
        assert study["paired_vs_grpo"]["gtpo"][key]["mean"] == pytest.approx(np.mean(diffs))
    metrics = json.loads((short_study / OUTPUT_FILES["metrics"]).read_text(encoding="utf-8"))
    for seed in ("0", "1"):
        runs = metrics["seeds"][seed]["runs"]
        assert runs["gtpo"]["adv_estimator"] == "gtpo" and runs["grpo"]["loss_mode"] == "vanilla"
        # Same warm-up weights and RL seed: the first batch (before any update) is the same for both arms.
        first = [runs[arm]["history"][0] for arm in ("gtpo", "grpo")]
        assert first[0]["demo/response_checksum"] == first[1]["demo/response_checksum"]
        for record in runs["gtpo"]["history"]:
            # a mechanism metric is NaN in a step whose token set is empty (gtpo_plugin.demo.mechanisms)
            assert all(math.isfinite(value) for key, value in record.items() if key not in MECHANISM_KEYS)
            assert 0 <= record["accuracy/sampled"] <= record["format/accuracy"] <= 1
        # GTPO never pushed a protected token down.
        assert all(record["demo/protected_grad_abs"] == 0.0 for record in runs["gtpo"]["history"])
    assert (short_study / OUTPUT_FILES["plot"]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    summary = (short_study / OUTPUT_FILES["summary"]).read_text(encoding="utf-8")
    assert "2 seed(s)" in summary and "GTPO - GRPO" in summary and "conflict tokens" in summary
    assert "after - before" in summary


@pytest.mark.slow
def test_study_json_records_greedy_pass1_and_pass8_before_and_after_rl(short_study: Path):
    study = json.loads((short_study / OUTPUT_FILES["study"]).read_text(encoding="utf-8"))
    metrics = json.loads((short_study / OUTPUT_FILES["metrics"]).read_text(encoding="utf-8"))
    for seed in ("0", "1"):
        before = study["eval_before_rl"][seed]
        assert {"accuracy", "pass@1", "pass@8"} <= set(before) and before["problems"] == 24
        assert 0 <= before["pass@1"] <= before["pass@8"] <= 1  # one right sample of 8 is enough for pass@8
        for arm in ("gtpo", "grpo"):
            run = metrics["seeds"][seed]["runs"][arm]
            values = study["per_seed"][arm][seed]
            assert values["pass@1"] == run["eval_after"]["pass@1"] and values["pass@8"] == run["eval_after"]["pass@8"]
            assert values["greedy_accuracy"] == run["eval_after"]["accuracy"]
            # pass@1 measured before RL, at step 2 (--eval-every 2) and after the 3 steps
            curve = run["eval_curve"]
            assert [point["step"] for point in curve] == [0, 2, 3]
            assert curve[0]["pass@1"] == before["pass@1"] and curve[-1]["pass@1"] == values["pass@1"]
            assert values["peak_pass@1"] == max(point["pass@1"] for point in curve)
            assert values["peak_pass@1_step"] in (0, 2, 3)
    for arm in ("gtpo", "grpo"):
        for key, source in (("greedy_accuracy", "accuracy"), ("pass@1", "pass@1"), ("pass@8", "pass@8")):
            change = study["learning"][arm][key]
            expected = np.mean([study["per_seed"][arm][s][key] - study["eval_before_rl"][s][source]
                                for s in ("0", "1")])
            assert change["mean"] == pytest.approx(expected)


# --- options and imports ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps", "ten"], "--steps must be an integer"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--group-size", "1"], "--group-size must be >= 2"),
        (["--prompts", "3"], "--prompts must be even"),
        (["--lr", "-1"], "--lr must be a finite number > 0"),
        (["--arms", "gtpo,ppo"], "--arms must be distinct names from"),
        (["--arms", "gtpo,gtpo"], "--arms must be distinct names from"),
        (["--preset", "trl"], "invalid choice"),
        (["--device", "tpu"], "invalid choice"),
    ],
)
def test_bad_options_exit_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_demo_options_are_named():
    with pytest.raises(ValueError, match="preset must be one of"):
        DemoOptions(preset="trl")
    with pytest.raises(ValueError, match="algorithms must be names from"):
        DemoOptions(algorithms=("gtpo", "dapo"))


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
