"""Every launch script in recipes/, in dry-run mode on CPU: verl's resolved config carries the recipe's settings.

Each script runs once per preset as a user would (``DRY_RUN=1 [PRESET=verl] bash recipes/run_*.sh``); verl's
Hydra app prints the resolved config and stops before its task, so no Ray and no GPU. The scripts run in
parallel (importing verl takes ~10 s of CPU per process). The printed configs then go through verl's own
start-up checks and reference-model decision, the GTPO arm is compared key by key with its GRPO twins, and
each script's two presets with each other.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import config_tree
import pytest
import yaml

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the recipes are bash scripts")

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
ALGORITHMS = ("gtpo", "grpo", "grpo_no_kl")
ENGINES = ("fsdp", "megatron")
PRESETS = ("paper", "verl")
SCRIPT_RUNS = [f"{a}_{e}_{p}" for a in ALGORITHMS for e in ENGINES for p in PRESETS]  # every script, both presets
MATH_FSDP = {
    "DATASET": "math", "NNODES": "2", "GPUS_PER_NODE": "4", "MODEL_PATH": "meta-llama/Llama-3.1-8B-Instruct",
    "DATA_DIR": "/shared/data", "ROLLOUT_TP": "2", "SP_SIZE": "2", "RUN_DIR": "/shared/runs/a", "SEED": "3",
}
MATH_MEGATRON = {"DATASET": "math", "NNODES": "2", "ACTOR_TP": "4", "ACTOR_PP": "2", "OFFLOAD": "true"}
EXTRA_ARGS = ("actor_rollout_ref.rollout.n=12", "algorithm.gtpo.entropy_coef=0.05",
              "+reward.custom_reward_function.reward_kwargs.strict_format=true")
# Keys in which an arm may differ from GTPO; everything else must be equal.
ALGORITHM_KEYS = {
    "algorithm.adv_estimator",
    "actor_rollout_ref.actor.policy_loss.loss_mode",
    "actor_rollout_ref.actor.use_kl_loss",
    *(f"algorithm.gtpo.{key}" for key in ("amplification", "entropy_coef", "entropy_threshold", "conflict_mode",
                                          "initial_entropy")),
}


@dataclass(frozen=True)
class DryRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def config(self) -> dict[str, Any]:
        assert self.returncode == 0, self.stderr[-4000:]
        config = yaml.safe_load(self.stdout)
        assert isinstance(config, dict), self.stdout[:2000]
        return config


def recipe_variables() -> set[str]:
    """The environment variables the recipes read (``NAME=${NAME:-default}`` in common.sh)."""
    text = (RECIPES / "common.sh").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Z_]+)=\$\{\1:-", text, flags=re.MULTILINE))


def script_env(home: Path, **variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in recipe_variables()}
    env.update(
        HOME=str(home),  # the default DATA_DIR is under $HOME
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        CUDA_VISIBLE_DEVICES="",
        **variables,
    )
    return env


@dataclass(frozen=True)
class Sandbox:
    """The working directory and $HOME every dry run shares; both must stay empty."""

    workdir: Path
    home: Path


def dry_run(sandbox: Sandbox, script: str, variables: dict[str, str], args: tuple[str, ...] = ()) -> DryRun:
    env = script_env(sandbox.home, DRY_RUN="1", **variables)
    if script != "run_gtpo_fsdp.sh" or variables:
        # verl's plugin loading costs ~5 s of CPU per process and cannot change the printed config; the
        # main recipe's default run keeps it on, so the plugin is seen not to disturb the printed YAML.
        env["VERL_USE_EXTERNAL_PLUGINS"] = "none"
    result = subprocess.run(["bash", str(RECIPES / script), *args], cwd=sandbox.workdir, env=env,
                            capture_output=True, text=True, timeout=900)
    return DryRun(result.returncode, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Sandbox:
    root = tmp_path_factory.mktemp("recipes")
    (root / "cwd").mkdir()
    (root / "home").mkdir()
    return Sandbox(root / "cwd", root / "home")


@pytest.fixture(scope="module")
def runs(sandbox) -> dict[str, DryRun]:
    pytest.importorskip("verl")  # the dry run is verl's own Hydra app
    cases = {f"{algo}_{engine}_paper": (f"run_{algo}_{engine}.sh", {}, ()) for algo in ALGORITHMS for engine in ENGINES}
    cases |= {f"{algo}_{engine}_verl": (f"run_{algo}_{engine}.sh", {"PRESET": "verl"}, ())
              for algo in ALGORITHMS for engine in ENGINES}
    cases["gtpo_fsdp_math"] = ("run_gtpo_fsdp.sh", {**MATH_FSDP, "PRESET": "verl"}, EXTRA_ARGS)
    cases["gtpo_megatron_math"] = ("run_gtpo_megatron.sh", MATH_MEGATRON, ())
    with ThreadPoolExecutor(max_workers=min(len(cases), max(2, os.cpu_count() or 2))) as pool:
        futures = {name: pool.submit(dry_run, sandbox, *case) for name, case in cases.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def verl_checks():
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    return OmegaConf, need_reference_policy, need_critic, validate_config


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """Keys whose values differ once each run's own experiment name (and the paths made from it) is masked."""
    return config_tree.differing_keys(a, b, (a["trainer"]["experiment_name"], b["trainer"]["experiment_name"]))


