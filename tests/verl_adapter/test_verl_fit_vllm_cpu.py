"""The smoke recipe through verl's own ``main_ppo`` and ``fit()`` on CPU with verl's vLLM rollout
(``actor_rollout_ref.rollout.name=vllm``): its resolved configs, its checks, what vLLM generated, what verl's
logger wrote and what GTPO read.

``ARMS="gtpo grpo" DRY_RUN=1 bash recipes/run_smoke_1gpu.sh`` builds the tiny model and the parquet data and
prints the configs of the GTPO arm and its GRPO twin with a reference model (the no-KL twin's workers are a
subset of that twin's; ``scripts/gpu_check.sh`` runs all three arms). ``fsdp_fit_run.py`` runs
``verl.trainer.main_ppo`` on them unmodified: Hydra, ``validate_config``, ``run_ppo``'s ``ray.init`` and
``TaskRunnerV1``, the trainer's ``init()`` (Ray worker groups, reward loop, verl's ``vLLMReplica`` with its
``vLLMHttpServer``, the naive checkpoint engine, checkpoint loading), ``fit()``: vLLM samples, verl syncs the
actor's weights into vLLM after loading and after every step, the actor recomputes log-probs and entropies,
GTPO reads them. Runs: the GTPO arm's first run (3 steps, checkpoints at 2 and 3) and its run resumed from
global_step_2, and the GRPO twin's first run.
What stands in, because there is no GPU (see ``fsdp_fit_run.py``): the platform (``cpu_platform``) and, for
vLLM's CPU build, ``vllm_cpu`` (the distribution name ``vllm``; linear layers that keep their weights).
``gtpo_probe`` saves what GTPO read in each batch, for the checks against ``transformers``.
To keep the suite's time, the recipe is given, on its command line as a user may, smaller batches (2 prompts x
4 completions a step instead of 8 x 8) and a validation at step 3 (greedy, ``val_kwargs``), whose generations
verl writes to ``trainer.validation_data_dir``; every other setting is the recipe's. Each run takes 3 to 6
minutes on 2 shared cores, most of it start-up (vLLM's engine and its warm-up among it).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from helpers import METRIC_KEYS

verl = pytest.importorskip("verl")
transformers = pytest.importorskip("transformers")
from omegaconf import OmegaConf  # noqa: E402
from verl_adapter.process_tree import run_to_the_end  # noqa: E402  (psutil: Ray's, so verl's)

from gtpo_plugin.smoke.report import SAME_VALUE_RTOL, read_metrics  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash scripts")]

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("fsdp_fit_run.py")
RUNS = (("gtpo", "first"), ("grpo", "first"), ("gtpo", "resumed"))
SMALLER_BATCHES = ("data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                   "actor_rollout_ref.rollout.n=4")
VALIDATE_AT = 3
GREEDY_PROMPTS = 4  # validation prompts per run whose greedy output transformers regenerates
EOS_SHARE = 0.25  # of the completions, to end at <eos> within the length limit (make_eos_likelier)
TIMEOUT_S = 900
# <H>_ini written into global_step_2's gtpo_state.json before the resume: the first run's value moved by a
# relative 2e-10, so that only the state file can have given the resumed run this exact number (a re-measured
# mean of entropies equals it by no more than chance), while the recipe's check (relative tolerance 1e-9) still
# sees one <H>_ini everywhere.
MARK = 2e-10
# training/rollout_probs_diff_max is the largest |p_vLLM(t) - p_actor(t)| over a batch's tokens t, each the
# sampled token's probability at the rollout's temperature. Both run the same weights in bf16, whose rounding
# moves the logits (|z| < 1.5 here) by a few 1e-3 and the probabilities (p < 0.01 here: the random model is near
# uniform over its V = 320 tokens) by a few percent of themselves; measured: 5e-4 to 8e-4 at every step. vLLM
# starts on verl's `dummy` weights (near 0: every p = 1/V); with them, the difference would be the actor's
# max |p(t) - 1/V|, which the test measures on step 1's batch (6.2e-3 when measured) and requires to be at least
# twice the bound.
PROBS_DIFF_BOUND = 2e-3
# The actor's entropy is computed under bf16 autocast and stored in bf16: the exact value rounded to bf16 (at
# most half a bf16 spacing away) after a computation error measured at under 0.02 of a spacing.
ENTROPY_TOLERANCE_SPACINGS = 0.6


def recipe_env(**variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"SMOKE_DIR", "ARMS", "DRY_RUN"}}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]), **variables)
    return env


def make_eos_likelier(smoke_dir: Path, limit: int, temperature: float) -> None:
    """Raise ``<eos>``'s logit in the recipe's random model so that about ``EOS_SHARE`` of the completions end at
    it within ``limit`` tokens (the model as built ends about 1 in 8).

    Along each sequence the random model's final hidden state keeps almost one direction, which differs from
    prompt to prompt; adding a multiple of their mean direction to ``<eos>``'s output row (tied to its input
    embedding) raises its logit on every prompt. The multiple is set on the training prompts, then set again
    (raising ``<eos>`` lowers the others). Saved in the model's own dtype.
    """
    import pandas

    model = transformers.AutoModelForCausalLM.from_pretrained(smoke_dir / "model")
    dtype = model.dtype
    model = model.float().eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(smoke_dir / "model")
    eos = tokenizer.eos_token_id
    prompts = [tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)["input_ids"]
               for messages in pandas.read_parquet(smoke_dir / "data" / "gsm8k" / "train.parquet")["prompt"]]
    wanted = 1 - (1 - EOS_SHARE) ** (1 / limit)  # per token
    with torch.no_grad():
        hidden = torch.cat([model(ids, output_hidden_states=True).hidden_states[-1][0] for ids in prompts])
        direction = hidden.mean(0)
        for _ in range(2):
            now = float(torch.softmax(model.lm_head(hidden) / temperature, -1)[:, eos].mean())
            model.lm_head.weight[eos] += temperature * math.log(wanted / now) * direction / direction.norm() ** 2
    model.to(dtype).save_pretrained(smoke_dir / "model")


def mark_initial_entropy(checkpoint: Path) -> float:
    """Move ⟨H⟩_ini in ``checkpoint/gtpo_state.json`` by ``MARK`` (relative); returns the value written."""
    state_file = checkpoint / "gtpo_state.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    state["initial_entropy"] *= 1 + MARK
    state_file.write_text(json.dumps(state), encoding="utf-8")
    return state["initial_entropy"]


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    # Here, not at module level: collecting this module must not need vLLM where its tests are deselected.
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("smoke_fit") / "smoke_run"
    dry_run = run_to_the_end(["bash", str(REPO / "recipes" / "run_smoke_1gpu.sh"), *SMALLER_BATCHES,
                              f"trainer.test_freq={VALIDATE_AT}"],
                             # verl's plugin loading cannot change a printed config; off, it saves CPU
                             env=recipe_env(SMOKE_DIR=str(root), DRY_RUN="1", ARMS="gtpo grpo",
                                            VERL_USE_EXTERNAL_PLUGINS="none"),
                             timeout_s=TIMEOUT_S, log=root.parent / "dry_run.log")
    assert dry_run.ok, dry_run.output[-4000:]
    config = OmegaConf.load(root / "configs" / "gtpo_first.yaml")
    make_eos_likelier(root, config.data.max_response_length, config.actor_rollout_ref.rollout.temperature)
    for arm, run in RUNS:
        if (arm, run) == ("gtpo", "resumed"):
            marked = mark_initial_entropy(root / "runs" / "gtpo" / "first" / "checkpoints" / "global_step_2")
            (root / "marked_initial_entropy.json").write_text(json.dumps(marked), encoding="utf-8")
        result = run_to_the_end([sys.executable, str(RUNNER), str(root / "configs" / f"{arm}_{run}.yaml"),
                                 "--probe", str(root / "probe" / f"{arm}_{run}"),
                                 f"trainer.validation_data_dir={root / 'validation' / f'{arm}_{run}'}"],
                                env=recipe_env(), timeout_s=TIMEOUT_S, log=root.parent / f"{arm}_{run}.log")
        assert result.returncode == 0, f"{arm} {run} (exit {result.returncode}):\n{result.output[-8000:]}"
        assert not result.left_running, f"{arm} {run}: processes outlived main_ppo: {result.left_running}"
    return root


def logged_steps(smoke_dir: Path, arm: str, run: str) -> dict[int, dict]:
    return read_metrics(smoke_dir / "runs" / arm / run / "metrics.jsonl")


def test_the_recipes_own_check_passes_on_what_verl_wrote(smoke_dir):
    result = run_to_the_end([sys.executable, "-m", "gtpo_plugin.smoke", "check", str(smoke_dir), "--arms", "gtpo",
                             "--model", str(smoke_dir / "model")], env=recipe_env(), timeout_s=TIMEOUT_S,
                            log=smoke_dir.parent / "check.log")
    assert result.ok, result.output
    assert result.output.count("| ") >= 3  # the table's row
    assert "smoke run OK" in result.output


def uniform_scores(metrics: dict) -> bool:
    """Every completion of the step scored the same (the random model's usually score 0; the paper reward's
    partial format credit of 1 comes by chance when random tokens hold a reasoning block)."""
    return metrics["critic/score/max"] == metrics["critic/score/min"]


def test_every_step_ran_on_sampled_completions_and_gtpo_updated_the_model(smoke_dir):
    # Where every score is the same, GRPO's advantages and its policy loss are exactly 0, and so is its gradient
    # while the policy is still the reference (the KL term's gradient is 0 there); GTPO's -gamma <H>_i term
    # moves the model at every step.
    for arm, run in RUNS:
        metrics = logged_steps(smoke_dir, arm, run)
        steps = [1, 2, 3] if run == "first" else [3]
        assert sorted(metrics) == steps, (arm, run)
        still_the_reference = run == "first"
        for step in steps:
            assert metrics[step]["response_length/mean"] > 0
            if arm == "gtpo":
                assert metrics[step]["actor/grad_norm"] > 0, step
                continue
            assert not any(key.startswith("gtpo/") for key in metrics[step])
            if uniform_scores(metrics[step]):
                assert metrics[step]["critic/advantages/max"] == metrics[step]["critic/advantages/min"] == 0, step
                assert metrics[step]["actor/pg_loss"] == 0, step
                if still_the_reference:
                    assert metrics[step]["actor/grad_norm"] == 0, step
            still_the_reference = still_the_reference and metrics[step]["actor/grad_norm"] == 0


def test_vllms_probabilities_are_the_actors_at_every_step(smoke_dir):
    # the proof that verl's weight sync reached vLLM, after the checkpoint load and after every update
    for arm, run in RUNS:
        for step, metrics in logged_steps(smoke_dir, arm, run).items():
            assert 0 < metrics["training/rollout_probs_diff_max"] < PROBS_DIFF_BOUND, (arm, run, step)
    # ... which vLLM's own start-up weights (near 0, so every probability 1/V) would not have passed
    temperature = OmegaConf.load(smoke_dir / "configs" / "gtpo_first.yaml").actor_rollout_ref.rollout.temperature
    model = model_at(smoke_dir, None)
    unsynced = 0.0
    for prompt, response, mask in rows_of(probed_batches(smoke_dir, "gtpo", "first")[1], "prompts", "responses",
                                          "response_mask"):
        valid = int(mask.sum())
        probabilities = torch.softmax(logits_of(model, prompt, response[:valid]) / temperature, -1)
        sampled = probabilities[torch.arange(valid), response[:valid]]
        unsynced = max(unsynced, float((sampled - 1 / model.config.vocab_size).abs().max()))
    assert unsynced > 2 * PROBS_DIFF_BOUND


def actor_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """verl's FSDP actor checkpoint (world size 1: each DTensor's local part is the whole tensor)."""
    state = torch.load(checkpoint / "actor" / "model_world_size_1_rank_0.pt", weights_only=False)
    return {name: value.to_local() if hasattr(value, "to_local") else value for name, value in state.items()}


def model_at(smoke_dir: Path, checkpoint: Path | None):
    """The smoke model in fp32, with a checkpoint's actor weights when given (the initial weights otherwise)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(smoke_dir / "model", dtype=torch.float32)
    if checkpoint is not None:
        model.load_state_dict(actor_weights(checkpoint), strict=True)
    return model.eval()


