"""recipes/run_smoke_1gpu.sh on CPU: ``DRY_RUN=1`` builds the model and data and prints the six resolved configs.

The script runs once as a user would, in a temporary folder. Its configs then go through verl's own
start-up checks, reference-model decision and dataset class; the first and resumed runs of each arm are
compared key by key, and so are the arms. Without ``DRY_RUN`` a stand-in ``python3`` records the verl
launches (a real one needs a GPU) and lets the script's own steps run, so the order of launches and the
final check's failure on missing logs are seen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from config_tree import differing_keys

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash scripts")

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "recipes" / "run_smoke_1gpu.sh"
ARMS = ("gtpo", "grpo_no_kl", "grpo")
RUNS = ("first", "resumed")
ALGORITHM_KEYS = {
    "algorithm.adv_estimator",
    "actor_rollout_ref.actor.policy_loss.loss_mode",
    "actor_rollout_ref.actor.use_kl_loss",
    *(f"algorithm.gtpo.{key}" for key in ("amplification", "entropy_coef", "entropy_threshold", "conflict_mode",
                                          "initial_entropy")),
}


def smoke_env(home: Path, **variables: str) -> dict[str, str]:
    # Variables a user may have exported for the other recipes must not reach the smoke run's settings.
    env = {key: value for key, value in os.environ.items() if key not in {"SMOKE_DIR", "ARMS", "DRY_RUN"}}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}", CUDA_VISIBLE_DEVICES="",
               GPUS_PER_NODE="8", MODEL_PATH="Qwen/Qwen2.5-3B-Instruct", **variables)
    return env


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    pytest.importorskip("verl")  # the dry run prints each config through verl's own Hydra app
    workdir = tmp_path_factory.mktemp("smoke")
    # verl's plugin loading cannot change the printed config; off, it saves ~5 s of CPU per launch.
    env = smoke_env(workdir, DRY_RUN="1", VERL_USE_EXTERNAL_PLUGINS="none")
    result = subprocess.run(["bash", str(SCRIPT)], cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return workdir, result


def config(dry_run, arm: str, run: str) -> dict[str, Any]:
    workdir, _ = dry_run
    loaded = yaml.safe_load((workdir / "smoke_run" / "configs" / f"{arm}_{run}.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_dry_run_builds_model_and_data_prints_configs_and_trains_nothing(dry_run):
    workdir, result = dry_run
    smoke = workdir / "smoke_run"
    assert sorted(path.name for path in smoke.iterdir()) == ["configs", "data", "model"]  # no runs/, no table
    assert (smoke / "model" / "model.safetensors").is_file() and (smoke / "model" / "tokenizer.json").is_file()
    assert all((smoke / "data" / "gsm8k" / f"{split}.parquet").is_file() for split in ("train", "test"))
    for arm in ARMS:
        for run in RUNS:
            assert f"# ---- {arm}_{run}: {smoke / 'configs' / f'{arm}_{run}.yaml'}" in result.stdout
    assert result.stdout.count("actor_rollout_ref:") == 6
    assert "ray init" not in result.stdout + result.stderr and list(workdir.iterdir()) == [smoke]


@pytest.mark.parametrize("arm", ARMS)
@pytest.mark.parametrize("run", RUNS)
def test_configs_pass_verl_start_up_checks(dry_run, arm, run):
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    resolved = OmegaConf.create(config(dry_run, arm, run))
    assert need_critic(resolved) is False
    assert need_reference_policy(resolved) is (arm == "grpo")
    validate_config(resolved, use_reference_policy=need_reference_policy(resolved), use_critic=False)
    if arm == "gtpo":
        from gtpo_plugin.verl_adapter.settings import check_trainer_config

        check_trainer_config(resolved)


def test_one_gpu_vllm_and_the_tiny_model(dry_run):
    workdir, _ = dry_run
    smoke = workdir / "smoke_run"
    resolved = config(dry_run, "gtpo", "first")
    trainer, rollout = resolved["trainer"], resolved["actor_rollout_ref"]["rollout"]
    # The environment said 8 GPUs and a hub model: the smoke run fixes one GPU and its own model.
    assert (trainer["nnodes"], trainer["n_gpus_per_node"]) == (1, 1)
    assert resolved["actor_rollout_ref"]["model"]["path"] == str(smoke / "model")
    assert (rollout["name"], rollout["enforce_eager"], rollout["tensor_model_parallel_size"]) == ("vllm", True, 1)
    assert rollout["gpu_memory_utilization"] == 0.3 and rollout["n"] == 8
    assert resolved["actor_rollout_ref"]["actor"]["strategy"] == "fsdp"
    assert resolved["data"]["train_files"] == str(smoke / "data" / "gsm8k" / "train.parquet")
    assert (resolved["data"]["max_prompt_length"], resolved["data"]["max_response_length"]) == (256, 64)
    assert (trainer["total_training_steps"], trainer["save_freq"], trainer["test_freq"]) == (3, 2, -1)
    assert trainer["logger"] == ["console", "file"] and trainer["val_before_train"] is False
    assert resolved["algorithm"]["gtpo"]["initial_entropy"] is None  # measured on step 1, then saved


@pytest.mark.parametrize("arm", ARMS)
def test_second_run_resumes_from_the_first_runs_step_2(dry_run, arm):
    first, resumed = config(dry_run, arm, "first"), config(dry_run, arm, "resumed")
    assert first["trainer"]["resume_mode"] == "disable"
    assert resumed["trainer"]["resume_mode"] == "resume_path"
    assert resumed["trainer"]["resume_from_path"] == f"{first['trainer']['default_local_dir']}/global_step_2"
    logs = [run["ray_kwargs"]["ray_init"]["runtime_env"]["env_vars"]["VERL_FILE_LOGGER_PATH"]
            for run in (first, resumed)]
    # verl's file logger truncates its file on start: each run logs to its own.
    assert logs == [f"{first['trainer']['default_local_dir'][:-len('/checkpoints')]}/metrics.jsonl",
                    f"{resumed['trainer']['default_local_dir'][:-len('/checkpoints')]}/metrics.jsonl"]
    assert logs[0].endswith(f"runs/{arm}/first/metrics.jsonl") and logs[1].endswith(f"runs/{arm}/resumed/metrics.jsonl")
    assert differing_keys(first, resumed, ("/first/", "/resumed/")) == {"trainer.resume_mode",
                                                                        "trainer.resume_from_path"}


def test_arms_differ_only_in_the_algorithm(dry_run):
    gtpo = config(dry_run, "gtpo", "first")
    masks = {arm: f"/runs/{arm}/" for arm in ARMS}

    def differ(a: str, b: str) -> set[str]:
        keys = differing_keys(config(dry_run, a, "first"), config(dry_run, b, "first"), (masks[a], masks[b]))
        return {key for key in keys if not key.endswith(".experiment_name")}  # smoke_<arm>, also in rollout.trace

    assert differ("gtpo", "grpo") == ALGORITHM_KEYS
    assert differ("gtpo", "grpo_no_kl") == ALGORITHM_KEYS - {"actor_rollout_ref.actor.use_kl_loss"}
    assert gtpo["trainer"]["experiment_name"] == "smoke_gtpo"


def test_verls_dataset_reads_the_smoke_data_with_the_printed_settings(dry_run):
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    workdir, _ = dry_run
    resolved = OmegaConf.create(config(dry_run, "gtpo", "first"))
    tokenizer = AutoTokenizer.from_pretrained(resolved.actor_rollout_ref.model.path)
    data = OmegaConf.merge(resolved.data, {"filter_overlong_prompts_workers": 1, "cache_dir": str(workdir / "cache")})
    train = RLHFDataset(data_files=resolved.data.train_files, tokenizer=tokenizer, config=data)
    assert len(train) == 64  # every prompt fits max_prompt_length
    assert train[0]["raw_prompt"][1]["content"].startswith("What is ")


def test_bad_arm_is_refused_before_anything_is_built(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=smoke_env(tmp_path, DRY_RUN="1", ARMS="gtpo ppo"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "ARMS may hold gtpo, grpo_no_kl and grpo, got 'ppo'" in result.stderr
    assert not (tmp_path / "smoke_run" / "model").exists()


def test_without_dry_run_six_launches_then_the_check_fails_on_missing_logs(tmp_path):
    # A python3 that records verl launches instead of training (there is no GPU) and runs everything else.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    # It also notes whether the folder of verl's file log exists: verl's FileLogger does not create it.
    fake.write_text(f'#!/usr/bin/env bash\nif [[ "$2" == verl.trainer.main_ppo ]]; then\n'
                    f'    for arg in "$@"; do [[ $arg == *VERL_FILE_LOGGER_PATH=* ]] && log=${{arg#*=}}; done\n'
                    f'    [[ -d $(dirname "$log") ]] && echo "log folder exists: $log" >> "{tmp_path}/launches"\n'
                    f'    echo "$*" >> "{tmp_path}/launches"; exit 0\nfi\nexec "{sys.executable}" "$@"\n')
    fake.chmod(0o755)
    stale = tmp_path / "smoke_run" / "runs" / "gtpo" / "resumed" / "metrics.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}\n")  # an earlier smoke run's log must not count
    env = smoke_env(tmp_path, ARMS="gtpo grpo")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", str(SCRIPT), "trainer.seed=1"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    lines = (tmp_path / "launches").read_text().splitlines()
    logs, launches = lines[0::2], lines[1::2]
    assert logs == [f"log folder exists: {tmp_path}/smoke_run/runs/{arm}/{run}/metrics.jsonl"
                    for arm in ("gtpo", "grpo") for run in RUNS]
    assert [(line.split("--config-name ")[1].split()[0], "resume_mode=resume_path" in line) for line in launches] == [
        ("gtpo", False), ("gtpo", True), ("grpo", False), ("grpo", True)]
    assert all(line.endswith("trainer.seed=1") and "--cfg" not in line for line in launches)
    assert not stale.exists()
    assert result.returncode == 1  # the check found no metrics logs, and the script says so
    assert "SMOKE RUN FAILED" in result.stderr and "gtpo: no metrics log at" in result.stderr
