"""The smoke run's problems: reproducible, converted by scripts/prepare_data.py, read back by verl's RLHFDataset."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from gtpo_plugin.smoke.problems import addition_problems, write_problems

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_data.py"


def load_prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_problems_are_correct_sums_and_reproducible():
    rows = addition_problems(50, seed=3)
    assert rows == addition_problems(50, seed=3) and rows != addition_problems(50, seed=4)
    for row in rows:
        a, b = map(int, re.fullmatch(r"What is (\d+) plus (\d+)\?", row["question"]).groups())
        assert row["answer"] == str(a + b) and 0 <= a < 100 and 0 <= b < 100


def test_count_must_be_positive():
    with pytest.raises(ValueError, match="count must be a positive number of problems, got 0"):
        addition_problems(0, seed=0)


def test_parquet_reads_back_with_verls_dataset_and_the_tiny_tokenizer(tmp_path, tiny_model_dir):
    pytest.importorskip("verl")
    pytest.importorskip("math_verify")
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from gtpo_plugin.reward import compute_score

    source = write_problems(tmp_path / "problems.jsonl", 12, seed=0)
    assert [json.loads(line) for line in source.read_text().splitlines()] == addition_problems(12, seed=0)
    prepare_data = load_prepare_data()
    path = prepare_data.main(["--dataset", "gsm8k", "--source", str(source), "--split", "train",
                              "--output-dir", str(tmp_path / "data")])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # The smoke script's data settings (recipes/config/paper.yaml and MAX_PROMPT_LENGTH=256).
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 256, "filter_overlong_prompts": True,
                               "truncation": "error", "filter_overlong_prompts_workers": 1,
                               "cache_dir": str(tmp_path / "cache")})
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=config)
    assert len(dataset) == 12  # no prompt over 256 tokens was filtered out
    item = dataset[0]
    assert item["data_source"] == "gsm8k" and item["raw_prompt"][0]["content"] == prepare_data.SYSTEM_PROMPT
    assert item["raw_prompt"][1]["content"] == addition_problems(12, seed=0)[0]["question"]
    answer = item["reward_model"]["ground_truth"]
    prompt_ids = tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True)["input_ids"]
    assert 100 < len(prompt_ids) <= 256
    completion = f"<reasoning>\nadd\n</reasoning>\n<answer>\n{answer}\n</answer>"
    assert compute_score("gsm8k", completion, answer, item["extra_info"])["score"] == 1.0
