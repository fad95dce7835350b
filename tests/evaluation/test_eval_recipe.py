"""The generation recipe's dry run: verl's resolved config, printed without Ray or a GPU."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "eval" / "run_eval.sh"
HYDRA_MAIN = re.compile(r'@hydra\.main\(config_path="([^"]+)", config_name="([^"]+)"')


def _hydra_app(module: str) -> tuple[str, str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} is not installed"
    match = HYDRA_MAIN.search(Path(spec.origin).read_text(encoding="utf-8"))
    assert match is not None, f"no @hydra.main in {module}"
    return match.groups()


def test_dry_run_config_is_the_generation_config():
    # The dry run prints through main_ppo's Hydra app because main_generation_server needs vLLM's
    # OpenAI client to import; both must compose the same config from the same folder.
    pytest.importorskip("verl")
    assert _hydra_app("verl.trainer.main_generation_server") == _hydra_app("verl.trainer.main_ppo")


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_prints_resolved_generation_config(tmp_path):
    pytest.importorskip("verl")
    env = dict(
        os.environ,
        DRY_RUN="1",
        DATA_DIR=str(tmp_path / "data"),
        OUTPUT_DIR=str(tmp_path / "out"),
        MODEL_PATH="Qwen/Qwen2.5-0.5B-Instruct",
        N_SAMPLES="16",
        TEMPERATURE="0.6",
        K_VALUES="1 4 16",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    result = subprocess.run(
        ["bash", str(RECIPE), "actor_rollout_ref.rollout.max_num_seqs=64"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    rollout = config["actor_rollout_ref"]["rollout"]
    assert config["actor_rollout_ref"]["model"]["path"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (rollout["name"], rollout["n"], rollout["temperature"]) == ("vllm", 16, 0.6)
    assert rollout["max_num_seqs"] == 64  # extra arguments reach Hydra
    assert rollout["response_length"] == config["data"]["max_response_length"]  # resolved
    assert config["data"]["output_path"] == str(tmp_path / "out" / "samples.parquet")
    assert config["data"]["train_files"] == [
        str(tmp_path / "data" / name / "test.parquet")
        for name in ("gsm8k", "math", "aime2024", "aime2025", "amc2023")
    ]
    assert "--k 1 4 16" in result.stderr  # the scoring step it would run
    assert not (tmp_path / "out").exists()  # nothing generated or written
