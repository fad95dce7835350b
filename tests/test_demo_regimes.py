"""The demo's regimes (documented presets of the task), and one regime's study at a tiny size, as CI runs it."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("verl")

from gtpo_plugin.demo.cli import build_parser, write_outputs  # noqa: E402
from gtpo_plugin.demo.mechanisms import MECHANISM_KEYS  # noqa: E402
from gtpo_plugin.demo.options import DemoOptions  # noqa: E402
from gtpo_plugin.demo.regimes import REGIMES  # noqa: E402
from gtpo_plugin.demo.study import FINAL_METRICS, run_study  # noqa: E402
from gtpo_plugin.demo.task import sample_problems  # noqa: E402


def test_regime_values_apply_and_explicit_options_win():
    fragile = DemoOptions.for_regime("format-fragile")
    assert (fragile.regime, fragile.warmup_steps, fragile.steps, fragile.prompts_per_step) == (
        "format-fragile", 50, 200, 2)
    hard = DemoOptions.for_regime("negative-heavy", steps=5, lr=None)
    assert (hard.min_operands, hard.max_operands, hard.max_new_tokens, hard.steps, hard.lr) == (6, 7, 44, 5, None)
    assert hard.settings().min_operands == 6 and hard.settings().max_operands == 7
    assert DemoOptions.for_regime() == DemoOptions()
    # every regime builds valid options, and the non-default ones train at least 200 RL steps
    for name in REGIMES:
        options = DemoOptions.for_regime(name)
        assert name == "default" or options.steps >= 200


def test_regime_and_task_errors_name_the_field():
    with pytest.raises(ValueError, match="regime must be one of"):
        DemoOptions.for_regime("hard")
    with pytest.raises(ValueError, match="regime must be one of"):
        DemoOptions(regime="hard")
    with pytest.raises(ValueError, match="min_operands=5, max_operands=4"):
        DemoOptions(min_operands=5, max_operands=4)
    with pytest.raises(ValueError, match="max_operands <= 7"):
        DemoOptions(max_operands=8)
    with pytest.raises(ValueError, match="max_new_tokens=60 with up to 6 operands needs 73 positions"):
        DemoOptions(max_new_tokens=60)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--regime", "hard"])


def test_problems_follow_the_operand_range_and_the_default_draws_are_unchanged():
    hard = sample_problems(200, torch.Generator().manual_seed(3), 6, 7)
    assert {len(p.operands) for p in hard} == {6, 7}
    assert all(1 <= d <= 5 for p in hard for d in p.operands)
    assert sample_problems(50, torch.Generator().manual_seed(3)) == sample_problems(
        50, torch.Generator().manual_seed(3), 4, 6)


@pytest.fixture(scope="module")
def tiny_regime_study(tmp_path_factory):
    """The negative-heavy regime at a tiny size: 2 seeds x 3 RL steps of 2 prompts, gtpo, grpo and null."""
    out = tmp_path_factory.mktemp("regime")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the demo runs; a tiny model gains nothing from more threads
    options = DemoOptions.for_regime("negative-heavy", steps=3, prompts_per_step=2, warmup_steps=30,
                                     eval_problems=16, algorithms=("gtpo", "grpo", "null"), cache=str(out / "cache"))
    try:
        study, results = run_study(options, seeds=[0, 1], jobs=1)
    finally:
        torch.set_num_threads(threads)
    write_outputs(study, results, out / "study")
    return out / "study", results


def test_a_regime_study_records_the_mechanism_metrics_and_power(tiny_regime_study):
    out, results = tiny_regime_study
    study = json.loads((out / "study.json").read_text(encoding="utf-8"))
    assert study["options"]["regime"] == "negative-heavy" and study["options"]["steps"] == 3
    assert study["options"]["min_operands"] == 6 and study["seeds"] == [0, 1]
    assert study["arms"] == ["gtpo", "grpo", "null"] and study["power"]["power"] == 0.8
    for result in results:
        for arm, run in result["runs"].items():
            for record in run["history"]:
                assert set(MECHANISM_KEYS) <= set(record), arm
                assert all(math.isfinite(record[key]) for key in record if key not in MECHANISM_KEYS)
                assert 0.0 <= record["demo/above_tau_frac"] <= 1.0
    # the null arm is GRPO's update: every paired difference is 0, and so is the smallest detectable one
    for key in study["paired_vs_grpo"]["null"]:
        paired = study["paired_vs_grpo"]["null"][key]
        assert paired["mean"] == 0.0 and paired["detectable_difference"] == 0.0, key
    assert set(study["metrics"]) <= {key for key, _ in FINAL_METRICS}
    gtpo = study["paired_vs_grpo"]["gtpo"]["greedy_accuracy"]
    assert gtpo["detectable_difference"] > 0 or gtpo["sd_of_differences"] == 0
    assert (out / "gtpo_vs_grpo.png").read_bytes().startswith(b"\x89PNG")
    assert "regime negative-heavy" in (out / "summary.txt").read_text(encoding="utf-8")
