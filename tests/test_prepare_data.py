"""scripts/prepare_data.py on a few rows written here: verl's RL parquet format, read back by verl itself."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_data.py"
_spec = importlib.util.spec_from_file_location("prepare_data", SCRIPT)
assert _spec is not None and _spec.loader is not None
prepare_data = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = prepare_data  # dataclasses look their module up there
_spec.loader.exec_module(prepare_data)

GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A farm sells 250 eggs a day. How many in 4 days?", "answer": "250 * 4 = 1000\n#### 1,000"},
]
MATH = [
    # The last \boxed counts and nested braces are kept whole.
    {"problem": "What is $\\frac{2}{4}$ reduced?", "solution": "Not \\boxed{2}. It is $\\boxed{\\frac{1}{2}}$."},
    {"problem": "Compute $2^3$.", "solution": "$2^3 = \\boxed{8}$"},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def run(tmp_path: Path, *args: str) -> list[dict]:
    output = prepare_data.main([*args, "--output-dir", str(tmp_path / "data")])
    return pq.read_table(output).to_pylist()


def test_gsm8k_rows_in_verl_format(tmp_path):
    source = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    rows = run(tmp_path, "--dataset", "gsm8k", "--source", str(source), "--split", "train")
    assert (tmp_path / "data" / "gsm8k" / "train.parquet").is_file()
    assert [row["reward_model"] for row in rows] == [
        {"style": "rule", "ground_truth": "7"},
        {"style": "rule", "ground_truth": "1000"},  # text after ####, commas dropped
    ]
    first = rows[0]
    assert first["data_source"] == "gsm8k" and first["ability"] == "math"
    system, user = first["prompt"]
    assert system == {"role": "system", "content": prepare_data.SYSTEM_PROMPT}
    for tag in ("<reasoning>", "</reasoning>", "<answer>", "</answer>"):
        assert tag in system["content"]
    assert user == {"role": "user", "content": GSM8K[0]["question"]}
    assert first["extra_info"] == {"split": "train", "index": 0, "question": GSM8K[0]["question"]}


def test_math_reference_is_the_last_boxed_answer(tmp_path):
    pytest.importorskip("verl")  # the \boxed{} extraction is verl's math_reward
    source = tmp_path / "math.parquet"
    pd.DataFrame(MATH).to_parquet(source)
    rows = run(tmp_path, "--dataset", "math", "--source", str(source), "--split", "train")
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["\\frac{1}{2}", "8"]
    assert rows[0]["prompt"][1]["content"] == MATH[0]["problem"]


def test_math_answer_column_wins_over_the_solution(tmp_path):
    # MATH-500 ships the extracted answer next to the solution.
    source = write_jsonl(tmp_path / "math500.jsonl", [{**MATH[1], "answer": "8"}])
    rows = run(tmp_path, "--dataset", "math", "--source", str(source), "--split", "test")
    assert rows[0]["reward_model"]["ground_truth"] == "8"


def test_math_solution_without_boxed_answer_names_the_row(tmp_path):
    pytest.importorskip("verl")  # the \boxed{} extraction is verl's math_reward
    source = write_jsonl(tmp_path / "math.jsonl", [MATH[1], {"problem": "p", "solution": "The answer is 3."}])
    with pytest.raises(ValueError, match=r"row 2: column 'solution' has no \\boxed"):
        run(tmp_path, "--dataset", "math", "--source", str(source), "--split", "train")


def test_competition_sets_with_numeric_answers(tmp_path):
    aime = tmp_path / "aime.csv"
    pd.DataFrame({"ID": ["2024-I-1"], "Problem": ["Find m + n."], "Answer": [204]}).to_csv(aime, index=False)
    rows = run(tmp_path, "--dataset", "aime2024", "--source", str(aime), "--split", "test")
    assert rows[0]["reward_model"]["ground_truth"] == "204"
    assert rows[0]["data_source"] == "aime2024"
    amc = write_jsonl(tmp_path / "amc.jsonl", [{"question": "How many?", "answer": 27.0}])
    rows = run(tmp_path, "--dataset", "amc2023", "--source", str(amc), "--split", "test")
    assert rows[0]["reward_model"]["ground_truth"] == "27"


def test_explicit_columns_and_limit(tmp_path):
    source = write_jsonl(tmp_path / "custom.jsonl", [{"q": f"Problem {i}", "final": str(i)} for i in range(5)])
    rows = run(tmp_path, "--dataset", "aime2025", "--source", str(source), "--split", "test",
               "--question-key", "q", "--answer-key", "final", "--limit", "2")
    assert [(row["prompt"][1]["content"], row["reward_model"]["ground_truth"]) for row in rows] == [
        ("Problem 0", "0"), ("Problem 1", "1")
    ]


def test_dataset_folder_through_datasets_load_dataset(tmp_path, monkeypatch):
    # Anything that is not a file goes to datasets.load_dataset, as a hub name would; a local folder
    # with train/test files exercises that path without a network.
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "gsm8k_folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", GSM8K)
    write_jsonl(folder / "test.jsonl", GSM8K[1:])
    rows = run(tmp_path, "--dataset", "gsm8k", "--source", str(folder), "--split", "test")
    assert [row["reward_model"]["ground_truth"] for row in rows] == ["1000"]
    rows = run(tmp_path, "--dataset", "gsm8k", "--source", str(folder), "--split", "test", "--source-split", "train")
    assert len(rows) == 2


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"text": "no question column", "answer": "1"}], r"row 1: no question column; expected one of"),
        ([{"question": "q", "answer": "#### 5"}, {"question": "q"}], r"row 2: no answer column"),
        ([{"question": "  ", "answer": "5"}], r"row 1: column 'question' must be a non-empty string"),
        ([{"question": "q", "answer": "so #### "}], r"row 1: column 'answer' holds no final answer"),
    ],
)
def test_unusable_rows_name_row_and_column(tmp_path, rows, message):
    source = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        run(tmp_path, "--dataset", "gsm8k", "--source", str(source), "--split", "train")


def test_bad_invocations(tmp_path):
    with pytest.raises(FileNotFoundError, match="source file not found"):
        run(tmp_path, "--dataset", "gsm8k", "--source", str(tmp_path / "missing.jsonl"), "--split", "train")
    source = write_jsonl(tmp_path / "aime.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(SystemExit):  # evaluation sets are never written as training data
        run(tmp_path, "--dataset", "aime2024", "--source", str(source), "--split", "train")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        run(tmp_path, "--dataset", "gsm8k", "--source", str(empty), "--split", "train")


def test_verl_dataset_reads_the_rows_and_the_reward_scores_them(tmp_path):
    # verl's own RL dataset loads the file, renders the chat template and filters over-long prompts;
    # the recipes' reward gives 1 to a completion that states the reference in the answer tag.
    pytest.importorskip("verl")
    pytest.importorskip("math_verify")
    from omegaconf import OmegaConf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer import normalize_token_ids

    from gtpo_plugin.reward import compute_score

    word_level = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "[PAD]": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]", pad_token="[PAD]")
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    source = write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    path = prepare_data.main(["--dataset", "gsm8k", "--source", str(source), "--split", "test",
                              "--output-dir", str(tmp_path / "data")])
    lengths = [
        len(normalize_token_ids(tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True)))
        for row in pq.read_table(path).to_pylist()
    ]
    assert lengths[0] < lengths[1]

    def dataset(max_prompt_length: int) -> RLHFDataset:
        config = {"prompt_key": "prompt", "max_prompt_length": max_prompt_length, "filter_overlong_prompts": True,
                  "filter_overlong_prompts_workers": 1, "cache_dir": str(tmp_path / "cache")}
        return RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=OmegaConf.create(config))

    assert len(dataset(lengths[0])) == 1  # the longer prompt is filtered out: templates were rendered
    full = dataset(max(lengths))
    assert len(full) == 2
    item = full[1]
    assert item["raw_prompt"][0]["role"] == "system" and item["data_source"] == "gsm8k"
    completion = "<reasoning>250 * 4 = 1000</reasoning>\n<answer>1000</answer>"
    result = compute_score(item["data_source"], completion, item["reward_model"]["ground_truth"], item["extra_info"])
    assert result == {"score": 1.0, "acc": 1.0, "format": 1.0}