@pytest.mark.parametrize("name", SCRIPT_RUNS + ["gtpo_fsdp_math", "gtpo_megatron_math"])
def test_dry_run_prints_config_and_starts_nothing(runs, sandbox, name):
    run = runs[name]
    assert run.returncode == 0, run.stderr[-4000:]
    assert "actor_rollout_ref" in run.config
    assert "ray init" not in run.stdout + run.stderr  # verl's run_ppo was never entered
    assert list(sandbox.workdir.iterdir()) == [] and list(sandbox.home.iterdir()) == []  # no run folder, no outputs
    assert "--cfg job --resolve" in run.stderr  # set -x shows the one verl command
    preset = "verl" if name.endswith("_verl") or name == "gtpo_fsdp_math" else "paper"
    # The printed YAML starts with a comment naming the preset, and the command line selects it.
    assert run.stdout.startswith(f"# PRESET={preset}: recipes/config/preset/{preset}.yaml")
    assert f"preset={preset} " in run.stderr


@pytest.mark.parametrize("name", SCRIPT_RUNS)
def test_shared_settings_in_every_arm_and_preset(runs, name):
    config = runs[name].config
    actor, rollout = config["actor_rollout_ref"]["actor"], config["actor_rollout_ref"]["rollout"]
    assert rollout["n"] == 8  # group size
    assert actor["optim"]["lr"] == 1e-6
    assert actor["optim"]["clip_grad"] == 0.1  # max grad norm, as verl's engines read it
    assert actor["loss_agg_mode"] == "seq-mean-token-mean"
    assert actor["entropy_coeff"] == 0
    assert rollout["name"] == "vllm"
    assert config["reward"]["custom_reward_function"]["path"] == "pkg://gtpo_plugin.reward"
    assert config["algorithm"]["use_kl_in_reward"] is False
    assert config["trainer"]["use_v1"] is True


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("engine", ENGINES)
def test_paper_preset_is_the_authors_setting(runs, algo, engine):
    config = runs[f"{algo}_{engine}_paper"].config
    actor, rollout = config["actor_rollout_ref"]["actor"], config["actor_rollout_ref"]["rollout"]
    assert config["algorithm"]["norm_adv_by_std_in_grpo"] is False  # A_i = R_i - mean(R)
    assert config["reward"]["custom_reward_function"] == {"path": "pkg://gtpo_plugin.reward",
                                                          "name": "compute_paper_score"}
    assert (rollout["temperature"], rollout["n"]) == (0.9, 8)
    assert (actor["optim"]["lr"], actor["optim"]["clip_grad"]) == (1e-6, 0.1)
    if algo == "gtpo":
        gtpo = config["algorithm"]["gtpo"]
        assert (gtpo["amplification"], gtpo["entropy_coef"]) == (2.0, 0.1)
        assert gtpo["entropy_threshold"] == math.log(2)


