"""The smoke run's checks and table on runs written here with verl's own file logger and the adapter's state file.

A good run is made the way verl and the adapter write one (FileLogger records, ``actor/``-prefixed worker
metrics, ``gtpo_state.json`` from ``save_state``); each defect the checks exist for is then put in alone
and must be reported.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from gtpo_plugin import compute_gtpo_terms, gtpo_metrics
from gtpo_plugin.smoke.cli import main
from gtpo_plugin.smoke.report import (
    ARMS,
    ENTROPY_RTOL,
    GTPO_METRICS,
    PEAK_MEMORY,
    SmokePlan,
    check_gtpo_step,
    check_smoke_dir,
    format_table,
    read_metrics,
)

pytest.importorskip("verl")
from verl.trainer.ppo.core_algos import agg_loss  # noqa: E402
from verl.utils.py_functional import rename_dict  # noqa: E402
from verl.utils.tracking import FileLogger  # noqa: E402

from gtpo_plugin.verl_adapter.state import save_state  # noqa: E402

H_INI = 5.1
VOCAB = 320


def step_metrics(arm: str, step: int, initial_entropy: float = H_INI) -> dict:
    worker = {"perf/max_memory_allocated_gb": 1.0 + step, "perf/max_memory_reserved_gb": 2.0 + step, "loss": 0.1}
    metrics = {"timing_s/step": 10.0 if step == 1 else 2.0 * step, "actor/entropy": 5.0 + 0.01 * step,
               **rename_dict(worker, "actor/")}  # as verl's trainer names worker metrics
    if arm == "gtpo":
        metrics.update({"gtpo/protected_token_frac": 0.1, "gtpo/amplified_token_frac": 0.2,
                        "gtpo/filtered_completion_frac": 0.0,
                        "gtpo/mean_completion_entropy": 5.0 + 0.01 * step + 1e-6,
                        "gtpo/initial_entropy": initial_entropy})
    return metrics


def write_run(smoke_dir, arm, run, steps, initial_entropy=H_INI, monkeypatch=None):
    folder = smoke_dir / "runs" / arm / run
    folder.mkdir(parents=True)
    monkeypatch.setenv("VERL_FILE_LOGGER_PATH", str(folder / "metrics.jsonl"))
    logger = FileLogger("gtpo", f"smoke_{arm}")
    for step in steps:
        logger.log(step_metrics(arm, step, initial_entropy), step)
    logger.finish()
    for step in (2, 3) if run == "first" else (3,):
        checkpoint = folder / "checkpoints" / f"global_step_{step}"
        checkpoint.mkdir(parents=True)
        if arm == "gtpo":
            save_state({"gtpo": {"initial_entropy": initial_entropy}}, str(checkpoint))


@pytest.fixture
def smoke_dir(tmp_path, monkeypatch):
    for arm in ARMS:
        write_run(tmp_path, arm, "first", (1, 2, 3), monkeypatch=monkeypatch)
        write_run(tmp_path, arm, "resumed", (3,), monkeypatch=monkeypatch)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"vocab_size": VOCAB}))
    return tmp_path


def check(smoke_dir, arms=tuple(ARMS)):
    return check_smoke_dir(smoke_dir, arms, SmokePlan(), model_dir=smoke_dir / "model")


def test_gtpo_metric_names_are_the_plugins():
    terms = compute_gtpo_terms(torch.tensor([[0.0, 1.0], [0.0, 0.0]]), torch.ones(2, 2), torch.tensor([[3, 4], [3, 5]]),
                               np.array(["q", "q"], dtype=object), torch.full((2, 2), 0.5), initial_entropy=0.4)
    assert set(gtpo_metrics(terms)) == set(GTPO_METRICS)


def test_memory_pattern_matches_verls_worker_metric_names():
    renamed = rename_dict({"perf/max_memory_allocated_gb": 1.0, "perf/max_memory_reserved_gb": 2.0}, "actor/")
    assert [key for key in renamed if PEAK_MEMORY["allocated"].search(key)] == ["actor/perf/max_memory_allocated_gb"]
    assert [key for key in renamed if PEAK_MEMORY["reserved"].search(key)] == ["actor/perf/max_memory_reserved_gb"]
    assert not PEAK_MEMORY["allocated"].search("perf/max_memory_allocated_gb_x")


def test_good_run_passes_and_gives_the_table(smoke_dir):
    problems, rows = check(smoke_dir)
    assert problems == []
    assert [row.arm for row in rows] == list(ARMS)
    row = rows[0]
    # step times 10, 4, 6: step 1 alone, then (4 + 6) / 2; memory: the largest over both runs (step 3: 4 and 5 GB).
    assert (row.first_step_s, row.later_step_s, row.allocated_gb, row.reserved_gb) == (10.0, 5.0, 4.0, 5.0)
    table = format_table(rows)
    assert table.splitlines()[2] == "| GTPO | 10.0 | 5.0 | 4.00 | 5.00 |"
    assert "GRPO + reference model" in table.splitlines()[4]


def test_file_logger_records_read_back(smoke_dir):
    steps = read_metrics(smoke_dir / "runs" / "gtpo" / "first" / "metrics.jsonl")
    assert sorted(steps) == [1, 2, 3] and steps[2]["gtpo/initial_entropy"] == H_INI


def rewrite(path, edit):
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        edit(record["step"], record["data"])
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


@pytest.mark.parametrize(
    ("run", "edit", "message"),
    [
        ("first", lambda s, d: d.pop("gtpo/amplified_token_frac"), "step 1: gtpo/amplified_token_frac is None"),
        ("resumed", lambda s, d: d.update({"gtpo/protected_token_frac": math.nan}),
         "resumed run, step 3: gtpo/protected_token_frac is nan, expected a finite number"),
        ("first", lambda s, d: d.update({"actor/entropy": 3.0}), "the adapter does not read the entropy verl computed"),
        ("first", lambda s, d: d.update({"gtpo/mean_completion_entropy": 6.0, "actor/entropy": 6.0}),
         f"outside (0, ln V = {math.log(VOCAB)}]"),
        ("first", lambda s, d: d.update({"gtpo/filtered_completion_frac": 1.5}), "is not a fraction in [0, 1]"),
        ("first", lambda s, d: d.pop("actor/entropy"), "verl's actor/entropy is missing"),
        ("first", lambda s, d: d.pop("timing_s/step"), "first run, step 1: no timing_s/step"),
        # The resumed run measured <H>_ini anew instead of reading gtpo_state.json.
        ("resumed", lambda s, d: d.update({"gtpo/initial_entropy": 4.9}), "<H>_ini changed: 4.9 at resumed run"),
    ],
)
def test_each_defect_is_reported(smoke_dir, run, edit, message):
    rewrite(smoke_dir / "runs" / "gtpo" / run / "metrics.jsonl", edit)
    problems, rows = check(smoke_dir)
    assert any(message in problem for problem in problems), problems
    assert [row.arm for row in rows] == ["grpo_no_kl", "grpo"]  # the other arms still get their row


def test_missing_state_file_is_reported(smoke_dir):
    (smoke_dir / "runs" / "gtpo" / "resumed" / "checkpoints" / "global_step_3" / "gtpo_state.json").unlink()
    problems, _ = check(smoke_dir)
    assert any("no initial_entropy in" in p and "resumed/checkpoints/global_step_3/gtpo_state.json" in p
               for p in problems), problems


def test_a_run_that_did_not_resume_is_reported(smoke_dir, monkeypatch):
    shutil.rmtree(smoke_dir / "runs" / "grpo" / "resumed")
    write_run(smoke_dir, "grpo", "resumed", (1, 2, 3), monkeypatch=monkeypatch)  # started from scratch
    problems, _ = check(smoke_dir)
    assert problems == ["grpo, resumed run: logged steps [1, 2, 3], expected [3]"]


def test_gtpo_metrics_in_a_grpo_arm_are_reported(smoke_dir):
    rewrite(smoke_dir / "runs" / "grpo_no_kl" / "first" / "metrics.jsonl",
            lambda s, d: d.update({"gtpo/initial_entropy": 1.0}))
    problems, _ = check(smoke_dir)
    assert problems == ["grpo_no_kl: GRPO run logged GTPO metrics ['gtpo/initial_entropy']"]


def test_missing_log_and_unknown_arm(smoke_dir):
    (smoke_dir / "runs" / "grpo" / "first" / "metrics.jsonl").unlink()
    problems, rows = check(smoke_dir)
    assert len(problems) == 1 and problems[0].startswith("grpo: no metrics log at") and len(rows) == 2
    with pytest.raises(ValueError, match="unknown arms"):
        check_smoke_dir(smoke_dir, ["ppo"])
    with pytest.raises(ValueError, match="save_step must be in"):
        SmokePlan(total_steps=3, save_step=3)


def test_missing_memory_metrics_read_not_logged(smoke_dir):
    for run in ("first", "resumed"):
        rewrite(smoke_dir / "runs" / "grpo" / run / "metrics.jsonl",
                lambda s, d: [d.pop(k) for k in list(d) if "max_memory" in k])
    problems, rows = check(smoke_dir)
    assert problems == [] and "| GRPO + reference model | 10.0 | 5.0 | not logged | not logged |" in format_table(rows)


def test_cli_exit_status_and_output(smoke_dir, capsys):
    arguments = ["check", str(smoke_dir), "--model", str(smoke_dir / "model")]
    assert main(arguments) == 0
    out = capsys.readouterr().out
    assert "| GTPO | 10.0 | 5.0 | 4.00 | 5.00 |" in out and "smoke run OK" in out
    rewrite(smoke_dir / "runs" / "gtpo" / "resumed" / "metrics.jsonl",
            lambda s, d: d.update({"gtpo/initial_entropy": 4.9}))
    assert main(arguments) == 1
    assert "SMOKE RUN FAILED" in capsys.readouterr().err
    assert main([*arguments, "--arms", "grpo"]) == 0


def test_verls_bf16_entropy_metric_passes_and_padding_read_as_entropy_does_not():
    """verl's ``actor/entropy`` is ``agg_loss`` over the bf16 entropy tensor; GTPO averages the same tensor.

    Drawn the way the smoke runs look (entropies near ln V of a random model, 8 completions of up to 160
    tokens, padded); verl rounds each completion's token sum to bf16, which is what the tolerance is for.
    Counting the padding columns in each completion's mean, a layout mistake, must still fail the check.
    """
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for draw in range(200):
        lengths = torch.randint(1, 161, (8,), generator=generator)
        mask = (torch.arange(160) < lengths[:, None]).long()
        entropy = (math.log(VOCAB) - 0.05 * torch.rand(8, 160, generator=generator)).to(torch.bfloat16)
        terms = compute_gtpo_terms(torch.zeros(8, 160), mask, torch.randint(3, VOCAB, (8, 160), generator=generator),
                                   np.array(["q"] * 8, dtype=object), entropy, initial_entropy=H_INI)
        metrics = {**gtpo_metrics(terms), "actor/entropy": agg_loss(entropy, mask, "seq-mean-token-mean").item()}
        worst = max(worst, abs(metrics["gtpo/mean_completion_entropy"] / metrics["actor/entropy"] - 1))
        assert check_gtpo_step(metrics, VOCAB, f"draw {draw}") == []

        padding_counted = (entropy.double() * mask).sum(dim=-1).div(160).mean().item()
        wrong = {**metrics, "gtpo/mean_completion_entropy": padding_counted}
        assert any("does not read the entropy" in problem for problem in check_gtpo_step(wrong, VOCAB, "wrong"))
    assert 1e-4 < worst < ENTROPY_RTOL  # bf16 rounding shows, and stays inside the tolerance
