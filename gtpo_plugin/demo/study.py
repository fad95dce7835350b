"""A study: every arm on the same N seeds, then per-metric means with 95% Student t intervals and the
paired difference of each arm against GRPO (same seed, same warm-up weights, same sampling generator).

Seeds run in separate processes (``jobs`` at a time, one CPU thread each). Intervals are Student t on
n − 1 degrees of freedom (:mod:`gtpo_plugin.stats`); a paired difference is the t interval of the
per-seed differences. With one seed every interval is (−inf, inf).
"""

from __future__ import annotations

import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gtpo_plugin.demo.options import DemoOptions

if TYPE_CHECKING:
    from gtpo_plugin.demo.pipeline import Progress
from gtpo_plugin.stats import detectable_difference, mean_ci, paired_difference

BASELINE = "grpo"
CONFIDENCE = 0.95
TAIL = 0.2  # training-curve metrics are averaged over the last 20% of the steps
POWER_METHOD = ("detectable_difference: the smallest true paired difference (arm - grpo) that a two-sided "
                "paired t test at alpha on these seeds detects with this power, from the measured sd of the "
                "per-seed differences (noncentral t)")
CI_METHOD = ("Student t, two-sided 95%, n - 1 degrees of freedom, over seeds; paired differences: "
             "t interval of the per-seed differences (arm - grpo)")

# (key in study.json, description): the final metrics of one (seed, arm) run.
FINAL_METRICS = (
    ("greedy_accuracy", "greedy accuracy on the fixed evaluation set after RL"),
    ("pass@1", "mean accuracy of 8 samples per problem at the rollout temperature, evaluation set, after RL"),
    ("pass@8", "share of evaluation problems with a right answer among those 8 samples, after RL"),
    ("peak_pass@1", "highest pass@1 measured on the evaluation set over training (before RL included)"),
    ("peak_pass@1_step", "the RL step of that highest pass@1 (0: before RL)"),
    ("greedy_format_accuracy", "greedy format accuracy (full format reward) after RL"),
    ("sampled_reward", "mean sampled reward (the preset's scale), last 20% of steps"),
    ("sampled_accuracy", "share of sampled completions with the right answer, last 20% of steps"),
    ("format_accuracy", "share of sampled completions with the full format reward, last 20% of steps"),
    ("entropy", "mean token entropy of sampled completions (nats), last 20% of steps"),
    ("conflict_token_share", "share of valid tokens that are conflict tokens (prefix_suffix), last 20% of steps"),
    ("response_length", "mean sampled completion length (tokens), last 20% of steps"),
    ("above_tau_share", "share of completions whose mean token entropy exceeds tau, last 20% of steps"),
    ("conflict_logprob_pos", "mean log-prob of conflict tokens in positive completions, last 20% of steps"),
    ("conflict_logprob_neg", "mean log-prob of conflict tokens in negative completions, last 20% of steps"),
    ("conflict_logprob_change_pos", "change of that log-prob across one update, positive completions, all steps"),
    ("conflict_logprob_change_neg", "change of that log-prob across one update, negative completions, all steps"),
    ("format_tag_logprob_neg", "mean log-prob of the format tags in negative completions, last 20% of steps"),
    ("format_tag_logprob_change_pos", "change of the format tags' log-prob across one update, positive, all steps"),
    ("format_tag_logprob_change_neg", "change of the format tags' log-prob across one update, negative, all steps"),
)
# final metric -> (per-step key, share of the last steps averaged). Mechanism metrics are NaN in a step
# whose token set is empty and are averaged over the steps where they are defined.
CURVE_KEYS = {
    "sampled_reward": ("reward/mean", TAIL),
    "sampled_accuracy": ("accuracy/sampled", TAIL),
    "format_accuracy": ("format/accuracy", TAIL),
    "entropy": ("actor/entropy", TAIL),
    "conflict_token_share": ("demo/conflict_token_frac", TAIL),
    "response_length": ("response_length/mean", TAIL),
    "above_tau_share": ("demo/above_tau_frac", TAIL),
    "conflict_logprob_pos": ("conflict_token_logprob/pos", TAIL),
    "conflict_logprob_neg": ("conflict_token_logprob/neg", TAIL),
    "conflict_logprob_change_pos": ("conflict_token_logprob_change/pos", 1.0),
    "conflict_logprob_change_neg": ("conflict_token_logprob_change/neg", 1.0),
    "format_tag_logprob_neg": ("format_tag_logprob/neg", TAIL),
    "format_tag_logprob_change_pos": ("format_tag_logprob_change/pos", 1.0),
    "format_tag_logprob_change_neg": ("format_tag_logprob_change/neg", 1.0),
}
POWER = 0.8
ALPHA = 0.05


