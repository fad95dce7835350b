"""The demo's outputs: JSON, a text view of one group, the study's PNG (mean curves with bands) and tables."""

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
    """Trailing moving average (the first points average what exists so far); NaN values are skipped,
    and a window holding none but NaN stays NaN."""
    array = np.asarray(values, dtype=float)
    finite = np.isfinite(array)
    sums = np.cumsum(np.insert(np.where(finite, array, 0.0), 0, 0.0))
    counts = np.cumsum(np.insert(finite.astype(float), 0, 0.0))
    ends = np.arange(1, len(array) + 1)
    starts = np.maximum(ends - window, 0)
    defined = counts[ends] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined > 0, (sums[ends] - sums[starts]) / defined, np.nan)


def pick_group(record: StepRecord) -> int | None:
    """The group of this step with both rewards and the most protected tokens (None if none is mixed)."""
    rewards = torch.tensor(record.rollout.rewards)
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
            f"completion {row - group * size + 1}: reward {rollout.rewards[row]:g} "
            f"({'well-formed' if grade.well_formed else 'malformed'}), A_i = {grpo_adv:+.3f}, "
            f"<H>_i = {float(diagnostics.completion_entropy[row]):.3f}, {kept}"
        )
        for column in columns:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(column, widths, strict=True)))
        lines.append("")
    return "\n".join(lines)


def format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


# --- multi-seed study --------------------------------------------------------------------------------------

STUDY_PANELS = (
    ("accuracy/sampled", "sampled accuracy (right answer)"),
    ("format/accuracy", "sampled format accuracy"),
    ("actor/entropy", "token entropy (nats)"),
    ("reward/mean", "sampled reward (preset's scale)"),
    ("demo/conflict_token_frac", "conflict-token share (prefix_suffix)"),
    ("demo/above_tau_frac", "share of completions with <H>_i > tau"),
    ("conflict_token_logprob/pos", "log-prob of conflict tokens, A > 0"),
    ("conflict_token_logprob/neg", "log-prob of conflict tokens, A < 0"),
    ("conflict_token_logprob_change/neg", "its change across an update, A < 0"),
)
ARM_COLORS = {"gtpo": "tab:blue", "grpo": "tab:orange", "null": "tab:green", "w1": "tab:purple",
              "gamma0": "tab:brown", "nofilter": "tab:red", "noconflict": "tab:pink", "any": "tab:olive"}


def plot_study(path: Path, results: Sequence[dict[str, Any]], arms: Sequence[str], *, title: str) -> None:
    """Mean curve of each arm over seeds (moving average over ~10% of the steps) with its 95% t band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gtpo_plugin.stats import mean_band

    steps = len(results[0]["runs"][arms[0]]["history"])
    window = max(1, steps // 10)
    figure, axes = plt.subplots(3, 4, figsize=(20, 11), constrained_layout=True)
    for axis, (key, panel) in zip(axes.flat, STUDY_PANELS, strict=False):
        for arm in arms:
            smoothed = np.array([smooth([rec.get(key, math.nan) for rec in r["runs"][arm]["history"]], window)
                                 for r in results])
            # steps where every seed defines the value (a mechanism metric may be undefined early on)
            columns = np.all(np.isfinite(smoothed), axis=0)
            if not columns.any():
                continue
            mean, low, high = mean_band(smoothed[:, columns])
            x = np.arange(1, steps + 1)[columns]
            color = ARM_COLORS.get(arm)
            axis.plot(x, mean, color=color, linewidth=2, label=arm.upper())
            if len(results) > 1:
                axis.fill_between(x, low, high, color=color, alpha=0.18, linewidth=0)
        axis.set_title(panel, fontsize=10)
        axis.set_xlabel("RL step")
        axis.grid(alpha=0.3)
    plot_eval_curve(axes.flat[len(STUDY_PANELS)], results, arms)
    plot_before_after(axes.flat[len(STUDY_PANELS) + 1], results, arms)
    axes.flat[len(STUDY_PANELS) + 2].axis("off")
    axes.flat[0].legend(loc="best", fontsize=9)
    band = "bands: 95% Student t over seeds" if len(results) > 1 else "one seed: no band"
    figure.suptitle(f"{title}\n{len(results)} seed(s); mean of moving averages over {window} steps; {band}")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_eval_curve(axis: Any, results: Sequence[dict[str, Any]], arms: Sequence[str]) -> None:
    """pass@1 on the evaluation set at the steps where it was measured, mean over seeds with its band."""
    from gtpo_plugin.stats import mean_band

    for arm in arms:
        steps = [point["step"] for point in results[0]["runs"][arm]["eval_curve"]]
        values = np.array([[point["pass@1"] for point in r["runs"][arm]["eval_curve"]] for r in results])
        mean, low, high = mean_band(values)
        axis.plot(steps, mean, marker="o", color=ARM_COLORS.get(arm), linewidth=2, label=arm.upper())
        if len(results) > 1:
            axis.fill_between(steps, low, high, color=ARM_COLORS.get(arm), alpha=0.18, linewidth=0)
    axis.set_title("pass@1 on the evaluation set (8 samples per problem)", fontsize=10)
    axis.set_xlabel("RL step")
    axis.grid(alpha=0.3)


def plot_before_after(axis: Any, results: Sequence[dict[str, Any]], arms: Sequence[str]) -> None:
    """Greedy accuracy, pass@1 and pass@8 before RL and after RL per arm (mean over seeds, 95% t error bars)."""
    from gtpo_plugin.demo.study import LEARNING_METRICS
    from gtpo_plugin.stats import mean_ci

    metrics = [(source, "greedy" if key == "greedy_accuracy" else key) for key, source in LEARNING_METRICS]
    groups = [("before RL", [r["eval_before"] for r in results], "tab:gray")]
    groups += [(arm.upper(), [r["runs"][arm]["eval_after"] for r in results], ARM_COLORS.get(arm, "black"))
               for arm in arms]
    width = 0.8 / len(groups)
    for index, (label, evaluations, color) in enumerate(groups):
        intervals = [mean_ci([values[key] for values in evaluations]) for key, _ in metrics]
        means = np.array([interval.mean for interval in intervals])
        spread = np.array([[interval.mean - interval.ci_low for interval in intervals],
                           [interval.ci_high - interval.mean for interval in intervals]])
        x = np.arange(len(metrics)) + (index - (len(groups) - 1) / 2) * width
        errors = spread if len(results) > 1 else None
        axis.bar(x, means, width, color=color, label=label, yerr=errors, capsize=2)
    axis.set_xticks(np.arange(len(metrics)), [name for _, name in metrics])
    axis.set_ylim(0, 1)
    axis.set_title("evaluation set: before RL and after RL", fontsize=10)
    axis.legend(loc="best", fontsize=8)
    axis.grid(alpha=0.3, axis="y")


def _interval_text(interval: dict[str, Any], digits: int = 3) -> str:
    low, high = interval["ci_low"], interval["ci_high"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{interval['mean']:.{digits}f} [n=1: no CI]"
    return f"{interval['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _paired_text(interval: dict[str, Any], digits: int = 3) -> str:
    """The paired difference with its interval and, when known, the smallest detectable difference."""
    detectable = interval.get("detectable_difference")
    text = _interval_text(interval, digits)
    if detectable is None or not math.isfinite(detectable):
        return text
    return f"{text} (detectable {detectable:.{digits}f})"


def study_table(study: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows: one per metric; per arm its mean [95% CI]; per non-GRPO arm the paired difference vs GRPO."""
    arms = study["arms"]
    paired = list(study["paired_vs_grpo"])
    header = ("metric", *(arm.upper() for arm in arms), *(f"{arm.upper()} - GRPO" for arm in paired))
    rows: list[tuple[str, ...]] = [header]
    for key in study["metrics"]:
        digits = 2 if key in ("sampled_reward", "response_length") else 3
        rows.append((
            key,
            *(_interval_text(study["summary"][arm][key], digits) for arm in arms),
            *(_paired_text(study["paired_vs_grpo"][arm][key], digits) for arm in paired),
        ))
    return rows


