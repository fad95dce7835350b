"""Side-by-side comparison of scored runs (e.g. a GTPO and a GRPO checkpoint): one table, one chart."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gtpo_plugin.evaluation.scoring import format_table

__all__ = ["comparison_rows", "load_report", "plot_comparison", "write_comparison"]


def load_report(path: str | Path) -> dict[str, Any]:
    """A ``*.scores.json`` written by ``gtpo-eval score``; ValueError naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scores file not found: {path}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(report, dict):
        raise ValueError(f"{path}: expected a scores object written by 'gtpo-eval score'")
    for key, kind in (("label", str), ("metrics", list), ("datasets", dict)):
        if not isinstance(report.get(key), kind):
            raise ValueError(
                f"{path}: missing or malformed {key!r}; is this a file written by 'gtpo-eval score'?"
            )
    if not report["datasets"]:
        raise ValueError(f"{path}: no datasets in this scores file")
    return report


def _union(lists: Sequence[Sequence[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        seen.update(dict.fromkeys(items))
    return list(seen)


def comparison_rows(
    reports: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None
) -> list[tuple[str, str, list[float]]]:
    """(dataset, metric, one value per report) rows; NaN where a report lacks that dataset or metric."""
    datasets = _union([list(report["datasets"]) for report in reports])
    available = _union([report["metrics"] for report in reports])
    unknown = [metric for metric in metrics or () if metric not in available]
    if unknown:
        raise ValueError(f"metrics {unknown} are in none of the scores files; available: {available}")
    chosen = list(metrics) if metrics else available
    rows = []
    for dataset in datasets:
        for metric in chosen:
            values = [float(report["datasets"].get(dataset, {}).get(metric, math.nan)) for report in reports]
            rows.append((dataset, metric, values))
    return rows


def plot_comparison(rows: Sequence[tuple[str, str, list[float]]], labels: Sequence[str], path: Path) -> None:
    """Grouped bars: one panel per metric, datasets on the x axis, one bar per run (in percent)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("the comparison chart needs matplotlib: pip install matplotlib") from error
    metrics = list(dict.fromkeys(metric for _, metric, _ in rows))
    datasets = list(dict.fromkeys(dataset for dataset, _, _ in rows))
    table = {(dataset, metric): values for dataset, metric, values in rows}
    columns = min(3, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.6 * lines), squeeze=False)
    width = 0.8 / len(labels)
    for axis, metric in zip(axes.flat, metrics, strict=False):
        for run, label in enumerate(labels):
            heights = [100 * table[(dataset, metric)][run] for dataset in datasets]
            positions = [index + (run - (len(labels) - 1) / 2) * width for index in range(len(datasets))]
            axis.bar(positions, heights, width=width, label=label)
        axis.set_title(metric)
        axis.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right", fontsize=8)
        axis.set_ylim(0, 100)
        axis.set_ylabel("%")
    for axis in list(axes.flat)[len(metrics) :]:
        axis.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_comparison(
    paths: Sequence[str | Path],
    output_dir: str | Path,
    labels: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    name: str = "comparison",
) -> tuple[str, Path, Path]:
    """Compare two or more scores files: returns the table text and the CSV and PNG paths written."""
    if len(paths) < 2:
        raise ValueError(f"compare needs at least two scores files, got {len(paths)}")
    reports = [load_report(path) for path in paths]
    labels = list(labels) if labels else [report["label"] for report in reports]
    if len(labels) != len(reports):
        raise ValueError(f"labels: got {len(labels)} labels for {len(reports)} scores files")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct, got {labels}; pass --labels to name the runs")
    rows = comparison_rows(reports, metrics)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = output_dir / f"{name}.csv", output_dir / f"{name}.png"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "metric", *labels])
        for dataset, metric, values in rows:
            writer.writerow([dataset, metric, *values])
    plot_comparison(rows, labels, png_path)
    text_rows = [
        [dataset, metric, *("-" if math.isnan(value) else f"{100 * value:.1f}" for value in values)]
        for dataset, metric, values in rows
    ]
    return format_table(["dataset", "metric", *labels], text_rows), csv_path, png_path
