"""Compare two verl training runs (GTPO vs GRPO) step by step: a table and a PNG of their curves.

Each run is what verl logged: its file logger's JSONL (``{"step": N, "data": {...}}`` a line; the recipes
write ``runs/<experiment>/metrics.jsonl``), tensorboard event files, or a folder holding either (a
recipe's run folder)::

    python scripts/compare_runs.py runs/gtpo_gsm8k_Qwen2.5-3B-Instruct_fsdp runs/grpo_gsm8k_Qwen2.5-3B-Instruct_fsdp \\
        --labels GTPO GRPO --output-dir comparison/

Plotted, each panel with both runs on the same axes: the training reward (``critic/score/mean``), the
validation accuracy per dataset (``val-core/<dataset>/.../mean@n``), the policy entropy
(``actor/entropy``), the mean response length (``response_length/mean``), every ``gtpo/*`` metric, and
any ``--metric`` asked for. Per-step curves are drawn faint with a moving average on top. The table gives,
per metric, each run's final value (the mean of its last ``--tail`` logged points) and the difference.
Writes ``comparison.png``, ``comparison.md`` and ``comparison.csv`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REWARD_KEYS = ("critic/score/mean", "critic/rewards/mean")
ACCURACY = re.compile(r"^val-core/.+/mean@\d+$")
FIXED_KEYS = ("actor/entropy", "response_length/mean")
TITLES = {"critic/score/mean": "reward", "critic/rewards/mean": "reward", "actor/entropy": "entropy (nats)",
          "response_length/mean": "response length (tokens)"}
COLORS = ("tab:blue", "tab:orange")
EVENTS = "events.out.tfevents.*"

Series = list[tuple[int, float]]  # (step, value), sorted by step, one value per step


@dataclass(frozen=True)
class Run:
    """One run's metrics: ``series[key]`` is that metric's (step, value) points."""

    label: str
    source: Path
    series: dict[str, Series]


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read a run from a JSONL file, tensorboard events, or a folder with either; ValueError if none."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run not found: {path}")
    source = _find_source(path)
    points = _read_jsonl(source) if source.suffix == ".jsonl" else _read_tensorboard(source)
    if not points:
        raise ValueError(f"{source}: no numeric metrics logged")
    series: dict[str, Series] = {}
    for key, by_step in points.items():
        series[key] = sorted(by_step.items())
    return Run(label or _default_label(path), source, series)


def _default_label(path: Path) -> str:
    """The run folder's name (a recipe names it after the experiment), else the file's stem."""
    if path.is_file():
        path = path.parent if path.stem == "metrics" or path.match(EVENTS) else path.with_suffix("")
    if path.name == "tensorboard":
        path = path.parent
    return path.name


def _find_source(path: Path) -> Path:
    """The JSONL file, or the folder of event files, that holds a run's metrics."""
    if path.is_file():
        if path.suffix == ".jsonl":
            return path
        if path.match(EVENTS):
            return path.parent
        raise ValueError(f"{path}: expected verl's file-logger .jsonl, tensorboard events, or a folder of either")
    if (path / "metrics.jsonl").is_file():
        return path / "metrics.jsonl"
    jsonl = sorted(path.glob("*.jsonl"))
    if len(jsonl) == 1:
        return jsonl[0]
    if len(jsonl) > 1:
        raise ValueError(f"{path}: several .jsonl files ({[p.name for p in jsonl]}); name the run's file")
    folders = sorted({event.parent for event in path.rglob(EVENTS)})
    if len(folders) == 1:
        return folders[0]
    if len(folders) > 1:
        raise ValueError(f"{path}: tensorboard events in several folders ({folders}); name the run's folder")
    raise ValueError(f"{path}: no metrics.jsonl, .jsonl file or tensorboard events found")