@pytest.mark.parametrize("algo", ALGORITHMS)
@pytest.mark.parametrize("engine", ENGINES)
def test_verl_preset_is_std_normalised_correctness(runs, algo, engine):
    paper, verl = runs[f"{algo}_{engine}_paper"].config, runs[f"{algo}_{engine}_verl"].config
    assert verl["algorithm"]["norm_adv_by_std_in_grpo"] is True
    assert verl["reward"]["custom_reward_function"] == {"path": "pkg://gtpo_plugin.reward", "name": "compute_score"}
    assert verl["actor_rollout_ref"]["rollout"]["temperature"] == 1.0
    assert verl["trainer"]["experiment_name"] == f"{algo}_verl_gsm8k_Qwen2.5-3B-Instruct_{engine}_s0"
    # The presets differ in these keys and nothing else (run names masked).
    preset_keys = {"algorithm.norm_adv_by_std_in_grpo", "reward.custom_reward_function.name",
                   "actor_rollout_ref.rollout.temperature",
                   # verl's (disabled) distillation teacher samples at the rollout temperature by interpolation
                   "distillation.teacher_models.teacher_model.inference.temperature"}
    if algo == "gtpo":
        assert verl["algorithm"]["gtpo"]["entropy_coef"] == 0.02
        preset_keys.add("algorithm.gtpo.entropy_coef")
    assert differing_keys(paper, verl) == preset_keys


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("engine", ENGINES)
def test_gtpo_arm_runs_gtpo_without_reference_model(runs, verl_checks, engine, preset):
    omegaconf, need_reference_policy, _, _ = verl_checks
    config = runs[f"gtpo_{engine}_{preset}"].config
    actor = config["actor_rollout_ref"]["actor"]
    assert config["algorithm"]["adv_estimator"] == "gtpo"
    assert actor["policy_loss"]["loss_mode"] == "gtpo"
    assert actor["use_kl_loss"] is False and config["algorithm"]["use_kl_in_reward"] is False
    assert need_reference_policy(omegaconf.create(config)) is False
    gtpo = config["algorithm"]["gtpo"]
    assert gtpo["entropy_threshold"] == pytest.approx(math.log(2))  # entropy filtering on (finite τ)
    assert (gtpo["amplification"], gtpo["conflict_mode"]) == (2.0, "prefix_suffix")
    assert gtpo["initial_entropy"] is None  # measured on the first batch


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("engine", ENGINES)
def test_grpo_twins_keep_or_drop_the_kl_loss(runs, verl_checks, engine, preset):
    omegaconf, need_reference_policy, _, _ = verl_checks
    with_kl, without_kl = runs[f"grpo_{engine}_{preset}"].config, runs[f"grpo_no_kl_{engine}_{preset}"].config
    for config in (with_kl, without_kl):
        assert config["algorithm"]["adv_estimator"] == "grpo"
        assert config["actor_rollout_ref"]["actor"]["policy_loss"]["loss_mode"] == "vanilla"
        assert "gtpo" not in config["algorithm"]
    actor = with_kl["actor_rollout_ref"]["actor"]
    assert (actor["use_kl_loss"], actor["kl_loss_coef"], actor["kl_loss_type"]) == (True, 0.001, "low_var_kl")
    assert need_reference_policy(omegaconf.create(with_kl)) is True
    assert without_kl["actor_rollout_ref"]["actor"]["use_kl_loss"] is False
    assert need_reference_policy(omegaconf.create(without_kl)) is False


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("engine", ENGINES)
def test_twins_differ_from_gtpo_only_in_the_algorithm(runs, engine, preset):
    gtpo, grpo = runs[f"gtpo_{engine}_{preset}"].config, runs[f"grpo_{engine}_{preset}"].config
    grpo_no_kl = runs[f"grpo_no_kl_{engine}_{preset}"].config
    assert differing_keys(gtpo, grpo) == ALGORITHM_KEYS
    assert differing_keys(gtpo, grpo_no_kl) == ALGORITHM_KEYS - {"actor_rollout_ref.actor.use_kl_loss"}
    assert differing_keys(grpo, grpo_no_kl) == {"actor_rollout_ref.actor.use_kl_loss"}
    # Each arm writes its own checkpoints and metrics.
    assert gtpo["trainer"]["experiment_name"] == f"gtpo_{preset}_gsm8k_Qwen2.5-3B-Instruct_{engine}_s0"
    assert grpo["trainer"]["experiment_name"] == f"grpo_{preset}_gsm8k_Qwen2.5-3B-Instruct_{engine}_s0"


@pytest.mark.parametrize("name", SCRIPT_RUNS + ["gtpo_fsdp_math", "gtpo_megatron_math"])
def test_configs_pass_verl_start_up_checks(runs, verl_checks, name):
    omegaconf, need_reference_policy, need_critic, validate_config = verl_checks
    config = omegaconf.create(runs[name].config)
    assert need_critic(config) is False
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=False)
    # verl's reward loader finds the preset's reward from the printed settings.
    pytest.importorskip("math_verify")
    from verl.trainer.ppo.reward import get_custom_reward_fn

    reward_fn = get_custom_reward_fn(config)
    assert reward_fn is not None
    completion = "<reasoning>1 + 2</reasoning>\n<answer>3</answer>"
    right = reward_fn(data_source="gsm8k", solution_str=completion, ground_truth="3", extra_info={})
    wrong = reward_fn(data_source="gsm8k", solution_str=completion, ground_truth="4", extra_info={})
    paper = config.reward.custom_reward_function.name == "compute_paper_score"
    assert (right["score"], wrong["score"]) == ((20.0, 10.0) if paper else (1.0, 0.0))
    if config.algorithm.adv_estimator == "gtpo":
        from gtpo_plugin.verl_adapter.settings import check_trainer_config, gtpo_config, norm_adv_by_std

        check_trainer_config(config)  # the adapter's start-up check reads the recipe's algorithm.gtpo block
        assert gtpo_config(config.algorithm).entropy_threshold == pytest.approx(math.log(2))
        assert norm_adv_by_std(config.algorithm) is not paper  # what the gtpo estimator will use


