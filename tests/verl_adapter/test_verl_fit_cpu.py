"""The smoke recipe through verl's own ``main_ppo`` start-up and ``fit()`` on CPU: its resolved configs, its
checks, its table, and what fit's own logger wrote.

``ARMS="gtpo grpo" DRY_RUN=1 bash recipes/run_smoke_1gpu.sh`` builds the tiny model and the parquet data and
prints the configs of the GTPO arm and its GRPO twin with a reference model, first and resumed runs (the
no-KL twin's workers are a subset of that twin's; ``scripts/gpu_check.sh`` runs all three arms).
``fsdp_fit_run.py`` runs ``verl.trainer.main_ppo`` on each of them, in the order the recipe launches them,
unmodified: Hydra, ``validate_config``, ``run_ppo``'s ``ray.init`` and ``TaskRunnerV1``, the trainer's
``init()`` (Ray worker groups, reward loop, LLM server replicas, checkpoint engine, checkpoint loading),
``fit()``. Then the recipe's own final step, ``python -m gtpo_plugin.smoke check``, must pass.
What stands in, because there is no GPU (loaded in every
Ray process through verl's ``VERL_USE_EXTERNAL_MODULES``; see ``fsdp_fit_run.py`` for the overrides):
- the platform: ``cpu_platform`` (verl's platform ``cpu``: device ``cpu``, gloo, Ray's logical GPU as the
  worker's slot, verl's FSDP engine registered for ``cpu``; on verl 0.9.0 ``torch_unpadding``);
- the rollout server: ``hf_rollout``, verl's rollout ``hf``: ``transformers``' ``generate`` behind vLLM's
  ``generate`` signature, fed the actor's weights by verl's naive checkpoint engine.
To keep the suite's time, the recipe is given, on its command line as a user may, smaller batches (2
prompts x 4 completions a step instead of 8 x 8); every other setting is the recipe's. Each run takes 2 to
3.5 minutes on 2 cores, most of it start-up, so on verl 0.9.0 only the GTPO arm runs (``ARMS=gtpo``, as a
user may too); its GRPO twin runs on 0.9.1 (docs/development.md#ci).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import METRIC_KEYS

verl = pytest.importorskip("verl")
transformers = pytest.importorskip("transformers")
from omegaconf import OmegaConf  # noqa: E402

from gtpo_plugin.smoke.report import read_metrics  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash scripts")

REPO = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("fsdp_fit_run.py")
# the GTPO arm and its GRPO twin with a reference model, whose workers are a superset of the no-KL twin's
ARMS = ("gtpo",) if verl.__version__ == "0.9.0" else ("gtpo", "grpo")
SMALLER_BATCHES = ("data.train_batch_size=2", "actor_rollout_ref.actor.ppo_mini_batch_size=2",
                   "actor_rollout_ref.rollout.n=4")
TIMEOUT_S = 900


def grpo_twins(test):
    """A test of the GRPO twin's runs: marked ``newest_verl``, and skipped where they do not run."""
    skip = pytest.mark.skipif(ARMS == ("gtpo",), reason="the GRPO twin's fit() runs on verl 0.9.1 only (CI time)")
    return pytest.mark.newest_verl(skip(test))


def recipe_env(**variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"SMOKE_DIR", "ARMS", "DRY_RUN"}}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(REPO), *sys.path]), **variables)
    return env


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("smoke_fit") / "smoke_run"
    dry_run = subprocess.run(["bash", str(REPO / "recipes" / "run_smoke_1gpu.sh"), *SMALLER_BATCHES],
                             # verl's plugin loading cannot change a printed config; off, it saves CPU
                             env=recipe_env(SMOKE_DIR=str(root), DRY_RUN="1", ARMS=" ".join(ARMS),
                                            VERL_USE_EXTERNAL_PLUGINS="none"),
                             capture_output=True, text=True, timeout=TIMEOUT_S)
    assert dry_run.returncode == 0, dry_run.stderr[-4000:]
    for arm in ARMS:
        for run in ("first", "resumed"):
            result = subprocess.run([sys.executable, str(RUNNER), str(root / "configs" / f"{arm}_{run}.yaml")],
                                    env=recipe_env(), capture_output=True, text=True,
                                    timeout=TIMEOUT_S)
            assert result.returncode == 0, f"{arm} {run}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return root


def logged_steps(smoke_dir: Path, arm: str, run: str) -> dict[int, dict]:
    return read_metrics(smoke_dir / "runs" / arm / run / "metrics.jsonl")


