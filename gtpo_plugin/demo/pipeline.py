"""The whole demo: warm-up once, then GTPO and GRPO from the same weights and seeds, then evaluation."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from gtpo_plugin.config import GTPOConfig
from gtpo_plugin.demo.evaluate import all_problems, evaluate
from gtpo_plugin.demo.model import build_model
from gtpo_plugin.demo.report import pick_group
from gtpo_plugin.demo.task import build_vocab
from gtpo_plugin.demo.train import ALGORITHMS, RLSettings, StepRecord, Trainer, run
from gtpo_plugin.demo.warmup import warm_up

# Called as progress(phase, total_steps) -> per-step callback taking a dict of values to display.
Progress = Callable[[str, int], Callable[[dict[str, float]], None]]


@dataclass(frozen=True)
class DemoOptions:
    """Everything that defines a demo run; the defaults finish in about 2–3 minutes on 2 CPU cores."""

    steps: int = 200
    group_size: int = 8
    prompts_per_step: int = 16
    seed: int = 0
    device: str = "cpu"
    lr: float = 3e-4
    mini_batches: int = 2
    max_new_tokens: int = 10
    warmup_steps: int = 150
    warmup_batch_size: int = 64
    warmup_noise: float = 0.5
    warmup_lr: float = 3e-3
    algorithms: tuple[str, ...] = ("gtpo", "grpo")
    gtpo: dict[str, Any] = field(default_factory=lambda: {
        key: value for key, value in asdict(GTPOConfig()).items() if key != "initial_entropy"
    })


@dataclass
class RunResult:
    """One algorithm's run: per-step metrics, greedy evaluation after training, ⟨H⟩_ini, first step."""

    history: list[dict[str, float]]
    eval_after: dict[str, float]
    initial_entropy: float
    first_step: StepRecord
    seconds: float


@dataclass
class DemoResult:
    options: DemoOptions
    warmup_losses: list[float]
    eval_before: dict[str, float]
    runs: dict[str, RunResult]
    seconds: float

    def group_record(self) -> tuple[StepRecord, int] | None:
        """The GTPO run's first step and its most instructive group (both rewards, most protected tokens)."""
        run_result = self.runs.get("gtpo")
        if run_result is None:
            return None
        group = pick_group(run_result.first_step)
        return None if group is None else (run_result.first_step, group)


def _silent(_phase: str, _total: int) -> Callable[[dict[str, float]], None]:
    return lambda _values: None


def run_demo(options: DemoOptions, progress: Progress = _silent) -> DemoResult:
    """Warm up a fresh tiny model, then train each algorithm from a copy of it and evaluate it."""
    start = time.perf_counter()
    device = torch.device(options.device)
    vocab = build_vocab()
    base: torch.nn.Module = build_model(len(vocab), options.seed)
    base.to(device)
    warmup_tick = progress("warm-up", options.warmup_steps)
    losses = warm_up(
        base, vocab, steps=options.warmup_steps, batch_size=options.warmup_batch_size, noise=options.warmup_noise,
        lr=options.warmup_lr, generator=torch.Generator().manual_seed(options.seed),
        on_step=lambda loss: warmup_tick({"loss": loss}),
    )
    problems = all_problems()
    eval_before = evaluate(base, vocab, problems, max_new_tokens=options.max_new_tokens)
    settings = RLSettings(
        steps=options.steps, group_size=options.group_size, prompts_per_step=options.prompts_per_step,
        lr=options.lr, mini_batches=options.mini_batches, max_new_tokens=options.max_new_tokens,
        gtpo=dict(options.gtpo),
    )
    runs = {}
    for name in options.algorithms:
        run_start = time.perf_counter()
        trainer = Trainer(ALGORITHMS[name], copy.deepcopy(base), vocab, settings, seed=options.seed + 1)
        tick = progress(name.upper(), options.steps)
        first: list[StepRecord] = []

        def on_step(record: StepRecord, tick: Callable[[dict[str, float]], None] = tick,
                    first: list[StepRecord] = first) -> None:
            if not first:
                first.append(record)
            tick({"reward": record.metrics["reward/mean"], "format": record.metrics["format/accuracy"]})

        history = run(trainer, on_step)
        runs[name] = RunResult(
            history=history,
            eval_after=evaluate(trainer.model, vocab, problems, max_new_tokens=options.max_new_tokens),
            initial_entropy=float(trainer.initial_entropy if trainer.initial_entropy is not None else math.nan),
            first_step=first[0],
            seconds=time.perf_counter() - run_start,
        )
    return DemoResult(options, losses, eval_before, runs, time.perf_counter() - start)
