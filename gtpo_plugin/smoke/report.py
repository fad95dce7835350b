"""Checks of a finished smoke run and its table, from what verl itself wrote: file-logger metrics, checkpoints.

Layout (written by ``recipes/run_smoke_1gpu.sh``), per arm (``gtpo``, ``grpo_no_kl``, ``grpo``)::

    runs/<arm>/first/metrics.jsonl            steps 1..3 (verl's file logger: {"step": N, "data": {...}})
    runs/<arm>/first/checkpoints/global_step_2/ and global_step_3/
    runs/<arm>/resumed/metrics.jsonl          step 3 again, resumed from first/.../global_step_2
    runs/<arm>/resumed/checkpoints/global_step_3/

What is checked: every step of the GTPO arm logs every ``gtpo/*`` metric, finite; the entropy GTPO used
agrees with verl's own ``actor/entropy`` (both are the mean over completions of the token-mean entropy
under ``seq-mean-token-mean``, computed from the same tensor, so reading the wrong field or reading padding
as entropy shows) and lies in (0, ln V]; ⟨H⟩_ini is the same at every step, in every ``gtpo_state.json``,
and after the resume; the GRPO arms log no ``gtpo/*`` metric; every run logged the steps it should have.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARMS = {"gtpo": "GTPO", "grpo_no_kl": "GRPO, no KL", "grpo": "GRPO + reference model"}
GTPO_METRICS = (
    "gtpo/protected_token_frac",
    "gtpo/amplified_token_frac",
    "gtpo/filtered_completion_frac",
    "gtpo/mean_completion_entropy",
    "gtpo/initial_entropy",
)
STATE_FILE = "gtpo_state.json"  # as gtpo_plugin.verl_adapter.state writes it
STEP_TIME = "timing_s/step"
# verl's engine workers log these; the trainer prefixes worker metrics (actor/perf/...).
PEAK_MEMORY = {
    "allocated": re.compile(r"(^|/)perf/max_memory_allocated_gb$"),
    "reserved": re.compile(r"(^|/)perf/max_memory_reserved_gb$"),
}
# verl aggregates actor/entropy in the entropy tensor's own dtype: bf16 under its default autocast, whose
# unit roundoff is 2**-8. Under seq-mean-token-mean each completion's token sum is rounded to bf16 once
# (relative error <= 2**-8); GTPO averages the same values in float64. The tolerance is four such roundings
# (CPU runs of the recipe's configs differed by up to 1.2e-3). This sees a wrong field or padding counted as
# entropy, not a one-column shift: a random-init model's token entropies are all near ln V. The exact,
# layout-sensitive comparison is the fp32 engine test (tests/verl_adapter/test_verl_fsdp_actor_cpu.py, 1e-5).
# The same margin is allowed above ln V: each token's entropy is itself a bf16 value there.
ENTROPY_RTOL = 2**-6
SAME_VALUE_RTOL = 1e-9

Steps = dict[int, dict[str, Any]]


@dataclass(frozen=True)
class SmokePlan:
    """What the smoke script ran: ``total_steps`` steps, a checkpoint every ``save_step``, resumed from it."""

    total_steps: int = 3
    save_step: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.save_step < self.total_steps:
            raise ValueError(f"save_step must be in [1, total_steps), got save_step={self.save_step}, "
                             f"total_steps={self.total_steps}")


@dataclass(frozen=True)
class ArmRow:
    """One table row: step times from the first run, peak GPU memory (GB) over both runs (None: not logged)."""

    arm: str
    first_step_s: float
    later_step_s: float
    allocated_gb: float | None
    reserved_gb: float | None


def read_metrics(path: Path) -> Steps:
    """verl's file-logger JSONL as ``{step: metrics}``; records of the same step are merged, later wins."""
    if not path.is_file():
        raise FileNotFoundError(f"no metrics log at {path}: did the run start (trainer.logger must include 'file')?")
    steps: Steps = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get("data"), dict) or "step" not in record:
            raise ValueError(f"{path}:{number}: expected verl's file-logger record {{'step': N, 'data': {{...}}}}")
        steps.setdefault(int(record["step"]), {}).update(record["data"])
    return steps


def check_logged_steps(steps: Steps, expected: Sequence[int], where: str) -> list[str]:
    logged = sorted(steps)
    return [] if logged == list(expected) else [f"{where}: logged steps {logged}, expected {list(expected)}"]


def check_gtpo_step(metrics: Mapping[str, Any], vocab_size: int | None, where: str) -> list[str]:
    """Problems with one GTPO step's metrics (empty when all is well)."""
    problems = []
    for key in GTPO_METRICS:
        value = metrics.get(key)
        if not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"{where}: {key} is {value!r}, expected a finite number")
    if problems:
        return problems
    entropy = float(metrics["gtpo/mean_completion_entropy"])
    ceiling = math.log(vocab_size) if vocab_size else math.inf
    if not 0.0 < entropy <= ceiling * (1 + ENTROPY_RTOL):
        problems.append(f"{where}: gtpo/mean_completion_entropy = {entropy} outside (0, ln V = {ceiling}]")
    verl_entropy = metrics.get("actor/entropy")
    if not isinstance(verl_entropy, int | float):
        problems.append(f"{where}: verl's actor/entropy is missing, cannot cross-check GTPO's entropy")
    elif not math.isclose(entropy, verl_entropy, rel_tol=ENTROPY_RTOL, abs_tol=1e-6):
        problems.append(f"{where}: gtpo/mean_completion_entropy = {entropy} but verl's actor/entropy = "
                        f"{verl_entropy}: the adapter does not read the entropy verl computed")
    for key in ("gtpo/protected_token_frac", "gtpo/amplified_token_frac", "gtpo/filtered_completion_frac"):
        if not 0.0 <= float(metrics[key]) <= 1.0:
            problems.append(f"{where}: {key} = {metrics[key]} is not a fraction in [0, 1]")
    return problems


