"""Compare verl training runs (GTPO vs GRPO), one run or several seeds per arm: a table and a PNG of the curves.

Each run is what verl logged: its file logger's JSONL (``{"step": N, "data": {...}}`` a line; the recipes
write ``runs/<experiment>/metrics.jsonl``), tensorboard event files, or a folder holding either (a
recipe's run folder). One run per arm::

    python scripts/compare_runs.py runs/gtpo_paper_gsm8k_Qwen2.5-3B-Instruct_fsdp \\
        runs/grpo_paper_gsm8k_Qwen2.5-3B-Instruct_fsdp --labels GTPO GRPO --output-dir comparison/

Several seeds per arm (two or more arms, the first is the baseline of the differences)::

    python scripts/compare_runs.py --arm GTPO runs/gtpo_s0 runs/gtpo_s1 runs/gtpo_s2 \\
        --arm GRPO runs/grpo_s0 runs/grpo_s1 runs/grpo_s2 --output-dir comparison/

Plotted, each panel with every arm on the same axes: the training reward (``critic/score/mean``), the
validation accuracy per dataset (``val-core/<dataset>/.../mean@n``), the policy entropy
(``actor/entropy``), the mean response length (``response_length/mean``), every ``gtpo/*`` metric, and
any ``--metric`` asked for. An arm of one run is drawn faint per step with a moving average on top; an arm
of several runs as the mean over seeds with its Student t band (``--confidence``, 95% by default), on the
steps every seed covers (each seed smoothed, then interpolated linearly onto the union of their steps),
over faint per-seed curves.

The table gives, per metric, each arm's final value (per run: the mean of its last ``--tail`` points up
to the last step that every run logging the metric reached, so that a shorter run does not compare its
step 50 with another's step 500), its mean over runs with the t interval, and each arm's difference from
the first arm. The difference gets a paired t interval when both arms hold the same seeds, read from the
run names (a name ending in ``_s<N>``, ``-s<N>``, ``_seed<N>`` or ``seed<N>``); otherwise, and with one
run per arm, no interval (said in the table). Writes ``comparison.png``, ``comparison.md`` and
``comparison.csv`` to ``--output-dir``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gtpo_plugin.stats import Interval, mean_band, mean_ci, paired_difference

logger = logging.getLogger("compare_runs")

REWARD_KEYS = ("critic/score/mean", "critic/rewards/mean")
ACCURACY = re.compile(r"^val-core/.+/mean@\d+$")
FIXED_KEYS = ("actor/entropy", "response_length/mean")
TITLES = {"critic/score/mean": "reward", "critic/rewards/mean": "reward", "actor/entropy": "entropy (nats)",
          "response_length/mean": "response length (tokens)"}
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray")
SEED_IN_NAME = re.compile(r"(?:^|[_-])(?:seed|s)[_-]?(\d+)$")
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


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison: its runs, and their seeds when every run's name gives one."""

    label: str
    runs: tuple[Run, ...]
    seeds: tuple[int, ...] | None


def seed_of(name: str) -> int | None:
    """The seed a run's name ends with (``gtpo_s3``, ``grpo-seed12``), or None."""
    match = SEED_IN_NAME.search(name)
    return None if match is None else int(match.group(1))


def make_arm(label: str, runs: Sequence[Run]) -> Arm:
    """An arm of ``runs``; ValueError when a run appears twice or two runs carry the same seed."""
    if not runs:
        raise ValueError(f"arm {label!r} has no run")
    sources = [run.source for run in runs]
    repeated = sorted({str(source) for source in sources if sources.count(source) > 1})
    if repeated:
        raise ValueError(f"arm {label!r} lists the same run twice: {repeated}")
    seeds = [seed_of(run.label) for run in runs]
    if any(seed is None for seed in seeds):
        return Arm(label, tuple(runs), None)
    known = [seed for seed in seeds if seed is not None]
    if len(set(known)) != len(known):
        raise ValueError(f"arm {label!r}: two runs carry the same seed in their names "
                         f"({[run.label for run in runs]})")
    return Arm(label, tuple(runs), tuple(known))