def probed_batches(smoke_dir: Path, arm: str, run: str) -> dict[int, dict[str, list[torch.Tensor]]]:
    """What GTPO read, by training step (the resumed run's first step is 3)."""
    folder = smoke_dir / "probe" / f"{arm}_{run}"
    first_step = 1 if run == "first" else 3
    files = sorted(folder.glob("batch_*.pt"), key=lambda path: int(path.stem.split("_")[1]))
    return {first_step + index: torch.load(path) for index, path in enumerate(files)}


def rows_of(batch: dict[str, list[torch.Tensor]], *fields: str):
    return zip(*(batch[field] for field in fields), strict=True)


def logits_of(model, prompt: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """``[len(response), V]`` in fp64: the logits each response token was drawn from."""
    with torch.no_grad():
        return model(torch.cat([prompt, response])[None]).logits[0, len(prompt) - 1:-1].double()


def bf16_spacing(values: torch.Tensor) -> torch.Tensor:
    """The distance between neighbouring bf16 numbers (8 significant bits) around each of ``values`` (> 0)."""
    return torch.exp2(torch.floor(torch.log2(values)) - 7)


def test_the_entropy_gtpo_read_is_the_actors_recomputed_with_transformers(smoke_dir):
    # The actor's weights are known at step 1 (the model) and at step 3 (global_step_2, for both runs).
    temperature = OmegaConf.load(smoke_dir / "configs" / "gtpo_first.yaml").actor_rollout_ref.rollout.temperature
    checkpoint = smoke_dir / "runs" / "gtpo" / "first" / "checkpoints" / "global_step_2"
    for run, step, weights in (("first", 1, None), ("first", 3, checkpoint), ("resumed", 3, checkpoint)):
        model = model_at(smoke_dir, weights)
        for prompt, response, mask, entropy in rows_of(probed_batches(smoke_dir, "gtpo", run)[step], "prompts",
                                                       "responses", "response_mask", "entropy"):
            valid = int(mask.sum())
            assert mask[:valid].all() and valid > 0
            logits = logits_of(model, prompt, response[:valid]) / temperature
            expected = torch.distributions.Categorical(logits=logits).entropy()
            error = (entropy[:valid].double() - expected).abs() / bf16_spacing(expected)
            assert float(error.max()) <= ENTROPY_TOLERANCE_SPACINGS, (run, step, error.max())


def test_the_batches_hold_completions_ended_at_eos_and_truncated_ones(smoke_dir):
    # With <eos> made likelier (make_eos_likelier), each completion ends at it with probability about 1/4 (1/8
    # without): among the GTPO arm's 32 completions (3 batches + 1 resumed) and the GRPO twin's 24, none ending
    # at <eos> has a probability of 0.75^56 < 1e-6.
    limit = OmegaConf.load(smoke_dir / "configs" / "gtpo_first.yaml").data.max_response_length
    eos = transformers.AutoTokenizer.from_pretrained(smoke_dir / "model").eos_token_id
    ended = truncated = 0
    for run in ("first", "resumed"):
        for batch in probed_batches(smoke_dir, "gtpo", run).values():
            for response, mask in rows_of(batch, "responses", "response_mask"):
                valid = int(mask.sum())  # GTPO's mask: every generated token, <eos> included
                assert mask[:valid].all()
                if int(response[valid - 1]) == eos:
                    ended += 1
                else:
                    assert valid == limit, "a completion neither ended at <eos> nor reached the length limit"
                    truncated += 1
    clipped = [metrics["response_length/clip_ratio"] for metrics in logged_steps(smoke_dir, "grpo", "first").values()]
    ended_in_grpo = min(clipped) < 1  # some ended before the limit: at <eos>
    assert (ended > 0 or ended_in_grpo) and truncated > 0 and max(clipped) > 0, (ended, truncated, clipped)


def test_vllms_greedy_output_after_a_sync_is_transformers_greedy_output_from_the_actors_weights(smoke_dir):
    # verl's validation at step 3 runs after that step's update and weight sync, greedy (val_kwargs); the
    # checkpoint of step 3 holds the weights synced. transformers generates from them in fp32, vLLM in bf16: the
    # smallest gap between the two most likely tokens on these greedy paths measured 0.010 in logits, above
    # bf16's rounding of logits under 1.5. The first GREEDY_PROMPTS prompts of each validation are compared:
    # transformers generates one token at a time on CPU, and the whole validation set of the three runs took 330 s
    # of a CI run.
    limit = OmegaConf.load(smoke_dir / "configs" / "gtpo_first.yaml").data.max_response_length
    eos = transformers.AutoTokenizer.from_pretrained(smoke_dir / "model").eos_token_id
    for arm, run in RUNS:
        model = model_at(smoke_dir, smoke_dir / "runs" / arm / run / "checkpoints" / f"global_step_{VALIDATE_AT}")
        validations = sorted((smoke_dir / "probe" / f"{arm}_{run}").glob("validation_*.pt"))
        assert len(validations) == 1, (arm, run, validations)  # one validation, at step 3
        generated = torch.load(validations[0])
        assert len(generated["prompts"]) >= GREEDY_PROMPTS
        for prompt, response in itertools.islice(rows_of(generated, "prompts", "responses"), GREEDY_PROMPTS):
            with torch.no_grad():
                output = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=False,
                                        max_new_tokens=limit, eos_token_id=eos, pad_token_id=eos)
            assert response.tolist() == output[0, len(prompt):].tolist(), (arm, run)


