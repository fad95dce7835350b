"""Read a file of generated samples and score it per dataset, as the paper reports its results.

Two inputs are read:

* verl's generation output (``python -m verl.trainer.main_generation_server``): a parquet file with
  the prompt rows plus a ``responses`` column of n completions; the reference is
  ``reward_model.ground_truth`` and the dataset is ``data_source``.
* JSONL, one prompt a line: ``{"dataset": ..., "prompt": ..., "reference": ..., "completions": [...]}``
  (``dataset`` and ``prompt`` optional; verl's names ``data_source``, ``responses`` and
  ``reward_model.ground_truth`` are read too).

Per dataset the metrics are: accuracy (correct completions / all completions), format consistency
(well-formed completions / all completions), pass@1 and pass@k (unbiased, averaged over prompts),
maj@k (majority vote over blocks of k, averaged over prompts). All are fractions in [0, 1].
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtpo_plugin.evaluation.answers import (
    answers_match,
    extract_answer,
    is_well_formatted,
    normalize_answer,
    reference_text,
)
from gtpo_plugin.evaluation.metrics import maj_at_k, pass_at_k

logger = logging.getLogger(__name__)

__all__ = [
    "PromptScore",
    "SampleRecord",
    "default_ks",
    "format_table",
    "metric_names",
    "read_samples",
    "report_table",
    "score_files",
    "score_prompt",
    "score_records",
    "write_scores",
]

_COMPLETIONS_KEYS = ("completions", "responses")
_REFERENCE_KEYS = ("reference", "ground_truth")
_DATASET_KEYS = ("dataset", "data_source")


@dataclass(frozen=True)
class SampleRecord:
    """One prompt of a samples file: its dataset, reference answer, completions and origin."""

    dataset: str
    reference: str
    completions: tuple[str, ...]
    location: str  # "file:line" (JSONL) or "file: row i" (parquet), for error messages


@dataclass(frozen=True)
class PromptScore:
    """Per-completion verdicts for one prompt; ``keys`` are normalised answers (None: no answer)."""

    correct: tuple[bool, ...]
    formatted: tuple[bool, ...]
    keys: tuple[str | None, ...]


def read_samples(path: str | Path) -> list[SampleRecord]:
    """All prompts of a ``.jsonl`` or ``.parquet`` samples file; ValueError naming file and line if bad."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"samples file not found: {path}")
    if path.suffix == ".parquet":
        records = list(_read_parquet(path))
    elif path.suffix in (".jsonl", ".json"):
        records = list(_read_jsonl(path))
    else:
        raise ValueError(f"{path}: unknown samples format {path.suffix!r}; expected .jsonl or .parquet")
    if not records:
        raise ValueError(f"{path}: no samples (the file holds no prompt)")
    return records


def _read_jsonl(path: Path) -> Iterable[SampleRecord]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            location = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                message = f"{location}: not valid JSON ({error.msg} at column {error.colno})"
                raise ValueError(message) from None
            yield _to_record(row, location, default_dataset=path.stem)


def _read_parquet(path: Path) -> Iterable[SampleRecord]:
    try:
        import pandas as pd
    except ImportError as error:
        raise ImportError(
            "reading parquet samples needs pandas and pyarrow: pip install pandas pyarrow"
        ) from error
    frame = pd.read_parquet(path)
    for number, row in enumerate(frame.to_dict("records"), start=1):
        yield _to_record(_plain(row), f"{path}: row {number}", default_dataset=path.stem)