def test_the_recipes_own_check_passes_on_what_verl_wrote(smoke_dir):
    result = subprocess.run([sys.executable, "-m", "gtpo_plugin.smoke", "check", str(smoke_dir), "--arms", *ARMS,
                             "--model", str(smoke_dir / "model")], env=recipe_env(), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("| ") >= 3 * len(ARMS)  # one table row per arm
    assert "smoke run OK" in result.stdout + result.stderr


def test_every_step_ran_on_sampled_completions_and_gtpo_updated_the_model(smoke_dir):
    # The random model's completions earn no reward here (every score 0), so GRPO's advantages, its policy
    # loss and its gradient are exactly 0 in the smoke run; GTPO's -gamma <H>_i term still moves the model.
    for arm in ARMS:
        for run, steps in (("first", [1, 2, 3]), ("resumed", [3])):
            metrics = logged_steps(smoke_dir, arm, run)
            assert sorted(metrics) == steps, (arm, run)
            for step in steps:
                assert metrics[step]["response_length/mean"] > 0
                assert metrics[step]["critic/score/max"] == metrics[step]["critic/score/min"] == 0
                if arm == "gtpo":
                    assert metrics[step]["actor/grad_norm"] > 0
                else:
                    assert metrics[step]["critic/advantages/max"] == metrics[step]["critic/advantages/min"] == 0
                    assert metrics[step]["actor/pg_loss"] == 0
                    assert metrics[step]["actor/grad_norm"] == 0


def actor_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """verl's FSDP actor checkpoint (world size 1: each DTensor's local part is the whole tensor)."""
    state = torch.load(checkpoint / "actor" / "model_world_size_1_rank_0.pt", weights_only=False)
    return {name: value.to_local() if hasattr(value, "to_local") else value for name, value in state.items()}


@grpo_twins
def test_grpo_changed_the_weights_by_weight_decay_only(smoke_dir):
    # A zero gradient leaves AdamW only its decoupled decay, p <- p * (1 - lr * weight_decay) in fp32, once
    # a step. At the recipe's lr 1e-6 and decay 0.01 the factor rounds to 1 in fp32, so the weights stay the
    # model's own; any Adam step (about lr per weight, whatever the gradient's size) would show. The KL term
    # adds no gradient either: verl's low_var_kl has a zero gradient where the policy is the reference.
    config = OmegaConf.load(smoke_dir / "configs" / "grpo_first.yaml")
    weight_decay = config.actor_rollout_ref.actor.optim.weight_decay
    initial = transformers.AutoModelForCausalLM.from_pretrained(smoke_dir / "model", dtype=torch.float32).state_dict()
    metrics = logged_steps(smoke_dir, "grpo", "first")
    saved = actor_weights(smoke_dir / "runs" / "grpo" / "first" / "checkpoints" / "global_step_2")
    assert saved.keys() <= initial.keys() and len(saved) > 0
    for name, weights in saved.items():
        expected = initial[name].clone()
        for step in (1, 2):
            expected.mul_(1 - metrics[step]["actor/lr"] * weight_decay)
        torch.testing.assert_close(weights, expected, rtol=0, atol=0, msg=name)


@grpo_twins
def test_the_grpo_twin_has_a_kl_term_starting_at_0_and_gtpo_none(smoke_dir):
    assert logged_steps(smoke_dir, "grpo", "first")[1]["actor/kl_loss"] == pytest.approx(0, abs=1e-6)
    assert not any("kl_loss" in key for key in logged_steps(smoke_dir, "gtpo", "first")[1])


def test_the_resumed_gtpo_run_restored_its_state_before_training(smoke_dir):
    first = logged_steps(smoke_dir, "gtpo", "first")
    resumed = logged_steps(smoke_dir, "gtpo", "resumed")
    # the resumed run did not measure <H>_ini again: it read it from global_step_2's gtpo_state.json
    assert resumed[3]["gtpo/initial_entropy"] == first[1]["gtpo/initial_entropy"]
    # ... which differs from the entropy the resumed run's own first batch has
    assert resumed[3]["gtpo/mean_completion_entropy"] != resumed[3]["gtpo/initial_entropy"]


def test_fits_own_logger_wrote_one_record_a_step_with_every_gtpo_metric_finite(smoke_dir):
    # verl's file logger writes what fit()'s self.logger.log passes it, one JSON line per call
    for run, steps in (("first", [1, 2, 3]), ("resumed", [3])):
        lines = (smoke_dir / "runs" / "gtpo" / run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        assert [record["step"] for record in records] == steps, run
        for record in records:
            values = {key: record["data"].get(key) for key in METRIC_KEYS}
            assert all(isinstance(value, float) and math.isfinite(value) for value in values.values()), values