def read_state(folder: Path) -> float | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("initial_entropy")
    return float(value) if isinstance(value, int | float) else None


def check_initial_entropy(first: Steps, resumed: Steps, run_dir: Path, plan: SmokePlan) -> list[str]:
    """⟨H⟩_ini: one value at every logged step and in every checkpoint's gtpo_state.json, before and after resume."""
    values: dict[str, float | None] = {}
    for step, metrics in sorted(first.items()):
        values[f"first run, step {step}"] = metrics.get("gtpo/initial_entropy")
    for step, metrics in sorted(resumed.items()):
        values[f"resumed run, step {step}"] = metrics.get("gtpo/initial_entropy")
    checkpoints = [("first", plan.save_step), ("first", plan.total_steps), ("resumed", plan.total_steps)]
    problems = []
    for run, step in checkpoints:
        folder = run_dir / run / "checkpoints" / f"global_step_{step}"
        saved = read_state(folder)
        if saved is None:
            problems.append(f"no initial_entropy in {folder / STATE_FILE}")
        values[f"{folder / STATE_FILE}"] = saved
    known = {where: value for where, value in values.items() if isinstance(value, int | float)}
    if not known:
        return problems + ["no <H>_ini anywhere"]
    first_where = next(iter(known))
    for where, value in known.items():
        if not math.isclose(value, known[first_where], rel_tol=SAME_VALUE_RTOL):
            problems.append(f"<H>_ini changed: {value} at {where}, {known[first_where]} at {first_where}")
    return problems


def peak_memory(records: Iterable[Mapping[str, Any]], kind: str) -> float | None:
    """The largest ``perf/max_memory_<kind>_gb`` of any worker in ``records`` (None when none was logged)."""
    pattern = PEAK_MEMORY[kind]
    values = [float(value) for metrics in records for key, value in metrics.items()
              if pattern.search(key) and isinstance(value, int | float)]
    return max(values) if values else None


def arm_row(arm: str, first: Steps, resumed: Steps, plan: SmokePlan) -> ArmRow:
    """Step 1 apart (it includes warm-up), the mean of the first run's later steps; memory over both runs."""
    times = [float(first[step][STEP_TIME]) for step in range(1, plan.total_steps + 1)]
    records = [*first.values(), *resumed.values()]
    return ArmRow(arm, times[0], statistics.fmean(times[1:]), peak_memory(records, "allocated"),
                  peak_memory(records, "reserved"))


def check_arm(smoke_dir: Path, arm: str, plan: SmokePlan, vocab_size: int | None) -> tuple[list[str], ArmRow | None]:
    """All problems of one arm's two runs, and its table row when its logs are complete."""
    run_dir = smoke_dir / "runs" / arm
    try:
        first = read_metrics(run_dir / "first" / "metrics.jsonl")
        resumed = read_metrics(run_dir / "resumed" / "metrics.jsonl")
    except (FileNotFoundError, ValueError) as error:
        return [f"{arm}: {error}"], None
    problems = check_logged_steps(first, range(1, plan.total_steps + 1), f"{arm}, first run")
    problems += check_logged_steps(resumed, range(plan.save_step + 1, plan.total_steps + 1), f"{arm}, resumed run")
    for step, metrics in sorted(first.items()):
        if STEP_TIME not in metrics:
            problems.append(f"{arm}, first run, step {step}: no {STEP_TIME}")
    if arm == "gtpo":
        for run, steps in (("first", first), ("resumed", resumed)):
            for step, metrics in sorted(steps.items()):
                problems += check_gtpo_step(metrics, vocab_size, f"gtpo, {run} run, step {step}")
        problems += check_initial_entropy(first, resumed, run_dir, plan)
    else:
        leaked = sorted({key for steps in (first, resumed) for m in steps.values() for key in m
                         if key.startswith("gtpo/")})
        if leaked:
            problems.append(f"{arm}: GRPO run logged GTPO metrics {leaked}")
    if problems:
        return problems, None
    return [], arm_row(arm, first, resumed, plan)


def format_table(rows: Sequence[ArmRow]) -> str:
    """Markdown table of step time and peak GPU memory per arm."""
    def gb(value: float | None) -> str:
        return "not logged" if value is None else f"{value:.2f}"

    lines = ["| arm | step 1 (s) | later steps, mean (s) | peak GPU memory allocated (GB) | reserved (GB) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {ARMS.get(row.arm, row.arm)} | {row.first_step_s:.1f} | {row.later_step_s:.1f} | "
              f"{gb(row.allocated_gb)} | {gb(row.reserved_gb)} |" for row in rows]
    return "\n".join(lines)


def vocabulary_size(model_dir: Path | None) -> int | None:
    if model_dir is None or not (model_dir / "config.json").is_file():
        return None
    value = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    return int(value) if isinstance(value, int) else None


def check_smoke_dir(smoke_dir: Path, arms: Sequence[str], plan: SmokePlan | None = None,
                    model_dir: Path | None = None) -> tuple[list[str], list[ArmRow]]:
    """Problems over all ``arms`` and the table rows of the arms without problems."""
    plan = plan or SmokePlan()
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; expected some of {list(ARMS)}")
    vocab_size = vocabulary_size(model_dir)
    problems: list[str] = []
    rows = []
    for arm in arms:
        arm_problems, row = check_arm(smoke_dir, arm, plan, vocab_size)
        problems += arm_problems
        if row is not None:
            rows.append(row)
    return problems, rows
