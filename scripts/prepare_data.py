"""Write GSM8K, MATH, AIME 2024/2025 and AMC 2023 as verl RL parquet files with the paper's prompt.

One call writes one split of one dataset to ``OUTPUT_DIR/<dataset>/<split>.parquet``, the layout the
recipes read (``DATA_DIR``). The source is a local file (``.parquet``, ``.jsonl``, ``.json``, ``.csv``)
or anything ``datasets.load_dataset`` opens (a hub name such as ``openai/gsm8k``, or a local dataset
folder); nothing is downloaded unless you name a hub dataset::

    python scripts/prepare_data.py --dataset gsm8k --source openai/gsm8k --hub-config main --split train
    python scripts/prepare_data.py --dataset gsm8k --source openai/gsm8k --hub-config main --split test
    python scripts/prepare_data.py --dataset math --source DigitalLearningGmbH/MATH-lighteval --split train
    python scripts/prepare_data.py --dataset math --source HuggingFaceH4/MATH-500 --split test
    python scripts/prepare_data.py --dataset aime2024 --source my_aime24.jsonl --split test

Each row becomes verl's RL format: ``data_source`` (the dataset name, which the reward and the
evaluation group by), ``prompt`` (a system message asking for ``<reasoning>`` and ``<answer>`` blocks,
then the problem as the user message), ``ability``, ``reward_model.ground_truth`` (the final answer
only) and ``extra_info``. The reference answer is read per dataset: GSM8K's text after ``####``
(commas dropped), MATH's ``answer`` column or else the last ``\\boxed{}`` of its ``solution`` (verl's own
extraction), the ``answer`` column elsewhere. AIME and AMC are for evaluation: only ``--split test``.
"""

from __future__ import annotations

import argparse
import math
import numbers
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SYSTEM_PROMPT = (
    "Solve the math problem. Reason step by step between <reasoning> and </reasoning>, then write only the "
    "final answer between <answer> and </answer>, in this format:\n"
    "<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
)
TRAIN_DATASETS = ("gsm8k", "math")
EVAL_DATASETS = ("aime2024", "aime2025", "amc2023")
QUESTION_KEYS = ("question", "problem", "Question", "Problem")
ANSWER_KEYS = {"math": ("answer", "Answer", "solution", "Solution")}
DEFAULT_ANSWER_KEYS = ("answer", "Answer")
FILE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


def build_rows(
    records: Iterable[Mapping[str, Any]],
    dataset: str,
    split: str,
    *,
    question_key: str | None = None,
    answer_key: str | None = None,
    origin: str = "input",
) -> list[dict[str, Any]]:
    """verl RL rows for ``records`` (dicts from the source); ValueError naming the row if one is unusable."""
    rows = []
    for index, record in enumerate(records):
        where = f"{origin}: row {index + 1}"
        question_column = question_key or _first_present(record, QUESTION_KEYS, "question", where)
        answer_column = answer_key or _first_present(record, ANSWER_KEYS.get(dataset, DEFAULT_ANSWER_KEYS),
                                                     "answer", where)
        question = _text(record.get(question_column), question_column, where)
        answer = reference_answer(dataset, answer_column, record.get(answer_column), where)
        rows.append(
            {
                "data_source": dataset,
                "prompt": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": question},
                ],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": answer},
                "extra_info": {"split": split, "index": index, "question": question},
            }
        )
    return rows


