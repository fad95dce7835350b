"""GTPO through verl's real Megatron actor on CPU at TP=1, TP=2 and PP=2: entropy, the loss, the step, resume.

``megatron_actor_run.py`` (see its docstring for what is real and what stands in) runs verl's Megatron
``ActorRolloutRefWorker`` on the tiny smoke-run Qwen2 (its embeddings tied to the output layer, so PP=2 splits
a tied pair across stages), one torchrun per layout: ``tp1`` one process, ``tp2`` and ``pp2`` two gloo
processes; ``bf16-tp2`` the GPU default (bf16, distributed optimizer) at TP=2. Each run is three steps, a
Megatron checkpoint after step 2 and step 3 again from it; 1 to 2 minutes of wall time on two shared cores.
``megatron_stages_run.py`` runs one step of verl's v1 trainer stages (TransferQueue) on the Megatron actor.

The references are independent: ``transformers`` on the same weights, one sequence at a time, the naive
GTPO advantage of ``tests/naive_reference.py``, and the naive loss with autograd and torch's Adam.
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
pytest.importorskip("megatron.core")
transformers = pytest.importorskip("transformers")

from naive_reference import naive_multiturn_gtpo_advantage  # noqa: E402
from verl_adapter.megatron_actor_run import CLIP_GRAD, LEARNING_RATE, SAVE_STEP, STEPS, TEMPERATURE  # noqa: E402

from gtpo_plugin.verl_adapter.settings import gtpo_config  # noqa: E402

RUNNER = Path(__file__).with_name("megatron_actor_run.py")
STAGES_RUNNER = Path(__file__).with_name("megatron_stages_run.py")
RUN_TIMEOUT_S = 900
# name: (processes, TP, PP, dtype)
LAYOUTS = {"tp1": (1, 1, 1, "float32"), "tp2": (2, 2, 1, "float32"), "pp2": (2, 1, 2, "float32"),
           "bf16-tp2": (2, 2, 1, "bfloat16")}
# tp1 runs on verl 0.9.0 too (verl_compat: verl's Megatron engine); the other layouts on verl 0.9.1 only (CI time)
FP32 = [pytest.param("tp1", marks=pytest.mark.verl_compat), "tp2", "pp2"]
# fp32 engine vs fp32 transformers: measured at most 6.4e-7 on log-probs and entropy at every layout (rounding
# of two implementations of the same model: fused QKV, other summation orders); 5e-6 leaves room for other BLAS.
FP32_ATOL = 5e-6
WEIGHT_STEP_ATOL = 3e-5
# bf16 engine vs bf16 transformers (TP=2): measured 8.6e-3 on log-probs, 2.0e-4 on entropy. A log-prob near
# ln V ≈ 5.8 is stored with a bf16 step of 2**-5; the entropy comes out of fp32 arithmetic on bf16 logits.
BF16_LOG_PROB_ATOL = 2**-5
BF16_ENTROPY_ATOL = 2e-3


def run_layout(name: str, model_dir: Path, run_dir: Path) -> Path:
    processes, tp, pp, dtype = LAYOUTS[name]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               str(RUNNER), "--model", str(model_dir), "--run-dir", str(run_dir), "--tp", str(tp), "--pp", str(pp),
               "--dtype", dtype]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}"
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Runs a layout on first use, once per module: ``runs(name)`` is its run folder."""
    done: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("megatron_actor_cpu")

    def get(name: str) -> Path:
        if name not in done:
            done[name] = run_layout(name, tiny_model_dir, root / name)
        return done[name]
    return get


def record(run_dir: Path, name: str) -> dict:
    return torch.load(run_dir / "steps" / f"{name}.pt", weights_only=False)


