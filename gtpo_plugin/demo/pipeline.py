"""One seed of the demo: warm up once, then train every arm from the same weights and seeds, then evaluate.

The result is plain data (dicts, lists, floats, strings), so that seeds can run in separate processes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gtpo_plugin.demo.arms import ALGORITHMS
from gtpo_plugin.demo.evaluate import evaluate_all, evaluation_problems, pass_at_k
from gtpo_plugin.demo.model import build_model
from gtpo_plugin.demo.options import DemoOptions
from gtpo_plugin.demo.report import group_view, pick_group
from gtpo_plugin.demo.task import build_vocab
from gtpo_plugin.demo.train import StepRecord, Trainer, run
from gtpo_plugin.demo.warmup import warm_up

# Called as progress(phase, total_steps) -> per-step callback taking a dict of values to display.
Progress = Callable[[str, int], Callable[[dict[str, float]], None]]


def _silent(_phase: str, _total: int) -> Callable[[dict[str, float]], None]:
    return lambda _values: None


def _warmup_key(options: DemoOptions) -> str:
    fields = {key: getattr(options, key) for key in ("warmup_seed", "warmup_steps", "warmup_batch_size", "warmup_noise",
                                                      "warmup_lr", "device")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


# The default warm-up (1,500 steps, CPU), shipped with the package as RL's pretrained start: training it takes
# minutes, and float rounding differs between torch builds, so every user starts RL from the same weights.
SHIPPED_WARMUPS = Path(__file__).parent / "checkpoints"


def shipped_warmup_path(options: DemoOptions) -> Path:
    """Where the package keeps the warm-up of ``options``, if it ships one (the default options on CPU)."""
    return SHIPPED_WARMUPS / f"warmup-{_warmup_key(options)}.pt"


def warmed_model(options: DemoOptions, progress: Progress = _silent) -> tuple[torch.nn.Module, list[float]]:
    """The model after the supervised warm-up: read from ``options.cache`` when it holds it, else from the
    package when it ships these warm-up settings (and ``options.shipped_warmup``), else trained here.

    The warm-up depends only on ``warmup_seed`` and the warm-up settings (not on the RL seed, the
    preset or the arms), so every run that shares a cache folder warms up once.
    """
    vocab = build_vocab()
    model: torch.nn.Module = build_model(len(vocab), options.warmup_seed)
    model.to(torch.device(options.device))
    path = Path(options.cache) / f"warmup-{_warmup_key(options)}.pt" if options.cache else None
    sources = [path] if path is not None else []
    if options.shipped_warmup:
        sources.append(shipped_warmup_path(options))
    found = next((source for source in sources if source.is_file()), None)
    if found is not None:
        saved = torch.load(found, map_location=options.device, weights_only=True)
        model.load_state_dict(saved["model"])
        return model, [float(loss) for loss in saved["losses"]]
    tick = progress("warm-up", options.warmup_steps)
    losses = warm_up(
        model, vocab, steps=options.warmup_steps, batch_size=options.warmup_batch_size, noise=options.warmup_noise,
        lr=options.warmup_lr, generator=torch.Generator().manual_seed(options.warmup_seed),
        on_step=lambda loss: tick({"loss": loss}),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{time.time_ns()}.tmp")
        torch.save({"model": model.state_dict(), "losses": torch.tensor(losses)}, partial)
        partial.replace(path)
    return model, losses


# Bump when a change alters what a run computes, so that cached runs are not reused across it.
RUN_CACHE_VERSION = 2


def cached_run_path(options: DemoOptions, arm: str) -> Path | None:
    """Where a finished (options, arm) run is kept in ``options.cache``; runs are deterministic."""
    if not options.cache:
        return None
    fields = {key: value for key, value in asdict(options).items() if key not in ("algorithms", "cache")}
    payload = json.dumps({"options": fields, "arm": arm, "version": RUN_CACHE_VERSION}, sort_keys=True)
    return Path(options.cache) / f"run-{arm}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}.json"


def run_seed(options: DemoOptions, progress: Progress = _silent) -> dict[str, Any]:
    """Warm up (or load) the seed's model, train each arm from a copy of it, evaluate greedily.

    Returns ``{"seed", "options", "warmup", "eval_before", "runs": {arm: {...}}, "group_view", "seconds"}``;
    each run holds its per-step ``history``, ``eval_after``, ``eval_curve`` (pass@1 on the evaluation set
    before RL, every ``options.eval_every`` steps when that is set, and after RL), ``initial_entropy`` and
    ``seconds``. ``eval_before`` and ``eval_after`` hold greedy accuracy and pass@1/pass@8.
    ``group_view`` shows one group of the first step of the first GTPO-estimator arm (or None).
    With ``options.cache`` set, each finished run is kept there and a later call with the same
    options and arm reads it instead of training again (the runs are deterministic on CPU).
    """
    start = time.perf_counter()
    vocab = build_vocab()
    base, losses = warmed_model(options, progress)
    problems = evaluation_problems(options.eval_problems, options.min_operands, options.max_operands)
    settings = options.settings()

    def evaluate_model(model: torch.nn.Module) -> dict[str, float]:
        return evaluate_all(model, vocab, problems, max_new_tokens=options.max_new_tokens,
                            temperature=settings.temperature)

    eval_before = evaluate_model(base)
    runs: dict[str, dict[str, Any]] = {}
    view: str | None = None
    for name in options.algorithms:
        cached = cached_run_path(options, name)
        if cached is not None and cached.is_file():
            runs[name] = json.loads(cached.read_text(encoding="utf-8"))
            saved_view = runs[name].pop("group_view", None)
            view = view if view is not None else saved_view
            continue
        run_start = time.perf_counter()
        algorithm = ALGORITHMS[name]
        trainer = Trainer(algorithm, copy.deepcopy(base), vocab, settings, seed=options.seed + 1)
        tick = progress(name.upper(), options.steps)
        first: list[StepRecord] = []
        curve = [{"step": 0, "pass@1": eval_before["pass@1"]}]

        def on_step(record: StepRecord, tick: Callable[[dict[str, float]], None] = tick,
                    first: list[StepRecord] = first, curve: list[dict[str, float]] = curve,
                    trainer: Trainer = trainer) -> None:
            if not first:
                first.append(record)
            step = int(record.metrics["step"])
            if options.eval_every and step % options.eval_every == 0 and step < options.steps:
                curve.append({"step": step, "pass@1": pass_at_k(trainer.model, vocab, problems,
                                                                max_new_tokens=options.max_new_tokens,
                                                                temperature=settings.temperature)["pass@1"]})
            tick({"reward": record.metrics["reward/mean"], "acc": record.metrics["accuracy/sampled"]})

        history = run(trainer, on_step)
        eval_after = evaluate_model(trainer.model)
        curve.append({"step": options.steps, "pass@1": eval_after["pass@1"]})
        if view is None and algorithm.adv_estimator == "gtpo":
            group = pick_group(first[0])
            view = group_view(first[0], vocab, group) if group is not None else None
        runs[name] = {
            "adv_estimator": algorithm.adv_estimator,
            "loss_mode": algorithm.loss_mode,
            "gtpo": settings.knobs(algorithm) if algorithm.adv_estimator == "gtpo" else None,
            "initial_entropy": float(trainer.initial_entropy if trainer.initial_entropy is not None else math.nan),
            "history": history,
            "eval_after": eval_after,
            "eval_curve": curve,
            "seconds": time.perf_counter() - run_start,
        }
        if cached is not None:
            entry = {**runs[name], "group_view": view if algorithm.adv_estimator == "gtpo" else None}
            cached.parent.mkdir(parents=True, exist_ok=True)  # a shipped warm-up leaves the cache folder unmade
            cached.write_text(json.dumps(entry), encoding="utf-8")
    return {
        "seed": options.seed,
        "options": {**asdict(options), "algorithms": list(options.algorithms)},
        "warmup": {"steps": len(losses), "final_loss": losses[-1] if losses else None},
        "eval_before": eval_before,
        "runs": runs,
        "group_view": view,
        "seconds": time.perf_counter() - start,
    }