def test_engines(runs):
    for algo in ALGORITHMS:
        fsdp, megatron = runs[f"{algo}_fsdp_paper"].config, runs[f"{algo}_megatron_paper"].config
        assert fsdp["actor_rollout_ref"]["actor"]["strategy"] == "fsdp"
        assert megatron["actor_rollout_ref"]["actor"]["strategy"] == "megatron"
        assert megatron["actor_rollout_ref"]["ref"]["strategy"] == "megatron"
        parallel = megatron["actor_rollout_ref"]["actor"]["megatron"]
        assert (parallel["tensor_model_parallel_size"], parallel["pipeline_model_parallel_size"]) == (2, 1)
        # the bridge the megatron extra installs (mbridge), for the actor and the reference model alike
        for role in ("actor", "ref"):
            bridge = megatron["actor_rollout_ref"][role]["megatron"]
            assert bridge["use_mbridge"] is True and bridge["vanilla_mbridge"] is True, role


def test_megatron_recipes_select_the_engine_as_verls_megatron_config_does():
    # verl 0.9.1's ppo_megatron_trainer.yaml (deprecated) is ppo_trainer with model_engine=megatron, which
    # is what the Megatron launch scripts pass.
    pytest.importorskip("verl")
    import verl.trainer.config

    megatron_yaml = Path(verl.trainer.config.__file__).parent / "ppo_megatron_trainer.yaml"
    defaults = yaml.safe_load(megatron_yaml.read_text(encoding="utf-8"))["defaults"]
    assert defaults == ["ppo_trainer", {"override model_engine": "megatron"}, "_self_"]
    assert "model_engine=megatron" in (RECIPES / "common.sh").read_text(encoding="utf-8")


def test_default_variables(runs, sandbox):
    config = runs["gtpo_fsdp_paper"].config
    data, trainer = config["data"], config["trainer"]
    assert data["train_files"] == str(sandbox.home / "data" / "gtpo" / "gsm8k" / "train.parquet")
    assert data["val_files"] == str(sandbox.home / "data" / "gtpo" / "gsm8k" / "test.parquet")
    assert (data["max_prompt_length"], data["max_response_length"], data["train_batch_size"]) == (512, 1024, 128)
    assert data["prompt_key"] == "prompt"
    assert config["actor_rollout_ref"]["model"]["path"] == "Qwen/Qwen2.5-3B-Instruct"
    assert (trainer["nnodes"], trainer["n_gpus_per_node"]) == (1, 8)
    run_dir = sandbox.workdir / "runs" / "gtpo_paper_gsm8k_Qwen2.5-3B-Instruct_fsdp_s0"
    assert trainer["default_local_dir"] == str(run_dir / "checkpoints")
    assert config["ray_kwargs"]["ray_init"]["runtime_env"]["env_vars"] == {
        "VERL_FILE_LOGGER_PATH": str(run_dir / "metrics.jsonl"),
        "TENSORBOARD_DIR": str(run_dir / "tensorboard"),
    }
    assert trainer["logger"] == ["console", "file", "tensorboard"]
    assert (data["seed"], config["actor_rollout_ref"]["rollout"]["seed"]) == (0, 0)  # same data order in every arm
    actor = config["actor_rollout_ref"]["actor"]
    assert actor["use_dynamic_bsz"] is True and actor["ppo_max_token_len_per_gpu"] == 4 * (512 + 1024)