def panel_keys(arms: Sequence[Arm], extra: Sequence[str] = ()) -> list[str]:
    """The metrics to show, in panel order; only those that at least one run logged."""
    logged = set().union(*(run.series for arm in arms for run in arm.runs))
    keys = [next((key for key in REWARD_KEYS if key in logged), REWARD_KEYS[0])]
    keys += sorted(key for key in logged if ACCURACY.match(key))
    keys += [*FIXED_KEYS, *sorted(key for key in logged if key.startswith("gtpo/"))]
    unknown = [key for key in extra if key not in logged]
    if unknown:
        raise ValueError(f"metric(s) {unknown} logged by no run; the runs logged {sorted(logged)}")
    keys += [key for key in extra if key not in keys]
    return [key for key in keys if key in logged]


def common_last_step(arms: Sequence[Arm], key: str) -> int:
    """The last step that every run logging ``key`` reached: the horizon at which finals are compared."""
    return min(run.series[key][-1][0] for arm in arms for run in arm.runs if key in run.series)


def final_value(series: Series, tail: int, last_step: int | None = None) -> float | None:
    """Mean of the last ``tail`` points at steps ≤ ``last_step`` (all when None); None when there are none."""
    values = [value for step, value in series if last_step is None or step <= last_step][-tail:]
    return sum(values) / len(values) if values else None


def arm_finals(arm: Arm, key: str, tail: int, last_step: int) -> dict[int, float]:
    """Final value of each run of ``arm`` that logged ``key``, by the run's position in the arm."""
    finals = {}
    for index, run in enumerate(arm.runs):
        final = final_value(run.series.get(key, []), tail, last_step)
        if final is not None:
            finals[index] = final
    return finals


def _interval_text(interval: Interval) -> str:
    if interval.n == 1:
        return "n = 1: no CI"
    return f"[{interval.ci_low:.4g}, {interval.ci_high:.4g}]"


def _difference(first: Arm, first_finals: dict[int, float], other: Arm, other_finals: dict[int, float],
                confidence: float) -> tuple[str, str]:
    """(other − first as text, its interval as text): paired by seed when both arms hold the same seeds."""
    difference = sum(other_finals.values()) / len(other_finals) - sum(first_finals.values()) / len(first_finals)
    if first.seeds is None or other.seeds is None:
        note = "n = 1: no CI" if len(first.runs) == len(other.runs) == 1 else "no seeds in run names: no CI"
        return f"{difference:+.4g}", note
    first_by_seed = {first.seeds[index]: value for index, value in first_finals.items()}
    other_by_seed = {other.seeds[index]: value for index, value in other_finals.items()}
    if set(first_by_seed) != set(other_by_seed):
        return f"{difference:+.4g}", "seeds differ: no CI"
    seeds = sorted(first_by_seed)
    paired = paired_difference([other_by_seed[seed] for seed in seeds], [first_by_seed[seed] for seed in seeds],
                               confidence)
    text = "n = 1: no CI" if paired.n == 1 else f"[{paired.ci_low:+.4g}, {paired.ci_high:+.4g}] paired, n = {paired.n}"
    return f"{paired.mean:+.4g}", text


def comparison_rows(arms: Sequence[Arm], keys: Sequence[str], tail: int,
                    confidence: float = 0.95) -> list[dict[str, str]]:
    """One row per metric: each arm's mean final value, t interval and run count; each arm minus the first."""
    ci = f"{100 * confidence:g}% CI"
    rows = []
    for key in keys:
        last_step = common_last_step(arms, key)
        row = {"metric": key, "up to step": str(last_step)}
        finals = [arm_finals(arm, key, tail, last_step) for arm in arms]
        for arm, arm_final in zip(arms, finals, strict=True):
            if arm_final:
                interval = mean_ci(list(arm_final.values()), confidence)
                row[f"{arm.label} mean"], row[f"{arm.label} {ci}"] = f"{interval.mean:.4g}", _interval_text(interval)
            else:
                row[f"{arm.label} mean"], row[f"{arm.label} {ci}"] = "not logged", ""
            row[f"{arm.label} runs"] = f"{len(arm_final)}/{len(arm.runs)}"
        for arm, arm_final in zip(arms[1:], finals[1:], strict=True):
            name = f"{arm.label} - {arms[0].label}"
            if arm_final and finals[0]:
                row[name], row[f"{name} {ci}"] = _difference(arms[0], finals[0], arm, arm_final, confidence)
            else:
                row[name], row[f"{name} {ci}"] = "", ""
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