@pytest.fixture(scope="module")
def grpo_first(smoke_dir):
    return logged_steps(smoke_dir, "grpo", "first")


def test_grpo_changed_the_weights_by_weight_decay_only_where_its_gradient_was_0(smoke_dir, grpo_first):
    # A zero gradient leaves AdamW only its decoupled decay, p <- p * (1 - lr * weight_decay) in fp32, once
    # a step. At the recipe's lr 1e-6 and decay 0.01 the factor rounds to 1 in fp32, so the weights stay the
    # model's own; any Adam step (about lr per weight, whatever the gradient's size) would show. The KL term
    # adds no gradient either: verl's low_var_kl has a zero gradient where the policy is the reference. When a
    # completion of step 1 or 2 earned a partial format credit, GRPO took a real step: then the weights moved.
    config = OmegaConf.load(smoke_dir / "configs" / "grpo_first.yaml")
    weight_decay = config.actor_rollout_ref.actor.optim.weight_decay
    initial = transformers.AutoModelForCausalLM.from_pretrained(smoke_dir / "model", dtype=torch.float32).state_dict()
    saved = actor_weights(smoke_dir / "runs" / "grpo" / "first" / "checkpoints" / "global_step_2")
    assert saved.keys() <= initial.keys() and len(saved) > 0
    zero_gradient = all(grpo_first[step]["actor/grad_norm"] == 0 for step in (1, 2))
    largest_move = 0.0
    for name, weights in saved.items():
        expected = initial[name].clone()
        for step in (1, 2):
            expected.mul_(1 - grpo_first[step]["actor/lr"] * weight_decay)
        if zero_gradient:
            torch.testing.assert_close(weights, expected, rtol=0, atol=0, msg=name)
        largest_move = max(largest_move, float((weights - expected).abs().max()))
    assert zero_gradient or largest_move > grpo_first[1]["actor/lr"] / 2