def markdown_table(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join("---" for _ in rows[0]) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def learning_table(study: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows: per arm and evaluation metric, before RL, after RL, and the change after - before [95% CI]."""
    from gtpo_plugin.demo.study import LEARNING_METRICS

    before = list(study["eval_before_rl"].values())
    rows: list[tuple[str, ...]] = [("arm", "metric", "before RL", "after RL", "after - before")]
    sources = dict(LEARNING_METRICS)
    for arm, changes in study["learning"].items():
        for key, change in changes.items():
            source = sources[key]
            mean_before = float(np.mean([values[source] for values in before]))
            after = study["summary"][arm].get(key)
            rows.append((arm.upper(), key, f"{mean_before:.3f}",
                         _interval_text(after) if after is not None else "-", _interval_text(change)))
    return rows


def study_summary(study: dict[str, Any], noise_band: str) -> str:
    """The text of ``summary.txt`` for a study: what ran, the table, how to read it."""
    seeds = study["seeds"]
    options = study["options"]
    first = study["first_step_conflict_token_share"]
    lines = [
        f"preset {study['preset']}; regime {options.get('regime', 'default')}; {len(seeds)} seed(s) {seeds}; "
        f"arms {', '.join(study['arms'])}; "
        f"{options['steps']} RL steps x {options['prompts_per_step']} prompts x "
        f"{options['group_size'] or 8} completions per arm",
        f"values: mean [{study['ci_method']}]",
        "detectable: the smallest true paired difference these seeds detect with 80% power at alpha 0.05",
        "",
        "Evaluation set (fixed problems): greedy accuracy, pass@1 and pass@8 (8 samples per problem at the "
        "rollout temperature)",
        format_table(learning_table(study)),
        "",
        format_table(study_table(study)),
        "",
        f"conflict tokens: {100 * first['mean']:.1f}% of valid tokens at the first step "
        f"(mean over seeds), {100 * study['summary'][study['arms'][0]]['conflict_token_share']['mean']:.1f}% "
        f"over the last 20% of steps ({study['arms'][0]}).",
    ]
    null = study.get("null_identity")
    if null is not None:
        lines.append(f"null arm vs GRPO: identical sampled batches at every step on "
                     f"{null['seeds_identical_throughout']} of {len(seeds)} seed(s); "
                     f"largest per-seed greedy-accuracy gap "
                     f"{null['max_abs_greedy_accuracy_diff']:.3f}.")
    if noise_band:
        lines += ["", noise_band]
    return "\n".join(lines)