def test_environment_variables_and_extra_arguments(runs):
    config = runs["gtpo_fsdp_math"].config
    data, trainer = config["data"], config["trainer"]
    assert data["train_files"] == "/shared/data/math/train.parquet"
    assert data["val_files"] == "/shared/data/math/test.parquet"
    assert (data["max_prompt_length"], data["max_response_length"]) == (1024, 2048)
    assert config["actor_rollout_ref"]["model"]["path"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (trainer["nnodes"], trainer["n_gpus_per_node"]) == (2, 4)
    assert trainer["experiment_name"] == "gtpo_verl_math_Llama-3.1-8B-Instruct_fsdp_s3"
    assert (data["seed"], config["actor_rollout_ref"]["rollout"]["seed"]) == (3, 3)
    assert trainer["default_local_dir"] == "/shared/runs/a/checkpoints"
    rollout = config["actor_rollout_ref"]["rollout"]
    assert (rollout["tensor_model_parallel_size"], rollout["n"]) == (2, 12)  # n from the extra arguments
    assert config["algorithm"]["gtpo"]["entropy_coef"] == 0.05  # the yaml's block takes plain overrides
    assert config["reward"]["custom_reward_function"]["reward_kwargs"] == {"strict_format": True}
    assert config["actor_rollout_ref"]["actor"]["fsdp_config"]["ulysses_sequence_parallel_size"] == 2

    megatron = runs["gtpo_megatron_math"].config
    actor, ref = megatron["actor_rollout_ref"]["actor"], megatron["actor_rollout_ref"]["ref"]
    for section in (actor, ref):  # the reference model, when loaded, follows the actor's parallel sizes
        assert (section["megatron"]["tensor_model_parallel_size"],
                section["megatron"]["pipeline_model_parallel_size"]) == (4, 2)
    assert actor["megatron"]["param_offload"] is True and actor["megatron"]["optimizer_offload"] is True
    assert megatron["trainer"]["nnodes"] == 2


def test_bad_dataset_is_refused_before_verl(tmp_path):
    result = subprocess.run(["bash", str(RECIPES / "run_gtpo_fsdp.sh")], cwd=tmp_path,
                            env=script_env(tmp_path, DRY_RUN="1", DATASET="aime2024"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert "DATASET must be gsm8k or math, got 'aime2024'" in result.stderr
    assert "verl.trainer.main_ppo" not in result.stderr


@pytest.mark.parametrize(
    ("variables", "args", "message"),
    [
        ({"PRESET": "authors"}, (), "PRESET must be paper or verl, got 'authors'"),
        ({}, ("preset=verl",), "set the preset with PRESET=paper|verl, not the Hydra override 'preset=verl'"),
        ({"PRESET": "verl"}, ("+preset=paper",), "not the Hydra override '+preset=paper'"),
        ({"SEED": "-1"}, (), "SEED must be a non-negative integer, got '-1'"),
    ],
)
def test_preset_and_seed_are_checked_before_verl(tmp_path, variables, args, message):
    # A Hydra preset=... would silently win over PRESET while the run name kept PRESET's.
    result = subprocess.run(["bash", str(RECIPES / "run_grpo_fsdp.sh"), *args], cwd=tmp_path,
                            env=script_env(tmp_path, DRY_RUN="1", **variables),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert message in result.stderr
    assert "verl.trainer.main_ppo" not in result.stderr


def fake_python(tmp_path: Path) -> Path:
    """A python3 that records its arguments instead of training, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n', encoding="utf-8")
    fake.chmod(0o755)
    return bin_dir


def test_without_dry_run_missing_data_stops_the_script(tmp_path):
    env = script_env(tmp_path, ARGV_FILE=str(tmp_path / "argv"), DATA_DIR=str(tmp_path / "none"))
    env["PATH"] = f"{fake_python(tmp_path)}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", str(RECIPES / "run_grpo_megatron.sh")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert f"missing data file {tmp_path / 'none' / 'gsm8k' / 'train.parquet'}" in result.stderr
    assert "scripts/prepare_data.py" in result.stderr
    assert not (tmp_path / "argv").exists()


def test_without_dry_run_the_same_command_trains(tmp_path):
    data = tmp_path / "data" / "gsm8k"
    data.mkdir(parents=True)
    for split in ("train", "test"):
        (data / f"{split}.parquet").touch()
    env = script_env(tmp_path, ARGV_FILE=str(tmp_path / "argv"), DATA_DIR=str(tmp_path / "data"))
    env["PATH"] = f"{fake_python(tmp_path)}{os.pathsep}{env['PATH']}"
    result = subprocess.run(["bash", str(RECIPES / "run_gtpo_fsdp.sh"), "trainer.total_epochs=1"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    argv = (tmp_path / "argv").read_text(encoding="utf-8").splitlines()
    assert argv[:5] == ["-m", "verl.trainer.main_ppo", "--config-path", str(RECIPES / "config"), "--config-name"]
    assert argv[5] == "gtpo"
    assert "--cfg" not in argv and argv[-1] == "trainer.total_epochs=1"
