"""The scoring command end to end on small sample files written here, its errors, and compare mode."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from gtpo_plugin.evaluation import read_samples, score_records
from gtpo_plugin.evaluation.cli import main
from gtpo_plugin.evaluation.scoring import default_ks


def formatted(answer: str) -> str:
    return f"<reasoning>\nWork it out.\n</reasoning>\n<answer>\n{answer}\n</answer>"


# Correct answers marked ✓; "no tags" and the bare <answer> are not well formatted.
ROWS = [
    {"dataset": "gsm8k", "prompt": "q1", "reference": "1,000",
     "completions": [formatted("1000"), formatted("999"), "It is <answer>1,000</answer>", formatted("7")]},
    #                ✓                  ✗                   ✓ (unformatted)                 ✗
    {"dataset": "gsm8k", "prompt": "q2", "reference": "18",
     "completions": [formatted("$18"), formatted("18"), formatted("17"), formatted("17")]},
    #                ✓                 ✓                ✗                ✗
    {"dataset": "math", "prompt": "q3", "reference": "\\frac{1}{2}",
     "completions": [formatted("0.5"), formatted("\\dfrac{1}{2}"), "no tags", formatted("1/3")]},
    #                ✓                 ✓                           ✗          ✗
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_score_command_end_to_end(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "gtpo.jsonl", ROWS)
    assert main(["score", str(samples), "--k", "2", "4", "--output-dir", str(tmp_path / "out")]) == 0

    report = json.loads((tmp_path / "out" / "gtpo.scores.json").read_text())
    assert report["label"] == "gtpo"
    assert report["metrics"] == [
        "accuracy", "format_consistency", "pass@1", "pass@2", "pass@4", "maj@2", "maj@4"
    ]
    gsm8k, math_ = report["datasets"]["gsm8k"], report["datasets"]["math"]
    assert (gsm8k["prompts"], gsm8k["samples"], math_["prompts"], math_["samples"]) == (2, 8, 1, 4)
    # gsm8k: 4 of 8 correct, 7 of 8 formatted; each prompt has c=2 of n=4.
    assert gsm8k["accuracy"] == pytest.approx(0.5)
    assert gsm8k["format_consistency"] == pytest.approx(7 / 8)
    assert gsm8k["pass@1"] == pytest.approx(0.5)
    assert gsm8k["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 − C(2,2)/C(4,2)
    assert gsm8k["pass@4"] == pytest.approx(1.0)
    # maj@2, q1: blocks (1000 ✓, 999) tie → 1000 ✓; (1,000 ✓, 7) tie → ✓.  q2: (18, 18) ✓; (17, 17) ✗.
    assert gsm8k["maj@2"] == pytest.approx((1.0 + 0.5) / 2)
    # maj@4, q1: 1000 has two votes ("1000" and "1,000" share a key) ✓; q2: 18 and 17 tie → 18 first ✓.
    assert gsm8k["maj@4"] == pytest.approx(1.0)
    # math: 0.5 and \dfrac{1}{2} are one answer; "no tags" does not vote.
    assert math_["accuracy"] == pytest.approx(0.5)
    assert math_["format_consistency"] == pytest.approx(0.75)
    assert math_["maj@2"] == pytest.approx(0.5)  # (1/2, 1/2) ✓; (none, 1/3) ✗
    assert math_["maj@4"] == pytest.approx(1.0)

    with (tmp_path / "out" / "gtpo.scores.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [row["dataset"] for row in table] == ["gsm8k", "math"]
    assert float(table[0]["maj@2"]) == pytest.approx(0.75)

    printed = capsys.readouterr().out
    assert "format_consistency" in printed
    assert "87.5" in printed  # gsm8k format consistency in percent


def test_default_k_values_and_dataset_from_file_name(tmp_path):
    rows = [{"reference": "3", "completions": [formatted("3")] * 6}]
    records = read_samples(write_jsonl(tmp_path / "aime2024.jsonl", rows))
    assert default_ks(records) == [1, 2, 4, 6]
    scores = score_records(records)
    assert list(scores) == ["aime2024"]
    assert scores["aime2024"]["maj@6"] == 1.0


def test_numeric_references_and_verl_field_names(tmp_path):
    rows = [
        {"data_source": "amc2023", "reward_model": {"ground_truth": 27.0}, "responses": [formatted("27")]},
        {"data_source": "amc2023", "ground_truth": 3, "responses": [formatted("3.0")]},
    ]
    scores = score_records(read_samples(write_jsonl(tmp_path / "s.jsonl", rows)), [1])
    assert scores["amc2023"]["accuracy"] == 1.0


def test_reads_verl_generation_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    # The columns verl's main_generation_server writes: the input rows plus "responses".
    frame = pd.DataFrame(
        {
            "data_source": ["openai/gsm8k", "openai/gsm8k"],
            "prompt": [[{"role": "user", "content": "1+1?"}], [{"role": "user", "content": "2+2?"}]],
            "ability": ["math", "math"],
            "reward_model": [{"style": "rule", "ground_truth": "2"}, {"style": "rule", "ground_truth": "4"}],
            "responses": [[formatted("2"), formatted("3")], [formatted("4"), "4"]],
        }
    )
    path = tmp_path / "samples.parquet"
    frame.to_parquet(path)
    records = read_samples(path)
    assert [record.reference for record in records] == ["2", "4"]
    assert records[1].location == f"{path}: row 2"
    scores = score_records(records, [2])
    # "2" ✓, "3" ✗, "4" ✓, and a bare "4" without the answer tag counts as no answer.
    assert scores["openai/gsm8k"]["accuracy"] == pytest.approx(2 / 4)
    assert scores["openai/gsm8k"]["format_consistency"] == pytest.approx(3 / 4)


def test_parallel_scoring_matches_serial(tmp_path):
    records = read_samples(write_jsonl(tmp_path / "s.jsonl", ROWS * 3))
    assert score_records(records, [2], workers=2) == score_records(records, [2], workers=1)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"reference": "1", "completions": ["a"]}\n{not json\n', r"s\.jsonl:2: not valid JSON"),
        (
            '{"reference": "1", "completions": ["a"]}\n\n{"reference": "1"}\n',  # blank line 2 skipped
            r"s\.jsonl:3: missing 'completions'",
        ),
        ('{"completions": ["a"]}\n', r"s\.jsonl:1: missing 'reference'"),
        ('{"reference": "", "completions": ["a"]}\n', r"s\.jsonl:1: 'reference' must be a non-empty"),
        ('{"reference": "1", "completions": []}\n', r"s\.jsonl:1: 'completions' must be a non-empty list"),
        ('{"reference": "1", "completions": ["a", null]}\n', r"s\.jsonl:1: completion 1 must be a string"),
        ('["a", "b"]\n', r"s\.jsonl:1: expected a JSON object"),
        ("", r"s\.jsonl: no samples"),
        ("\n\n", r"s\.jsonl: no samples"),
    ],
)
def test_malformed_samples_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_samples(path)


def test_k_above_n_names_the_prompt(tmp_path):
    rows = [{"reference": "1", "completions": ["a"] * 4}, {"reference": "1", "completions": ["a"] * 2}]
    records = read_samples(write_jsonl(tmp_path / "s.jsonl", rows))
    with pytest.raises(ValueError, match=r"s\.jsonl:2: k=4 is larger than the n=2 completions"):
        score_records(records, [1, 4])


def test_command_reports_bad_input_in_one_line(tmp_path, capsys):
    samples = write_jsonl(tmp_path / "s.jsonl", [{"reference": "1", "completions": ["a", "b"]}])
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(samples), "--k", "3"])
    assert exit_info.value.code == 2
    assert f"{samples}:1: k=3 is larger than the n=2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "missing.jsonl")])
    assert "samples file not found" in capsys.readouterr().err
    (tmp_path / "s.txt").write_text("x")
    with pytest.raises(SystemExit):
        main(["score", str(tmp_path / "s.txt")])
    assert "expected .jsonl or .parquet" in capsys.readouterr().err


def test_compare_two_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    weaker = [dict(row, completions=[formatted("5")] * 4) for row in ROWS]
    main(["score", str(write_jsonl(tmp_path / "gtpo.jsonl", ROWS)), "--k", "2"])
    main(["score", str(write_jsonl(tmp_path / "grpo.jsonl", weaker)), "--k", "2"])
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "gtpo.scores.json"), str(tmp_path / "grpo.scores.json"),
                 "--labels", "GTPO", "GRPO", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "GTPO" in printed and "GRPO" in printed
    with (out / "comparison.csv").open() as handle:
        rows = {(row["dataset"], row["metric"]): row for row in csv.DictReader(handle)}
    assert float(rows[("gsm8k", "accuracy")]["GTPO"]) == pytest.approx(0.5)
    assert float(rows[("gsm8k", "accuracy")]["GRPO"]) == 0.0
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_rejects_bad_input(tmp_path, capsys):
    main(["score", str(write_jsonl(tmp_path / "a.jsonl", ROWS)), "--k", "2"])
    scores = str(tmp_path / "a.scores.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    cases = [
        ([scores], "at least two scores files"),
        ([scores, str(tmp_path / "other.json")], "other.json: missing or malformed 'label'"),
        ([scores, scores], "labels must be distinct"),
        ([scores, scores, "--labels", "x"], "got 1 labels for 2 scores files"),
        ([scores, scores, "--labels", "x", "y", "--metrics", "pass@64"], "pass@64"),
    ]
    for arguments, message in cases:
        with pytest.raises(SystemExit):
            main(["compare", *arguments, "--output-dir", str(tmp_path / "cmp")])
        assert message in capsys.readouterr().err
