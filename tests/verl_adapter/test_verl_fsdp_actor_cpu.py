"""GTPO through verl's real FSDP actor on CPU: entropy layout, advantages, the loss's gradient, checkpoint resume.

``fsdp_actor_run.py`` (see its docstring for what is real and what stands in) runs verl's v1 trainer stages
with verl's ``ActorRolloutRefWorker`` on the tiny smoke-run Qwen2, in fp32, as the smoke recipe plans it:
a first run of 3 steps saving at step 2, and a second run resumed from that checkpoint to step 3. Each run
is a fresh process (about 20 s). ``test_verl_fit_vllm_cpu.py`` runs the recipe itself through ``fit()``.

The references here are computed independently with ``transformers`` on the same weights, loops over
sequences, and the naive GTPO reference of ``tests/naive_reference.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")
transformers = pytest.importorskip("transformers")

from naive_reference import naive_multiturn_gtpo_advantage  # noqa: E402
from verl_adapter.fsdp_actor_run import TEMPERATURE  # noqa: E402

from gtpo_plugin.smoke.report import GTPO_METRICS, SmokePlan  # noqa: E402

# CI runs it on verl 0.9.0 too (step 2): verl's FSDP engine: the entropy it writes and the loss it runs.
pytestmark = pytest.mark.verl_compat


RUNNER = Path(__file__).with_name("fsdp_actor_run.py")
PLAN = SmokePlan(total_steps=3, save_step=2)
RUN_TIMEOUT_S = 600


def run(model_dir: Path, run_dir: Path, resume_from: Path | None = None) -> None:
    command = [sys.executable, str(RUNNER), "--model", str(model_dir), "--run-dir", str(run_dir),
               "--steps", str(PLAN.total_steps), "--save-step", str(PLAN.save_step)]
    if resume_from is not None:
        command += ["--resume-from", str(resume_from)]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"run failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> Path:
    """first/ (steps 1-3, checkpoints at 2 and 3) and resumed/ (step 3 from first's step-2 checkpoint)."""
    root = tmp_path_factory.mktemp("fsdp_actor_cpu")
    run(tiny_model_dir, root / "first")
    run(tiny_model_dir, root / "resumed", resume_from=root / "first" / "checkpoints" / f"global_step_{PLAN.save_step}")
    return root


def step_record(runs: Path, run_name: str, step: int) -> dict:
    return torch.load(runs / run_name / "steps" / f"step_{step}.pt", weights_only=False)


def naive_token_statistics(model, batch: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response token: entropy of softmax(logits / T) and the token's log-probability; one sequence at a
    time, unpadded; zero beyond each response (verl's padding)."""
    entropy = torch.zeros(batch["responses"].shape, dtype=torch.float64)
    log_probs = torch.zeros(batch["responses"].shape, dtype=torch.float64)
    for i in range(len(batch["uid"])):
        prompt = batch["prompts"][i, : batch["prompt_length"][i]]
        response = batch["responses"][i, : batch["response_length"][i]]
        with torch.no_grad():
            logits = model(torch.cat([prompt, response])[None]).logits[0].double() / temperature
        for t in range(len(response)):
            distribution = torch.log_softmax(logits[len(prompt) - 1 + t], dim=-1)
            entropy[i, t] = -(distribution.exp() * distribution).sum()
            log_probs[i, t] = distribution[response[t]]
    return entropy, log_probs


def rows(matrix: torch.Tensor, batch: dict) -> list[list]:
    return [matrix[i, : batch["response_length"][i]].tolist() for i in range(len(batch["uid"]))]


@pytest.fixture(scope="module")
def first_step(runs, tiny_model_dir):
    """Step 1, with the naive entropy and log-probabilities of the initial weights."""
    record = step_record(runs, "first", 1)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager",
                                                               dtype=torch.float32)
    entropy, log_probs = naive_token_statistics(model, record["batch"], TEMPERATURE)
    return record, model, entropy, log_probs, TEMPERATURE


def test_the_engine_writes_entropy_and_log_probs_per_response_token(first_step):
    # verl's FSDP engine computes them over prompt+response, shifted by one; the trainer cuts out the response
    record, _, entropy, log_probs, _ = first_step
    batch = record["batch"]
    for name, expected in (("entropy", entropy), ("old_log_probs", log_probs)):
        got = batch[name].double()
        for i, length in enumerate(batch["response_length"].tolist()):
            torch.testing.assert_close(got[i, :length], expected[i, :length], rtol=0, atol=2e-5, msg=name)
            assert torch.all(got[i, length:] == 0)
    # the multi-turn completion's tool tokens are holes in the mask, inside the response
    holes = [i for i, length in enumerate(batch["response_length"].tolist())
             if batch["response_mask"][i, :length].min() == 0]
    assert holes, "the run must include a completion with masked tool tokens"


def test_gtpo_advantages_from_the_engines_entropy_match_the_naive_reference(first_step):
    record, _, entropy, _, _ = first_step
    batch, algorithm = record["batch"], record["algorithm"]
    masks = rows(batch["response_mask"], batch)
    model_entropies = [[e for e, m in zip(row, mask, strict=True) if m] for row, mask in zip(rows(entropy, batch),
                                                                                            masks, strict=True)]
    measured = sum(sum(e) / len(e) for e in model_entropies) / len(model_entropies)
    assert algorithm["gtpo"]["initial_entropy"] == pytest.approx(measured, abs=1e-5)
    settings = algorithm["gtpo"]
    expected = naive_multiturn_gtpo_advantage(
        rows(batch["responses"], batch), masks, batch["uid"], batch["rm_scores"].sum(1).tolist(),
        rows(entropy, batch), initial_entropy=measured, amplification=settings["amplification"],
        entropy_coef=settings["entropy_coef"], entropy_threshold=settings["entropy_threshold"],
        conflict_mode=settings["conflict_mode"], norm_adv_by_std=algorithm["norm_adv_by_std_in_grpo"])
    for got, want in zip(rows(batch["advantages"], batch), expected, strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    metrics = record["metrics"]
    assert 0 < metrics["gtpo/protected_token_frac"] < 1 and 0 < metrics["gtpo/amplified_token_frac"] < 1
    # verl's own entropy metric and GTPO's agree: the adapter read the same tokens verl did
    assert metrics["gtpo/mean_completion_entropy"] == pytest.approx(metrics["actor/entropy"], rel=1e-5)


def test_the_gtpo_loss_in_verls_engine_has_the_naive_value_and_gradient(first_step):
    # On-policy first step (one mini-batch, one epoch): ratio = 1, so the loss is -mean_i mean_t a_{i,t} over
    # the model's tokens (seq-mean-token-mean), and its gradient -mean_i mean_t a_{i,t} ∇log π(o_t); verl
    # splits the 8 completions into 4 micro-batches, which must not change either.
    record, model, _, _, temperature = first_step
    batch = record["batch"]
    model.zero_grad()
    per_sequence = []
    for i in range(len(batch["uid"])):
        prompt = batch["prompts"][i, : batch["prompt_length"][i]]
        length = int(batch["response_length"][i])
        response, mask = batch["responses"][i, :length], batch["response_mask"][i, :length].bool()
        logits = model(torch.cat([prompt, response])[None]).logits[0, len(prompt) - 1: -1] / temperature
        log_prob = torch.log_softmax(logits, dim=-1).gather(-1, response[:, None])[:, 0]
        ratio = torch.exp(log_prob - log_prob.detach())
        per_sequence.append((-batch["advantages"][i, :length] * ratio)[mask].mean())
    loss = torch.stack(per_sequence).mean()
    loss.backward()
    grad_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
    metrics = record["metrics"]
    assert metrics["actor/pg_loss"] == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    assert metrics["actor/grad_norm"] == pytest.approx(grad_norm.item(), rel=1e-4)


def test_a_resume_from_the_real_checkpoint_gives_the_same_step(runs):
    # ⟨H⟩_ini comes back from gtpo_state.json, the weights and Adam's state from verl's FSDP checkpoint:
    # step 3 after the resume is step 3 of the run that never stopped.
    continuous, resumed = (step_record(runs, name, PLAN.total_steps) for name in ("first", "resumed"))
    for name in ("entropy", "old_log_probs", "advantages"):
        torch.testing.assert_close(resumed["batch"][name], continuous["batch"][name], rtol=0, atol=1e-6)
    for key in ("actor/pg_loss", "actor/grad_norm", "actor/entropy", *GTPO_METRICS):
        assert resumed["metrics"][key] == pytest.approx(continuous["metrics"][key], rel=1e-6), key
    final = [torch.load(runs / name / "final_weights.pt") for name in ("first", "resumed")]
    assert final[0].keys() == final[1].keys()
    for name in final[0]:
        torch.testing.assert_close(final[1][name], final[0][name], rtol=0, atol=1e-6)
    saved = json.loads((runs / "first" / "checkpoints" / f"global_step_{PLAN.save_step}" / "gtpo_state.json")
                       .read_text())
    assert saved["initial_entropy"] == pytest.approx(
        step_record(runs, "first", 1)["algorithm"]["gtpo"]["initial_entropy"], rel=1e-12)
    assert resumed["metrics"]["gtpo/initial_entropy"] == saved["initial_entropy"]