def reference_answer(dataset: str, column: str, value: Any, where: str) -> str:
    """The final answer alone, as a string, from a source row's answer column."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{where}: column {column!r} must be a finite number, got {value!r}")
        number = float(value)
        return str(int(number)) if number.is_integer() else repr(number)
    text = _text(value, column, where)
    if dataset == "gsm8k" and "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif dataset == "math" and (column.lower() == "solution" or "\\boxed" in text):
        text = _last_boxed(text, column, where)
    if not text:
        raise ValueError(f"{where}: column {column!r} holds no final answer")
    return text


def _last_boxed(solution: str, column: str, where: str) -> str:
    """The content of the last ``\\boxed{...}`` with verl's MATH helpers (as verl's MATH preprocessing)."""
    from verl.utils.reward_score.math_reward import last_boxed_only_string, remove_boxed

    boxed = last_boxed_only_string(solution)
    if boxed is None or not boxed.startswith("\\boxed"):
        raise ValueError(f"{where}: column {column!r} has no \\boxed{{...}} final answer")
    return remove_boxed(boxed).strip()


def _first_present(record: Mapping[str, Any], keys: Sequence[str], what: str, where: str) -> str:
    for key in keys:
        if key in record:
            return key
    raise ValueError(f"{where}: no {what} column; expected one of {list(keys)} (or pass --{what}-key), "
                     f"found {sorted(record)}")


def _text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: column {column!r} must be a non-empty string, got {value!r}")
    return value.strip()


def read_records(source: str, *, hub_config: str | None, source_split: str) -> list[dict[str, Any]]:
    """The source's rows as dicts: a local file, else whatever ``datasets.load_dataset`` opens."""
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path)
    if path.suffix in FILE_SUFFIXES:
        raise FileNotFoundError(f"source file not found: {source}")
    import datasets

    dataset = datasets.load_dataset(source, name=hub_config, split=source_split)
    return [dict(row) for row in dataset]


def _read_file(path: Path) -> list[dict[str, Any]]:
    import pandas as pd

    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".jsonl":
        frame = pd.read_json(path, lines=True)
    elif path.suffix == ".json":
        frame = pd.read_json(path)
    elif path.suffix == ".csv":
        frame = pd.read_csv(path)
    else:
        raise ValueError(f"{path}: unknown file type {path.suffix!r}; expected one of {list(FILE_SUFFIXES)}")
    # A cell missing from a row (NaN or None in pandas) is left out, as if the row had no such column.
    return [
        {str(key): _plain(value) for key, value in row.items() if not _missing(value)}
        for row in frame.to_dict("records")
    ]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """numpy scalars (as pandas returns them) to Python scalars."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=TRAIN_DATASETS + EVAL_DATASETS,
                        help="becomes data_source and the output folder name")
    parser.add_argument("--source", required=True,
                        help="a .parquet/.jsonl/.json/.csv file, or a datasets hub name or local dataset folder")
    parser.add_argument("--split", required=True, choices=("train", "test"), help="the output file's split")
    parser.add_argument("--source-split", help="split to read from a hub dataset (default: --split)")
    parser.add_argument("--hub-config", help="hub dataset configuration, e.g. main for openai/gsm8k")
    parser.add_argument("--question-key", help="column with the problem (default: question or problem)")
    parser.add_argument("--answer-key", help="column with the answer (default: answer; MATH: answer or solution)")
    parser.add_argument("--output-dir", type=Path, default=Path("~/data/gtpo").expanduser(),
                        help="writes OUTPUT_DIR/<dataset>/<split>.parquet (default ~/data/gtpo: the recipes' DATA_DIR)")
    parser.add_argument("--limit", type=int, help="keep only the first N rows")
    args = parser.parse_args(argv)
    if args.dataset in EVAL_DATASETS and args.split != "test":
        parser.error(f"{args.dataset} is an evaluation set: use --split test (read its hub split with --source-split)")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be a positive number of rows, got {args.limit}")
    return args


def main(argv: Sequence[str] | None = None) -> Path:
    """Convert one split; returns the parquet path written."""
    args = parse_args(argv)
    records = read_records(args.source, hub_config=args.hub_config, source_split=args.source_split or args.split)
    if args.limit is not None:
        records = records[: args.limit]
    if not records:
        raise ValueError(f"{args.source}: no rows to convert")
    rows = build_rows(records, args.dataset, args.split, question_key=args.question_key,
                      answer_key=args.answer_key, origin=args.source)
    output = args.output_dir.expanduser() / args.dataset / f"{args.split}.parquet"
    write_parquet(rows, output)
    print(f"wrote {len(rows)} {args.dataset} {args.split} rows to {output}")
    return output


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"prepare_data: {error}")