def test_the_grpo_twin_has_a_kl_term_starting_at_0_and_gtpo_none(smoke_dir, grpo_first):
    assert grpo_first[1]["actor/kl_loss"] == pytest.approx(0, abs=1e-6)
    assert not any("kl_loss" in key for key in logged_steps(smoke_dir, "gtpo", "first")[1])


def test_the_resumed_gtpo_run_used_the_initial_entropy_of_its_checkpoint(smoke_dir):
    first = logged_steps(smoke_dir, "gtpo", "first")
    resumed = logged_steps(smoke_dir, "gtpo", "resumed")
    marked = json.loads((smoke_dir / "marked_initial_entropy.json").read_text(encoding="utf-8"))
    assert marked != first[1]["gtpo/initial_entropy"]
    assert math.isclose(marked, first[1]["gtpo/initial_entropy"], rel_tol=SAME_VALUE_RTOL)
    # the value of global_step_2's gtpo_state.json, to the last bit: read, not measured again
    assert resumed[3]["gtpo/initial_entropy"] == marked
    saved = json.loads((smoke_dir / "runs" / "gtpo" / "resumed" / "checkpoints" / "global_step_3"
                        / "gtpo_state.json").read_text(encoding="utf-8"))
    assert saved["initial_entropy"] == marked


def test_the_resumed_run_trains_step_3s_prompts_not_a_replay_of_step_1s(smoke_dir):
    # verl restores its dataloader from global_step_2/data.pt (docs/verl.md, "What verl's resume replays")
    def prompts(batch: dict[str, list[torch.Tensor]]) -> list[tuple[int, ...]]:
        return sorted(tuple(prompt.tolist()) for prompt in batch["prompts"])

    first, resumed = probed_batches(smoke_dir, "gtpo", "first"), probed_batches(smoke_dir, "gtpo", "resumed")
    assert prompts(resumed[3]) == prompts(first[3]) != prompts(first[1])


def test_fits_own_logger_wrote_one_record_a_step_with_every_gtpo_metric_finite(smoke_dir):
    # verl's file logger writes what fit()'s self.logger.log passes it, one JSON line per call
    for run, steps in (("first", [1, 2, 3]), ("resumed", [3])):
        lines = (smoke_dir / "runs" / "gtpo" / run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        assert [record["step"] for record in records] == steps, run
        for record in records:
            values = {key: record["data"].get(key) for key in METRIC_KEYS}
            assert all(isinstance(value, float) and math.isfinite(value) for value in values.values()), values