def tail_mean(history: Sequence[dict[str, float]], key: str, fraction: float = TAIL) -> float:
    """Mean of ``key`` over the last ``fraction`` of the steps (at least one step), skipping NaN steps.

    NaN when no step of that tail defines it (a run recorded before the metric existed gives NaN too).
    """
    count = max(1, int(len(history) * fraction))
    values = np.array([record.get(key, math.nan) for record in history[-count:]], dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def final_metrics(run: dict[str, Any]) -> dict[str, float]:
    """The ``FINAL_METRICS`` of one run of :func:`gtpo_plugin.demo.pipeline.run_seed`."""
    history = run["history"]
    values = {key: tail_mean(history, curve, fraction) for key, (curve, fraction) in CURVE_KEYS.items()}
    values["greedy_accuracy"] = float(run["eval_after"]["accuracy"])
    values["pass@1"] = float(run["eval_after"]["pass@1"])
    values["pass@8"] = float(run["eval_after"]["pass@8"])
    peak = max(run["eval_curve"], key=lambda point: point["pass@1"])  # the earliest step on ties
    values["peak_pass@1"] = float(peak["pass@1"])
    values["peak_pass@1_step"] = float(peak["step"])
    values["greedy_format_accuracy"] = float(run["eval_after"]["format_accuracy"])
    return {key: values[key] for key, _ in FINAL_METRICS}


# (key in study.json, key in eval_before / eval_after): what "learning" compares after RL against before.
LEARNING_METRICS = (("greedy_accuracy", "accuracy"), ("pass@1", "pass@1"), ("pass@8", "pass@8"))


def learning(results: Sequence[dict[str, Any]], arms: Sequence[str]) -> dict[str, Any]:
    """Per arm and metric: after RL minus before RL, paired on the seeds (each seed's own before value)."""
    return {arm: {key: paired_difference([r["runs"][arm]["eval_after"][name] for r in results],
                                         [r["eval_before"][name] for r in results], CONFIDENCE).to_dict()
                  for key, name in LEARNING_METRICS}
            for arm in arms}


def _defined(values: Sequence[float]) -> bool:
    return all(math.isfinite(value) for value in values)


def paired_with_power(arm_values: Sequence[float], baseline_values: Sequence[float]) -> dict[str, Any]:
    """The paired difference's interval, the sd of the per-seed differences and the smallest true
    difference the study detects with ``POWER`` at ``ALPHA`` (two-sided paired t test)."""
    interval = paired_difference(arm_values, baseline_values, CONFIDENCE).to_dict()
    differences = np.asarray(arm_values, dtype=np.float64) - np.asarray(baseline_values, dtype=np.float64)
    sd = float(differences.std(ddof=1)) if differences.size > 1 else math.nan
    detectable = detectable_difference(sd, differences.size, POWER, ALPHA) if differences.size > 1 else math.inf
    return {**interval, "sd_of_differences": sd, "detectable_difference": detectable}


def _run_seed_quietly(options: DemoOptions) -> dict[str, Any]:
    """Worker entry point: one CPU thread, verl imported without its CPU warnings."""
    import torch

    from gtpo_plugin.demo.cli import import_quietly

    torch.set_num_threads(1)
    import_quietly()
    from gtpo_plugin.demo.pipeline import run_seed

    return run_seed(options)


def run_seeds(options: DemoOptions, seeds: Sequence[int], jobs: int, progress: Progress | None = None,
              on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """``run_seed`` for each seed, ``jobs`` processes at a time (in this process when ``jobs`` is 1)."""
    from gtpo_plugin.demo.pipeline import cached_run_path, run_seed

    per_seed = [replace(options, seed=seed) for seed in seeds]
    all_cached = all((path := cached_run_path(seed_options, arm)) is not None and path.is_file()
                     for seed_options in per_seed for arm in options.algorithms)
    if jobs <= 1 or len(per_seed) == 1 or all_cached:
        results = []
        for seed_options in per_seed:
            results.append(run_seed(seed_options, progress) if progress else run_seed(seed_options))
            if on_done:
                on_done(seed_options.seed)
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(_run_seed_quietly, seed_options) for seed_options in per_seed]
        results = []
        for future, seed_options in zip(futures, per_seed, strict=True):
            results.append(future.result())
            if on_done:
                on_done(seed_options.seed)
        return results


def null_identity(results: Sequence[dict[str, Any]], arm: str = "null") -> dict[str, Any] | None:
    """How closely ``arm`` reproduced GRPO per seed: steps whose sampled batches were identical.

    ``first_divergent_step`` is the first step whose sampled tokens differ (None: identical
    throughout); ``max_abs_greedy_accuracy_diff`` the largest per-seed gap after RL.
    """
    if not results or arm not in results[0]["runs"] or BASELINE not in results[0]["runs"]:
        return None
    per_seed = {}
    for result in results:
        ours, theirs = result["runs"][arm]["history"], result["runs"][BASELINE]["history"]
        divergent = [int(a["step"]) for a, b in zip(ours, theirs, strict=True)
                     if a["demo/response_checksum"] != b["demo/response_checksum"]]
        per_seed[str(result["seed"])] = {
            "first_divergent_step": divergent[0] if divergent else None,
            "identical_steps": len(ours) - len(divergent),
            "steps": len(ours),
            "greedy_accuracy_diff": result["runs"][arm]["eval_after"]["accuracy"]
            - result["runs"][BASELINE]["eval_after"]["accuracy"],
            "dual_clip_binding_frac_grpo": float(np.mean([r.get("actor/pg_clipfrac_lower", 0.0) for r in theirs])),
        }
    return {
        "arm": arm,
        "per_seed": per_seed,
        "seeds_identical_throughout": sum(v["first_divergent_step"] is None for v in per_seed.values()),
        "max_abs_greedy_accuracy_diff": max(abs(v["greedy_accuracy_diff"]) for v in per_seed.values()),
    }


def summarise(results: Sequence[dict[str, Any]], options: DemoOptions, seconds: float) -> dict[str, Any]:
    """The content of ``study.json`` from the per-seed results."""
    arms = list(options.algorithms)
    seeds = [int(result["seed"]) for result in results]
    per_seed = {arm: {str(r["seed"]): final_metrics(r["runs"][arm]) for r in results} for arm in arms}
    # A metric that some run never defined (a mechanism metric of an old cached run) is left out.
    defined = [key for key, _ in FINAL_METRICS
               if all(_defined([per_seed[arm][str(s)][key] for s in seeds]) for arm in arms)]
    summary = {arm: {key: mean_ci([per_seed[arm][str(s)][key] for s in seeds], CONFIDENCE).to_dict()
                     for key in defined}
               for arm in arms}
    paired = {}
    if BASELINE in arms:
        for arm in arms:
            if arm == BASELINE:
                continue
            paired[arm] = {key: paired_with_power([per_seed[arm][str(s)][key] for s in seeds],
                                                  [per_seed[BASELINE][str(s)][key] for s in seeds])
                           for key in defined}
    first_step_conflicts = [r["runs"][arms[0]]["history"][0]["demo/conflict_token_frac"] for r in results]
    return {
        "about": "GTPO (arXiv 2508.03772) vs GRPO on the demo's addition task, through verl's algorithm layer",
        "preset": options.preset,
        "seeds": seeds,
        "arms": arms,
        "options": {key: value for key, value in results[0]["options"].items() if key not in ("seed", "cache")},
        "metrics": {key: about for key, about in FINAL_METRICS if key in defined},
        "ci_method": CI_METHOD,
        "power": {"power": POWER, "alpha": ALPHA, "method": POWER_METHOD},
        "confidence": CONFIDENCE,
        "per_seed": per_seed,
        "summary": summary,
        "paired_vs_grpo": paired,
        "null_identity": null_identity(results),
        "eval_before_rl": {str(r["seed"]): r["eval_before"] for r in results},
        "learning": learning(results, arms),
        "first_step_conflict_token_share": mean_ci(first_step_conflicts, CONFIDENCE).to_dict(),
        "wall_time_s": seconds,
    }


def run_study(options: DemoOptions, seeds: Sequence[int], jobs: int = 1,
              progress: Progress | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run every arm on every seed; returns ``(study, per_seed_results)``.

    The warm-up, shared by all seeds, runs once here first and is kept in ``options.cache`` (a
    temporary folder when that is None), from which every seed's process loads it.
    """
    from gtpo_plugin.demo.pipeline import warmed_model

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gtpo-demo-") as scratch:
        shared = options if options.cache else replace(options, cache=scratch)
        if progress is not None:
            warmed_model(shared, progress)
        else:
            warmed_model(shared)
        results = run_seeds(shared, seeds, jobs, progress)
    return summarise(results, options, time.perf_counter() - start), results


def curves(results: Sequence[dict[str, Any]], arm: str, key: str) -> np.ndarray:
    """``[seeds, steps]`` of one per-step metric of one arm."""
    return np.array([[record.get(key, math.nan) for record in r["runs"][arm]["history"]] for r in results])