def seed_band(curves: Sequence[Series], smooth: int,
              confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, mean, low, high) over seeds on the steps every seed covers; None when they share no step.

    Each seed's curve is smoothed (when every seed has at least ``2 * smooth`` points), then interpolated
    linearly onto the union of the seeds' steps inside the common range, so seeds whose steps do not line
    up still average step by step. Cost O(seeds · steps).
    """
    first, last = max(curve[0][0] for curve in curves), min(curve[-1][0] for curve in curves)
    if first > last:
        return None
    grid = np.array(sorted({step for curve in curves for step, _ in curve if first <= step <= last}), dtype=float)
    smoothed = smooth > 1 and all(len(curve) >= 2 * smooth for curve in curves)
    rows = []
    for curve in curves:
        steps, values = zip(*curve, strict=True)
        rows.append(np.interp(grid, steps, moving_average(values, smooth) if smoothed else values))
    mean, low, high = mean_band(np.stack(rows), confidence)
    return grid, mean, low, high


def plot(arms: Sequence[Arm], keys: Sequence[str], path: Path, smooth: int, confidence: float = 0.95) -> None:
    """One panel per metric, every arm on the same axes: a run's curve, or several seeds' mean and t band."""
    from matplotlib.figure import Figure

    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    figure = Figure(figsize=(5.0 * columns, 3.4 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, key in zip(axes, keys, strict=False):
        for arm, color in zip(arms, _colors(len(arms)), strict=True):
            curves = [run.series[key] for run in arm.runs if run.series.get(key)]
            if len(curves) == 1:
                _plot_run(axis, curves[0], color, arm.label, smooth)
            elif curves:
                _plot_seeds(axis, key, arm.label, curves, color, smooth, confidence)
        axis.set_title(_title(key), fontsize=9)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes[len(keys):]:
        axis.set_visible(False)
    figure.suptitle(" vs ".join(arm.label for arm in arms))
    figure.savefig(path, dpi=110)


def _colors(count: int) -> list[str]:
    return [COLORS[index % len(COLORS)] for index in range(count)]


def _plot_run(axis: Any, series: Series, color: str, label: str, smooth: int) -> None:
    steps, values = zip(*series, strict=True)
    if smooth > 1 and len(values) >= 2 * smooth:
        axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        axis.plot(steps, moving_average(values, smooth), color=color, label=label)
    else:
        axis.plot(steps, values, color=color, marker="o", markersize=3, label=label)


def _plot_seeds(axis: Any, key: str, label: str, curves: Sequence[Series], color: str, smooth: int,
                confidence: float) -> None:
    for curve in curves:
        steps, values = zip(*curve, strict=True)
        axis.plot(steps, values, color=color, alpha=0.12, linewidth=0.7)
    band = seed_band(curves, smooth, confidence)
    if band is None:
        logger.warning("%s: the %d runs of %s share no step range; drawn one by one, without a band",
                       key, len(curves), label)
        return
    grid, mean, low, high = band
    axis.fill_between(grid, low, high, color=color, alpha=0.25, linewidth=0)
    axis.plot(grid, mean, color=color, label=f"{label} (mean of {len(curves)}, {100 * confidence:g}% CI)")


def _title(key: str) -> str:
    """A panel's title: what the metric is, then its verl name."""
    if key in TITLES:
        return f"{TITLES[key]}\n{key}"
    if ACCURACY.match(key):
        dataset, variable = key.split("/")[1:3]
        return f"validation {'accuracy' if variable == 'acc' else variable}, {dataset}\n{key}"
    return key