def sequences(batch: dict):
    """Per completion: prompt ids, response ids, response mask, unpadded."""
    for i in range(batch["prompts"].shape[0]):
        prompt_width = batch["prompts"].shape[1]
        attention = batch["attention_mask"][i].bool()
        prompt = batch["prompts"][i][attention[:prompt_width]]
        length = int(attention[prompt_width:].sum())
        yield prompt, batch["responses"][i, :length], batch["response_mask"][i, :length]


def reference_model(model_dir: Path, dtype: torch.dtype = torch.float32):
    return transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager", dtype=dtype)


def response_log_softmax(model, prompt: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    logits = model(torch.cat([prompt, response])[None]).logits[0, len(prompt) - 1: -1]
    return torch.log_softmax(logits.double() / TEMPERATURE, dim=-1)


REFERENCE_CACHE: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}


def reference_statistics(model, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per completion, the entropy and the log-probability of each response token (computed once per model
    dtype and batch: the layouts train on the same completions)."""
    key = (next(model.parameters()).dtype, batch["input_ids"].numpy().tobytes(),
           batch["attention_mask"].numpy().tobytes())
    if key not in REFERENCE_CACHE:
        REFERENCE_CACHE[key] = _reference_statistics(model, batch)
    return REFERENCE_CACHE[key]


def _reference_statistics(model, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    entropies, log_probs = [], []
    with torch.no_grad():
        for prompt, response, _ in sequences(batch):
            distribution = response_log_softmax(model, prompt, response)
            entropies.append(-(distribution.exp() * distribution).sum(-1))
            log_probs.append(distribution.gather(-1, response[:, None])[:, 0])
    return entropies, log_probs


def max_difference(engine: torch.Tensor, reference: list[torch.Tensor]) -> float:
    return max((engine[i, : len(row)].double() - row).abs().max().item() for i, row in enumerate(reference))


@pytest.mark.parametrize("layout", FP32)
def test_log_probs_and_entropy_match_transformers(runs, tiny_model_dir, layout):
    batch = record(runs(layout), "step_1")["batch"]
    entropies, log_probs = reference_statistics(reference_model(tiny_model_dir), batch)
    assert max_difference(batch["entropy"], entropies) < FP32_ATOL
    assert max_difference(batch["old_log_probs"], log_probs) < FP32_ATOL
    for i, row in enumerate(entropies):  # verl's padding beyond each response
        assert torch.all(batch["entropy"][i, len(row):] == 0)


@pytest.mark.parametrize("layout", FP32)
def test_gtpo_advantages_from_the_engines_entropy_match_the_naive_reference(runs, tiny_model_dir, layout):
    step = record(runs(layout), "step_1")
    batch, settings = step["batch"], gtpo_config(step["algorithm"])
    rows = list(sequences(batch))
    entropies = [batch["entropy"][i, : len(response)].tolist() for i, (_, response, _) in enumerate(rows)]
    masks = [mask.tolist() for _, _, mask in rows]
    reference, _ = reference_statistics(reference_model(tiny_model_dir), batch)
    measured = sum(row[mask.bool()].mean().item()
                   for row, (_, _, mask) in zip(reference, rows, strict=True)) / len(rows)
    assert settings.initial_entropy == pytest.approx(measured, abs=FP32_ATOL)
    expected = naive_multiturn_gtpo_advantage(
        [response.tolist() for _, response, _ in rows], masks, step["uid"],
        batch["token_level_rewards"].sum(1).tolist(), entropies, initial_entropy=settings.initial_entropy,
        amplification=settings.amplification, entropy_coef=settings.entropy_coef,
        entropy_threshold=settings.entropy_threshold, conflict_mode=settings.conflict_mode,
        norm_adv_by_std=step["algorithm"]["norm_adv_by_std_in_grpo"])
    for i, want in enumerate(expected):
        assert batch["advantages"][i, : len(want)].tolist() == pytest.approx(want, abs=1e-5)
    assert 0 < step["gtpo_metrics"]["gtpo/protected_token_frac"] < 1


def naive_step(model, batch: dict) -> tuple[float, float]:
    """The on-policy first step's GTPO loss (seq-mean-token-mean of -A·ratio, ratio = 1) with autograd, its
    gradient norm, then torch's Adam step with the actor's settings (clipping to CLIP_GRAD, no weight decay)."""
    model.zero_grad()
    per_sequence = []
    for i, (prompt, response, mask) in enumerate(sequences(batch)):
        log_prob = response_log_softmax(model, prompt, response).gather(-1, response[:, None])[:, 0]
        ratio = torch.exp(log_prob - log_prob.detach())
        per_sequence.append((-batch["advantages"][i, : len(response)].double() * ratio)[mask.bool()].mean())
    loss = torch.stack(per_sequence).mean()
    loss.backward()
    parameters = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, CLIP_GRAD).item()
    torch.optim.Adam(parameters, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8).step()
    return loss.item(), grad_norm


@pytest.mark.parametrize("layout", FP32)
def test_the_gtpo_update_matches_autograd_and_adam_on_the_reference_model(runs, tiny_model_dir, layout):
    run_dir = runs(layout)
    step = record(run_dir, "step_1")
    model = reference_model(tiny_model_dir)
    loss, grad_norm = naive_step(model, step["batch"])
    assert step["metrics"]["actor/pg_loss"][0] == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert step["metrics"]["grad_norm"][0] == pytest.approx(grad_norm, rel=1e-5)
    before, after = (torch.load(run_dir / f"weights_{n}.pt") for n in (0, 1))
    reference = dict(model.named_parameters())
    assert before.keys() <= reference.keys()
    for name, weight in after.items():
        moved, expected = weight - before[name], reference[name].detach() - before[name]
        assert moved.abs().max() > 0, name
        # Adam's first step is lr·g/(|g|+eps) per element, about lr·sign(g): rounding moves it only where |g|
        # is near eps; measured at most 9.3e-6 (TP=2), 6.4e-6 (TP=1, PP=2) against lr = 1e-3
        torch.testing.assert_close(moved, expected, rtol=0, atol=WEIGHT_STEP_ATOL, msg=name)


@pytest.mark.parametrize("layout", [*FP32, "bf16-tp2"])
def test_a_resume_from_the_megatron_checkpoint_gives_the_same_step(runs, layout):
    # ⟨H⟩_ini from gtpo_state.json, the weights and Adam's state from verl's Megatron checkpoint: step 3 after
    # loading the step-2 checkpoint is step 3 of the run that never stopped
    run_dir = runs(layout)
    continuous, resumed = record(run_dir, f"step_{STEPS}"), record(run_dir, f"resumed_{STEPS}")
    saved = json.loads((run_dir / "checkpoints" / f"global_step_{SAVE_STEP}" / "gtpo_state.json").read_text())
    assert saved["initial_entropy"] == record(run_dir, "step_1")["algorithm"]["gtpo"]["initial_entropy"]
    assert resumed["algorithm"]["gtpo"]["initial_entropy"] == saved["initial_entropy"]
    for name in ("entropy", "old_log_probs", "advantages"):
        torch.testing.assert_close(resumed["batch"][name], continuous["batch"][name], rtol=0, atol=0)
    for key in ("actor/pg_loss", "grad_norm"):
        assert resumed["metrics"][key] == continuous["metrics"][key], key
    final, again = (torch.load(run_dir / name) for name in ("weights_final.pt", "weights_resumed.pt"))
    # fp32: the same weights. bf16 with the distributed optimizer: the step's inputs, loss and gradient norm are
    # the same, but its update lands up to one bf16 step of the weight away (measured 4.9e-4 on weights, 3.9e-3
    # on norms near 1): the fp32 master weights do not come back bit for bit
    rtol, atol = (2**-7, LEARNING_RATE) if LAYOUTS[layout][3] == "bfloat16" else (0, 0)
    for name in final:
        torch.testing.assert_close(again[name], final[name], rtol=rtol, atol=atol, msg=name)


def test_bf16_log_probs_and_entropy_match_transformers_in_bf16(runs, tiny_model_dir):
    batch = record(runs("bf16-tp2"), "step_1")["batch"]
    entropies, log_probs = reference_statistics(reference_model(tiny_model_dir, torch.bfloat16), batch)
    assert max_difference(batch["entropy"], entropies) < BF16_ENTROPY_ATOL
    assert max_difference(batch["old_log_probs"], log_probs) < BF16_LOG_PROB_ATOL


def test_every_stand_in_is_reached(runs):
    # megatron_cpu_platform keeps only what the engine reaches: each stand-in is used by some layout
    installed, reached = set(), set()
    for name in LAYOUTS:
        for hits_file in runs(name).glob("hits_rank*.json"):
            report = json.loads(hits_file.read_text())
            installed |= set(report["stand_ins"])
            reached |= {hit.split(": ")[0] for hit in report["hits"]}
    assert installed and installed == reached, f"never reached: {sorted(installed - reached)}"


@pytest.fixture(scope="module")
def stages_run(tmp_path_factory, tiny_model_dir) -> dict:
    run_dir = tmp_path_factory.mktemp("megatron_stages_cpu")
    command = [sys.executable, str(STAGES_RUNNER), "--model", str(tiny_model_dir), "--run-dir", str(run_dir)]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"stages run failed:\n{result.stdout[-3000:]}\n{result.stderr[-8000:]}"
    return torch.load(run_dir / "step_1.pt", weights_only=False)


@pytest.mark.verl_compat  # the v1 trainer's stages on verl's Megatron engine
def test_the_v1_trainer_stages_run_gtpo_on_the_megatron_actor(stages_run, runs):
    # old-log-prob through TransferQueue, GTPO's advantage stage reading the entropy the Megatron engine wrote
    # there, the update: the same completions as the tp1 run's first step, so the same numbers as that run's
    # (checked above against transformers and the naive references)
    queued, metrics = stages_run["batch"], stages_run["metrics"]
    direct = record(runs("tp1"), "step_1")
    lengths = queued["response_length"].tolist()
    for i, (_, response, _) in enumerate(sequences(direct["batch"])):
        assert queued["responses"][i, : lengths[i]].tolist() == response.tolist()
        for name in ("entropy", "old_log_probs", "advantages"):
            torch.testing.assert_close(queued[name][i, : lengths[i]], direct["batch"][name][i, : lengths[i]],
                                       rtol=0, atol=1e-6, msg=name)
    assert metrics["actor/pg_loss"] == pytest.approx(direct["metrics"]["actor/pg_loss"][0], rel=1e-6)
    assert metrics["actor/grad_norm"] == pytest.approx(direct["metrics"]["grad_norm"][0], rel=1e-6)
    for key, value in direct["gtpo_metrics"].items():
        assert metrics[key] == pytest.approx(value, rel=1e-6), key
    assert metrics["gtpo/mean_completion_entropy"] == pytest.approx(metrics["actor/entropy"], rel=1e-5)


def test_a_stand_in_whose_target_moved_fails_naming_itself():
    # the check every stand-in runs at install: a target without the call it answers is refused, by name
    script = """
import megatron_cpu_platform as platform
stand_in = platform.StandIn("probe", "megatron.core.tensor_parallel.random", "_set_cuda_rng_state",
                            "a call that is not there", "why", lambda original: original)
try:
    stand_in.install()
except platform.StandInTargetMoved as error:
    print(error)
"""
    env = {**os.environ, "VERL_PLATFORM": "cpu",
           "PYTHONPATH": os.pathsep.join([str(RUNNER.parent), *sys.path])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "stand-in 'probe': megatron.core.tensor_parallel.random._set_cuda_rng_state no longer contains" \
        in result.stdout