def _read_jsonl(path: Path) -> dict[str, dict[int, float]]:
    """verl's file logger: one ``{"step": N, "data": {metric: value}}`` a line; a later line wins a step."""
    points: dict[str, dict[int, float]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            step = record.get("step") if isinstance(record, dict) else None
            data = record.get("data") if isinstance(record, dict) else None
            if isinstance(step, bool) or not isinstance(step, int) or not isinstance(data, dict):
                raise ValueError(f"{path}:{number}: expected {{\"step\": <int>, \"data\": {{...}}}} as verl's "
                                 "file logger writes")
            for key, value in data.items():
                if _number(value):
                    points.setdefault(key, {})[step] = float(value)
    return points


def _read_tensorboard(folder: Path) -> dict[str, dict[int, float]]:
    """Scalars of the event files in ``folder`` (verl's tensorboard logger); a later event wins a step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    points: dict[str, dict[int, float]] = {}
    for key in accumulator.Tags()["scalars"]:
        for event in accumulator.Scalars(key):
            if math.isfinite(event.value):
                points.setdefault(key, {})[int(event.step)] = float(event.value)
    return points


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def panel_keys(runs: Sequence[Run], extra: Sequence[str] = ()) -> list[str]:
    """The metrics to show, in panel order; only those that at least one run logged."""
    logged = set().union(*(run.series for run in runs))
    keys = [next((key for key in REWARD_KEYS if key in logged), REWARD_KEYS[0])]
    keys += sorted(key for key in logged if ACCURACY.match(key))
    keys += [*FIXED_KEYS, *sorted(key for key in logged if key.startswith("gtpo/"))]
    unknown = [key for key in extra if key not in logged]
    if unknown:
        raise ValueError(f"metric(s) {unknown} logged by neither run; they logged {sorted(logged)}")
    keys += [key for key in extra if key not in keys]
    return [key for key in keys if key in logged]


def final_value(series: Series, tail: int) -> float:
    """Mean of the last ``tail`` points: the run's end state, less one step's noise."""
    values = [value for _, value in series[-tail:]]
    return sum(values) / len(values)


def comparison_rows(runs: Sequence[Run], keys: Sequence[str], tail: int) -> list[dict[str, str]]:
    """One row per metric: each run's final value and point count, and the difference (second − first)."""
    first, second = runs
    rows = []
    for key in keys:
        finals = [final_value(run.series[key], tail) if key in run.series else None for run in runs]
        row = {"metric": key}
        for run, final in zip(runs, finals, strict=True):
            row[f"{run.label} final"] = "not logged" if final is None else f"{final:.4g}"
            row[f"{run.label} points"] = str(len(run.series.get(key, [])))
        a, b = finals
        row[f"{second.label} - {first.label}"] = "" if a is None or b is None else f"{b - a:+.4g}"
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[column] for column in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` points, same length as ``values``."""
    averages, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averages.append(total / min(index + 1, window))
    return averages


def plot(runs: Sequence[Run], keys: Sequence[str], path: Path, smooth: int) -> None:
    """One panel per metric, both runs on the same axes; faint raw curves under a moving average."""
    from matplotlib.figure import Figure

    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(5.0 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, key in zip(axes, keys, strict=False):
        for run, color in zip(runs, COLORS, strict=True):
            series = run.series.get(key)
            if not series:
                continue
            steps, values = zip(*series, strict=True)
            if smooth > 1 and len(values) >= 2 * smooth:
                axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                axis.plot(steps, moving_average(values, smooth), color=color, label=run.label)
            else:
                axis.plot(steps, values, color=color, marker="o", markersize=3, label=run.label)
        axis.set_title(_title(key), fontsize=9)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes[len(keys):]:
        axis.set_visible(False)
    figure.suptitle(" vs ".join(run.label for run in runs))
    figure.savefig(path, dpi=110)


def _title(key: str) -> str:
    """A panel's title: what the metric is, then its verl name."""
    if key in TITLES:
        return f"{TITLES[key]}\n{key}"
    if ACCURACY.match(key):
        dataset, variable = key.split("/")[1:3]
        return f"validation {'accuracy' if variable == 'acc' else variable}, {dataset}\n{key}"
    return key


def write_outputs(runs: Sequence[Run], output_dir: Path, *, extra: Sequence[str] = (), tail: int = 5,
                  smooth: int = 10) -> list[dict[str, str]]:
    """Write comparison.png, comparison.md and comparison.csv; returns the table's rows."""
    keys = panel_keys(runs, extra)
    if not keys:
        raise ValueError("the runs share no metric to compare: " + ", ".join(str(run.source) for run in runs))
    rows = comparison_rows(runs, keys, tail)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot(runs, keys, output_dir / "comparison.png", smooth)
    (output_dir / "comparison.md").write_text(markdown_table(rows), encoding="utf-8")
    with (output_dir / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs=2, help="two runs: a .jsonl file, tensorboard events, or a run folder")
    parser.add_argument("--labels", nargs=2, help="names for the two runs (default: file or folder names)")
    parser.add_argument("--output-dir", type=Path, default=Path("comparison"), help="default: ./comparison")
    parser.add_argument("--metric", action="append", default=[], help="another metric to plot (repeatable)")
    parser.add_argument("--tail", type=int, default=5, help="final value = mean of the last N points (default 5)")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average window in points; 1 = none")
    args = parser.parse_args(argv)
    if args.tail < 1 or args.smooth < 1:
        parser.error("--tail and --smooth must be at least 1")
    labels = args.labels or [None, None]
    if args.labels and args.labels[0] == args.labels[1]:
        parser.error("--labels must differ")
    runs = [load_run(path, label) for path, label in zip(args.runs, labels, strict=True)]
    if runs[0].label == runs[1].label:
        parser.error(f"both runs are named {runs[0].label!r}; tell them apart with --labels")
    rows = write_outputs(runs, args.output_dir, extra=args.metric, tail=args.tail, smooth=args.smooth)
    print(markdown_table(rows), end="")
    print(f"wrote {args.output_dir / 'comparison.png'}, comparison.md and comparison.csv")
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"compare_runs: {error}")
