"""The demo's outputs: per-step metrics as JSON, a PNG of both runs, a text view of one group, a summary table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtpo_plugin.demo.train import StepRecord
from gtpo_plugin.demo.vocab import Vocab

# (metric key, panel title) of the PNG, in reading order.
PANELS = (
    ("reward/mean", "reward (accuracy of sampled answers)"),
    ("format/accuracy", "format accuracy"),
    ("gtpo/mean_completion_entropy", "entropy <H>_i (nats)"),
    ("response_length/mean", "completion length (tokens)"),
    ("gtpo/protected_token_frac", "gtpo/protected_token_frac"),
    ("gtpo/amplified_token_frac", "gtpo/amplified_token_frac"),
    ("gtpo/filtered_completion_frac", "gtpo/filtered_completion_frac"),
    ("demo/protected_grad_abs", "push on conflict tokens |dL/dlog p|"),
)
COLORS = {"gtpo": "tab:blue", "grpo": "tab:orange"}


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON; non-finite floats become null (strict JSON)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    path.write_text(json.dumps(clean(payload), indent=1, allow_nan=False) + "\n", encoding="utf-8")


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    array = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(array, 0, 0.0))
    ends = np.arange(1, len(array) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot(path: Path, histories: dict[str, list[dict[str, float]]], *, threshold: float) -> None:
    """Eight panels, one curve per algorithm (faint: raw, solid: moving average over ~10% of the run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = max(len(history) for history in histories.values())
    window = max(1, steps // 10)
    figure, axes = plt.subplots(2, 4, figsize=(17, 7.5), constrained_layout=True)
    for axis, (key, title) in zip(axes.flat, PANELS, strict=True):
        for name, history in histories.items():
            x = [record["step"] for record in history]
            y = [record.get(key, math.nan) for record in history]
            axis.plot(x, y, color=COLORS.get(name), alpha=0.25, linewidth=0.8)
            axis.plot(x, smooth(y, window), color=COLORS.get(name), linewidth=2, label=name.upper())
        if key == "gtpo/mean_completion_entropy":
            axis.axhline(threshold, color="grey", linestyle=":", linewidth=1, label="filter threshold ln 2")
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("RL step")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(loc="best", fontsize=9)
    axes.flat[2].legend(loc="best", fontsize=8)
    figure.suptitle(
        "GTPO vs GRPO from the same warm-up weights and seeds, through verl's compute_advantage and policy losses\n"
        "(on GRPO's batches the gtpo/* panels show what GTPO would have done; GRPO trains on A_i alone)"
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def pick_group(record: StepRecord) -> int | None:
    """The group of this step with both rewards and the most protected tokens (None if none is mixed)."""
    rewards = torch.tensor([g.reward for g in record.rollout.grades])
    size = record.rollout.group_size
    protected = (record.diagnostics.weights == 0).sum(dim=1)
    best, best_count = None, -1
    for group in range(len(record.rollout.problems)):
        rows = slice(group * size, (group + 1) * size)
        if rewards[rows].min() == rewards[rows].max():
            continue
        count = int(protected[rows].sum())
        if count > best_count:
            best, best_count = group, count
    return best


def group_view(record: StepRecord, vocab: Vocab, group: int) -> str:
    """Each completion of one group, token by token: λ, GTPO's advantage, and GRPO's A_i for contrast."""
    rollout, diagnostics = record.rollout, record.diagnostics
    size = rollout.group_size
    problem = rollout.problems[group]
    batch = rollout.data.batch
    lines = [
        f"One group of step {int(record.metrics['step'])}: prompt {' '.join(problem.prompt_tokens()[1:])}  "
        f"(true answer {problem.answer})",
        "",
        "lambda = 0: a token shared with a better-rewarded completion of the group: GTPO skips the negative",
        "            update GRPO would make on it (PROTECTED).",
        "lambda > 1: a shared token in a rewarded completion: GTPO pushes it up harder (AMPLIFIED).",
        "GRPO gives every token of a completion the same advantage A_i;",
        "GTPO gives token t of completion i: delta_i * (A_i - gamma * <H>_i) * lambda_it.",
        "",
    ]
    for row in range(group * size, (group + 1) * size):
        length = int(batch["response_mask"][row].sum())
        tokens = vocab.decode(batch["responses"][row, :length])
        lambdas = diagnostics.weights[row, :length].tolist()
        gtpo_adv = batch["advantages"][row, :length].tolist()
        grpo_adv = float(diagnostics.group_advantage[row])
        grade = rollout.grades[row]
        marks = ["PROT" if lam == 0 else ("AMP" if lam > 1 else "") for lam in lambdas]
        columns = [
            ["token", *tokens],
            ["lambda", *(f"{lam:g}" for lam in lambdas)],
            ["mark", *marks],
            ["GTPO adv", *(f"{a:+.2f}" if a != 0 else "0" for a in gtpo_adv)],
            ["GRPO adv", *(f"{grpo_adv:+.2f}" for _ in tokens)],
        ]
        widths = [max(len(column[i]) for column in columns) for i in range(len(columns[0]))]
        kept = "kept" if bool(diagnostics.keep[row]) else "DROPPED by the entropy filter"
        lines.append(
            f"completion {row - group * size + 1}: reward {grade.reward:g} "
            f"({'well-formed' if grade.well_formed else 'malformed'}), A_i = {grpo_adv:+.3f}, "
            f"<H>_i = {float(diagnostics.completion_entropy[row]):.3f}, {kept}"
        )
        for column in columns:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(column, widths, strict=True)))
        lines.append("")
    return "\n".join(lines)


def tail_mean(history: list[dict[str, float]], key: str, fraction: float = 0.1) -> float:
    """Mean of ``key`` over the last ``fraction`` of the steps (at least one step)."""
    count = max(1, int(len(history) * fraction))
    return float(np.mean([record[key] for record in history[-count:]]))


def head_mean(history: list[dict[str, float]], key: str, fraction: float = 0.1) -> float:
    count = max(1, int(len(history) * fraction))
    return float(np.mean([record[key] for record in history[:count]]))


def summary_rows(runs: dict[str, dict[str, Any]], eval_before: dict[str, float]) -> list[tuple[str, ...]]:
    """Rows of the final table: training-curve figures (first/last 10% of steps) and the greedy evaluation."""
    names = list(runs)
    rows: list[tuple[str, ...]] = [("", *(name.upper() for name in names))]

    def row(label: str, values: list[str]) -> None:
        rows.append((label, *values))

    for key, label in (("reward/mean", "sampled reward"), ("format/accuracy", "sampled format accuracy"),
                       ("actor/entropy", "token entropy (nats)")):
        row(label + ", first -> last 10%", [
            f"{head_mean(runs[n]['history'], key):.3f} -> {tail_mean(runs[n]['history'], key):.3f}" for n in names
        ])
    row("greedy accuracy, all problems", [
        f"{eval_before['accuracy']:.3f} -> {runs[n]['eval_after']['accuracy']:.3f}" for n in names
    ])
    row("greedy format accuracy", [
        f"{eval_before['format_accuracy']:.3f} -> {runs[n]['eval_after']['format_accuracy']:.3f}"
        for n in names
    ])
    row("mean push on conflict tokens", [
        f"{np.mean([r['demo/protected_grad_abs'] for r in runs[n]['history']]):.4f}" for n in names
    ])
    return rows


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
