"""GTPO through verl's real FSDP actor on CPU in the recipes' layout (``use_remove_padding=true``), with the
entropy filter engaged.

``fsdp_actor_run.py --remove-padding`` (see its docstring for what is real and what stands in) runs one v1
step, in fp32, with ``sdpa`` attention: verl packs the 8 completions into one row, computes entropy and
log-probabilities there and cuts them back out per response token. The tiny model starts confident
(``logit_scale=CONFIDENT_LOGIT_SCALE``), so ⟨H⟩_ini ≤ ln 2 and GTPO's filter δ drops the completions whose
⟨H⟩_i > ln 2. One fresh process, about 25 s on an idle 2-core machine (73 s measured while shared).

The references are independent: ``transformers`` with eager attention, one unpadded sequence at a time, in
float64 after the logits; the naive GTPO loops of ``tests/naive_reference.py``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")
transformers = pytest.importorskip("transformers")

from naive_reference import naive_multiturn_gtpo_advantage  # noqa: E402
from verl_adapter.fsdp_actor_run import COMPLETIONS_PER_PROMPT, PROMPTS_PER_STEP, TEMPERATURE  # noqa: E402
from verl_adapter.test_verl_fsdp_actor_cpu import naive_token_statistics, rows  # noqa: E402

from gtpo_plugin.smoke.tiny_model import CONFIDENT_LOGIT_SCALE, save_tiny_model  # noqa: E402

RUNNER = Path(__file__).with_name("fsdp_actor_run.py")
RUN_TIMEOUT_S = 600
COMPLETIONS = PROMPTS_PER_STEP * COMPLETIONS_PER_PROMPT
# Measured on verl 0.9.1 (fp32, sdpa over the packed row vs eager per sequence; 0.9.0 passes too): at most 1.1e-5
# apart for the entropy and 1.8e-5 for the log-probabilities, whose logits are 36 times the random model's.
# Twice the larger; a one-column shift moves token entropies by 1e-2 to 1 (checked below).
PACKED_ATOL = 4e-5


@pytest.fixture(scope="module")
def packed_step(tmp_path_factory):
    """Step 1 of the packed run on the confident model, with the naive per-token statistics of its weights."""
    root = tmp_path_factory.mktemp("fsdp_actor_packed")
    model_dir = save_tiny_model(root / "model", seed=0, logit_scale=CONFIDENT_LOGIT_SCALE)
    command = [sys.executable, str(RUNNER), "--model", str(model_dir), "--run-dir", str(root / "run"),
               "--steps", "1", "--save-step", "1", "--remove-padding"]
    env = {**os.environ, "VERL_PLATFORM": "cpu", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"run failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    record = torch.load(root / "run" / "steps" / "step_1.pt", weights_only=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager",
                                                               dtype=torch.float32)
    entropy, log_probs = naive_token_statistics(model, record["batch"], TEMPERATURE)
    return record, model, entropy, log_probs


def entropy_one_column_early(model, batch: dict) -> list[list[float]]:
    """Each response token given the entropy of the position before it (the prompt's last position first):
    what GTPO would read if the packed layout were cut one column off."""
    result = []
    for i in range(len(batch["uid"])):
        prompt_length, length = int(batch["prompt_length"][i]), int(batch["response_length"][i])
        tokens = torch.cat([batch["prompts"][i, :prompt_length], batch["responses"][i, :length]])
        with torch.no_grad():
            logits = model(tokens[None]).logits[0].double() / TEMPERATURE
        distribution = torch.log_softmax(logits[prompt_length - 2: prompt_length - 2 + length], dim=-1)
        result.append((-(distribution.exp() * distribution).sum(-1)).tolist())
    return result


def completion_means(entropies: list[list[float]], masks: list[list[int]]) -> list[float]:
    return [sum(e for e, m in zip(row, mask, strict=True) if m) / sum(mask)
            for row, mask in zip(entropies, masks, strict=True)]


def naive_advantages(batch: dict, algorithm: dict, entropies: list[list[float]], initial_entropy: float):
    settings = algorithm["gtpo"]
    return naive_multiturn_gtpo_advantage(
        rows(batch["responses"], batch), rows(batch["response_mask"], batch), batch["uid"],
        batch["rm_scores"].sum(1).tolist(), entropies, initial_entropy=initial_entropy,
        amplification=settings["amplification"], entropy_coef=settings["entropy_coef"],
        entropy_threshold=settings["entropy_threshold"], conflict_mode=settings["conflict_mode"],
        norm_adv_by_std=algorithm["norm_adv_by_std_in_grpo"])


def test_the_packed_layout_gives_each_response_token_the_entropy_transformers_computes(packed_step):
    record, model, entropy, log_probs = packed_step
    batch = record["batch"]
    for name, expected in (("entropy", entropy), ("old_log_probs", log_probs)):
        got = batch[name].double()
        for i, length in enumerate(batch["response_length"].tolist()):
            torch.testing.assert_close(got[i, :length], expected[i, :length], rtol=0, atol=PACKED_ATOL, msg=name)
            assert torch.all(got[i, length:] == 0)
    # the tolerance sees a one-column shift in every completion
    early = entropy_one_column_early(model, batch)
    for i, length in enumerate(batch["response_length"].tolist()):
        shift = (batch["entropy"][i, :length].double() - torch.tensor(early[i])).abs().max()
        assert shift > 100 * PACKED_ATOL


def test_the_filter_drops_exactly_the_completions_above_tau_and_logs_their_count(packed_step):
    record, _, _, _ = packed_step
    batch, algorithm, metrics = record["batch"], record["algorithm"], record["metrics"]
    tau = algorithm["gtpo"]["entropy_threshold"]
    assert tau == pytest.approx(math.log(2))
    masks = rows(batch["response_mask"], batch)
    engine_entropy = rows(batch["entropy"].double(), batch)
    means = completion_means(engine_entropy, masks)
    initial = algorithm["gtpo"]["initial_entropy"]
    assert initial == pytest.approx(sum(means) / COMPLETIONS, abs=1e-6) and initial <= tau  # the filter is on
    dropped = [i for i, mean in enumerate(means) if mean > tau]
    assert len(dropped) == 3  # of 8, the confident model's completions with <H>_i in (0.75, 0.86)
    advantages = rows(batch["advantages"], batch)
    for i, row in enumerate(advantages):
        if i in dropped:
            assert all(a == 0 for a in row), i
        else:
            assert any(a != 0 for a, m in zip(row, masks[i], strict=True) if m), i
    assert metrics["gtpo/filtered_completion_frac"] == len(dropped) / COMPLETIONS
    for got, want in zip(advantages, naive_advantages(batch, algorithm, engine_entropy, initial), strict=True):
        assert got == pytest.approx(want, abs=1e-5)


def test_a_one_column_shift_of_the_entropy_would_change_what_the_filter_drops(packed_step):
    # Read one column early, the same completions' entropies put a 4th completion above ln 2 (and, one column
    # late, keep 3 but change every advantage): the test above would fail on either.
    record, model, _, _ = packed_step
    batch, algorithm = record["batch"], record["algorithm"]
    masks = rows(batch["response_mask"], batch)
    tau = algorithm["gtpo"]["entropy_threshold"]
    early = entropy_one_column_early(model, batch)
    late = [row[1:] + [0.0] for row in rows(batch["entropy"].double(), batch)]
    assert sum(mean > tau for mean in completion_means(early, masks)) == 4
    engine = rows(batch["advantages"], batch)
    for shifted in (early, late):
        initial = sum(completion_means(shifted, masks)) / COMPLETIONS
        expected = naive_advantages(batch, algorithm, shifted, initial)
        assert max(abs(g - w) for got, want in zip(engine, expected, strict=True)
                   for g, w in zip(got, want, strict=True)) > 1e-3