def _plain(value: Any) -> Any:
    """numpy arrays and scalars (as pandas returns them) to Python lists and scalars."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _plain(value.tolist())
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _pick(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in row:
            return row[key]
    return None


def _to_record(row: Any, location: str, default_dataset: str) -> SampleRecord:
    if not isinstance(row, Mapping):
        raise ValueError(f"{location}: expected a JSON object, got {type(row).__name__}")
    completions = _pick(row, _COMPLETIONS_KEYS)
    if completions is None:
        raise ValueError(f"{location}: missing 'completions' (a list of generated strings)")
    if not isinstance(completions, list) or not completions:
        raise ValueError(f"{location}: 'completions' must be a non-empty list of strings")
    for index, completion in enumerate(completions):
        if not isinstance(completion, str):
            raise ValueError(
                f"{location}: completion {index} must be a string, got {type(completion).__name__}"
            )
    reference = _pick(row, _REFERENCE_KEYS)
    if reference is None and isinstance(row.get("reward_model"), Mapping):
        reference = row["reward_model"].get("ground_truth")
    dataset = _pick(row, _DATASET_KEYS)
    if dataset is None:
        dataset = default_dataset
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"{location}: 'dataset' must be a non-empty string, got {dataset!r}")
    return SampleRecord(
        dataset=dataset,
        reference=reference_text(reference, location),
        completions=tuple(completions),
        location=location,
    )


def default_ks(records: Sequence[SampleRecord]) -> list[int]:
    """The powers of two up to the smallest n in ``records``, and that n: 1, 2, 4, 8 for n = 8."""
    n = min(len(record.completions) for record in records)
    ks = [2**power for power in range(n.bit_length()) if 2**power <= n]
    return sorted({*ks, n})


def _check_ks(records: Sequence[SampleRecord], ks: Sequence[int]) -> list[int]:
    if not ks:
        raise ValueError("k: give at least one k value")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k values must be positive integers, got {k!r}")
    largest = max(ks)
    for record in records:
        if largest > len(record.completions):
            raise ValueError(
                f"{record.location}: k={largest} is larger than the n={len(record.completions)} "
                "completions of this prompt; ask for k <= n"
            )
    return sorted(set(ks))


def score_prompt(record: SampleRecord) -> PromptScore:
    """Extract, check and normalise every completion of one prompt (math-verify runs here)."""
    answers = [extract_answer(completion) for completion in record.completions]
    return PromptScore(
        correct=tuple(answers_match(answer, record.reference) for answer in answers),
        formatted=tuple(is_well_formatted(completion) for completion in record.completions),
        keys=tuple(None if answer is None else normalize_answer(answer) for answer in answers),
    )


def metric_names(ks: Sequence[int]) -> list[str]:
    """Column names in table order for the given k values."""
    passes = [f"pass@{k}" for k in sorted({1, *ks})]
    return ["accuracy", "format_consistency", *passes, *(f"maj@{k}" for k in sorted(set(ks)))]


def score_records(
    records: Sequence[SampleRecord], ks: Sequence[int] | None = None, workers: int = 1
) -> dict[str, dict[str, float | int]]:
    """Metrics per dataset (first-appearance order): prompts, samples, then :func:`metric_names`.

    ``ks`` defaults to :func:`default_ks`; a k above any prompt's n is a ValueError naming that
    prompt's line. ``workers`` > 1 scores prompts in that many processes (math-verify's alarm
    works there, as each process runs on its main thread).
    """
    if not records:
        raise ValueError("records: no samples to score")
    ks = _check_ks(records, default_ks(records) if ks is None else ks)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            scores = list(pool.map(score_prompt, records, chunksize=max(1, len(records) // (8 * workers))))
    else:
        scores = [score_prompt(record) for record in records]
    by_dataset: dict[str, list[PromptScore]] = {}
    for record, score in zip(records, scores, strict=True):
        by_dataset.setdefault(record.dataset, []).append(score)
    return {name: _dataset_metrics(group, ks) for name, group in by_dataset.items()}


def _dataset_metrics(scores: Sequence[PromptScore], ks: Sequence[int]) -> dict[str, float | int]:
    samples = sum(len(score.correct) for score in scores)
    metrics: dict[str, float | int] = {
        "prompts": len(scores),
        "samples": samples,
        "accuracy": sum(sum(score.correct) for score in scores) / samples,
        "format_consistency": sum(sum(score.formatted) for score in scores) / samples,
    }
    for k in sorted({1, *ks}):
        metrics[f"pass@{k}"] = _mean(pass_at_k(len(s.correct), sum(s.correct), k) for s in scores)
    for k in ks:
        metrics[f"maj@{k}"] = _mean(maj_at_k(s.keys, s.correct, k) for s in scores)
    return metrics


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items)


def score_files(
    paths: Sequence[str | Path], ks: Sequence[int] | None = None, workers: int = 1, label: str | None = None
) -> dict[str, Any]:
    """Score one or more samples files together; returns the report written by :func:`write_scores`."""
    if not paths:
        raise ValueError("paths: give at least one samples file")
    records = [record for path in paths for record in read_samples(path)]
    ks = default_ks(records) if ks is None else ks
    datasets = score_records(records, ks, workers)
    return {
        "label": label or Path(paths[0]).stem,
        "samples_files": [str(path) for path in paths],
        "k": sorted(set(ks)),
        "metrics": metric_names(ks),
        "datasets": datasets,
    }


def write_scores(report: Mapping[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<label>.scores.json`` and ``<label>.scores.csv`` (one row per dataset) to ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / f"{report['label']}.scores.json"
    csv_path = output_dir / f"{report['label']}.scores.csv"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    columns = ["prompts", "samples", *report["metrics"]]
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", *columns])
        for name, values in report["datasets"].items():
            writer.writerow([name, *(values[column] for column in columns)])
    return json_path, csv_path


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for line_number, row in enumerate([header, *rows]):
        cells = [
            str(cell).ljust(widths[0]) if i == 0 else str(cell).rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells))
        if line_number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def report_table(report: Mapping[str, Any]) -> str:
    """The report as a table, metrics in percent."""
    header = ["dataset", "prompts", "samples", *report["metrics"]]
    rows = [
        [
            name,
            str(values["prompts"]),
            str(values["samples"]),
            *(f"{100 * values[metric]:.1f}" for metric in report["metrics"]),
        ]
        for name, values in report["datasets"].items()
    ]
    return format_table(header, rows)
