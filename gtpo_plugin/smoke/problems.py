"""Synthetic addition problems for the smoke run, as JSONL rows ``{"question": ..., "answer": ...}``.

``scripts/prepare_data.py --dataset gsm8k --source problems.jsonl`` turns them into verl's RL parquet with
the paper's prompt, so the smoke run reads exactly the format the recipes read.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def problem_text(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


def addition_problems(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` problems ``a + b`` with 0 ≤ a, b < 100, drawn with ``seed`` (same seed, same problems)."""
    if count < 1:
        raise ValueError(f"count must be a positive number of problems, got {count}")
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randrange(100), rng.randrange(100)
        rows.append({"question": problem_text(a, b), "answer": str(a + b)})
    return rows


def write_problems(path: str | Path, count: int, seed: int) -> Path:
    """Write ``addition_problems(count, seed)`` to ``path`` as JSONL (one problem a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for row in addition_problems(count, seed):
            file.write(json.dumps(row) + "\n")
    return path