def write_outputs(arms: Sequence[Arm], output_dir: Path, *, extra: Sequence[str] = (), tail: int = 5,
                  smooth: int = 10, confidence: float = 0.95) -> list[dict[str, str]]:
    """Write comparison.png, comparison.md and comparison.csv; returns the table's rows."""
    keys = panel_keys(arms, extra)
    if not keys:
        sources = ", ".join(str(run.source) for arm in arms for run in arm.runs)
        raise ValueError(f"the runs share no metric to compare: {sources}")
    rows = comparison_rows(arms, keys, tail, confidence)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot(arms, keys, output_dir / "comparison.png", smooth, confidence)
    (output_dir / "comparison.md").write_text(markdown_table(rows), encoding="utf-8")
    with (output_dir / "comparison.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def parse_arms(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Arm]:
    """The arms from either two positional runs (``--labels``) or repeated ``--arm LABEL RUN [RUN ...]``."""
    if args.arm and (args.runs or args.labels):
        parser.error("give either two runs (with --labels) or --arm LABEL RUN [RUN ...] options, not both")
    if not args.arm:
        if len(args.runs) != 2:
            parser.error(f"give two runs, or --arm LABEL RUN [RUN ...] at least twice; got {len(args.runs)} run(s)")
        labels = args.labels or [None, None]
        if args.labels and args.labels[0] == args.labels[1]:
            parser.error("--labels must differ")
        runs = [load_run(path, label) for path, label in zip(args.runs, labels, strict=True)]
        if runs[0].label == runs[1].label:
            parser.error(f"both runs are named {runs[0].label!r}; tell them apart with --labels")
        return [make_arm(run.label, [run]) for run in runs]
    for arm in args.arm:
        if len(arm) < 2:
            parser.error(f"--arm {arm[0]}: give the arm's label, then at least one run")
    labels = [arm[0] for arm in args.arm]
    if len(labels) < 2:
        parser.error("give --arm at least twice (two arms to compare)")
    if len(set(labels)) != len(labels):
        parser.error(f"--arm labels must differ, got {labels}")
    arms = [make_arm(arm[0], [load_run(path) for path in arm[1:]]) for arm in args.arm]
    owner: dict[Path, str] = {}
    for arm in arms:
        for run in arm.runs:
            if run.source in owner:
                raise ValueError(f"run {run.source} is in both arm {owner[run.source]!r} and arm {arm.label!r}")
            owner[run.source] = arm.label
    return arms


def main(argv: Sequence[str] | None = None) -> list[dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="two runs (one per arm): a .jsonl file, tensorboard events, or a "
                                                "run folder")
    parser.add_argument("--labels", nargs=2, help="names for the two runs (default: file or folder names)")
    parser.add_argument("--arm", nargs="+", action="append", metavar="LABEL RUN",
                        help="an arm: its label, then its runs (seeds); repeat for each arm, the first is the "
                             "baseline of the differences")
    parser.add_argument("--output-dir", type=Path, default=Path("comparison"), help="default: ./comparison")
    parser.add_argument("--metric", action="append", default=[], help="another metric to plot (repeatable)")
    parser.add_argument("--tail", type=int, default=5, help="final value = mean of the last N points (default 5)")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average window in points; 1 = none")
    parser.add_argument("--confidence", type=float, default=0.95, help="of the t intervals (default 0.95)")
    args = parser.parse_args(argv)
    if args.tail < 1 or args.smooth < 1:
        parser.error("--tail and --smooth must be at least 1")
    if not 0.0 < args.confidence < 1.0:
        parser.error(f"--confidence must be in (0, 1), got {args.confidence}")
    arms = parse_arms(parser, args)
    rows = write_outputs(arms, args.output_dir, extra=args.metric, tail=args.tail, smooth=args.smooth,
                         confidence=args.confidence)
    print(markdown_table(rows), end="")
    print(f"wrote {args.output_dir / 'comparison.png'}, comparison.md and comparison.csv")
    return rows


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"compare_runs: {error}")
