"""``gtpo-demo`` / ``python -m gtpo_plugin.demo``: GTPO vs GRPO on a laptop CPU, through verl's algorithm code."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from gtpo_plugin.demo.pipeline import DemoResult

logger = logging.getLogger(__name__)

OUTPUT_FILES = {
    "metrics": "metrics.json",
    "plot": "gtpo_vs_grpo.png",
    "group_view": "group_view.txt",
    "summary": "summary.txt",
}


def positive_int(name: str, minimum: int = 1) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lr must be a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"--lr must be a finite number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtpo-demo",
        description="Train a tiny language model with GTPO and with GRPO from the same weights and seeds, "
        "through verl's compute_advantage and policy-loss registry, and write metrics.json, a plot, "
        "a view of one group and a summary to --out. Runs on CPU in a few minutes; nothing is downloaded.",
    )
    parser.add_argument("--steps", type=positive_int("--steps"), default=200, help="RL steps per algorithm (200)")
    parser.add_argument("--group-size", type=positive_int("--group-size", 2), default=8,
                        help="completions sampled per prompt, G (8)")
    parser.add_argument("--prompts", type=positive_int("--prompts", 2), default=16,
                        help="prompts per RL step, split into 2 mini-batches (16; must be even)")
    parser.add_argument("--seed", type=positive_int("--seed", 0), default=0, help="seed of weights and sampling (0)")
    parser.add_argument("--lr", type=positive_float, default=3e-4, help="RL learning rate, both algorithms (3e-4)")
    parser.add_argument("--warmup-steps", type=positive_int("--warmup-steps", 0), default=150,
                        help="supervised warm-up steps before RL (150)")
    parser.add_argument("--out", type=Path, default=Path("gtpo_demo_out"), help="output folder (gtpo_demo_out)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def resolve_device(choice: str) -> str:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def tqdm_progress(enabled: bool) -> Callable[[str, int], Callable[[dict[str, float]], None]]:
    """Progress bars on stderr, one per phase, closing themselves at the last step."""
    from tqdm.auto import tqdm

    def start(phase: str, total: int) -> Callable[[dict[str, float]], None]:
        bar = tqdm(total=total, desc=f"{phase:<8}", unit="step", disable=not enabled or total == 0, leave=True)

        def tick(values: dict[str, float]) -> None:
            bar.set_postfix({key: f"{value:.3f}" for key, value in values.items()}, refresh=False)
            bar.update(1)
            if bar.n >= total:
                bar.close()

        return tick

    return start


def import_quietly() -> None:
    """Import verl (which loads the GTPO plugin) without the optional-backend warnings it prints on CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            import verl  # noqa: F401
            from verl.trainer.ppo import ray_trainer  # noqa: F401
        finally:
            logging.disable(previous)


def write_outputs(result: DemoResult, out: Path) -> dict[str, Path]:
    """Write the four output files into ``out`` (created if needed); returns their paths."""
    from gtpo_plugin.demo.report import format_table, group_view, plot, summary_rows, write_json
    from gtpo_plugin.demo.train import ALGORITHMS

    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in OUTPUT_FILES.items()}
    options = result.options
    runs = {
        name: {
            "adv_estimator": ALGORITHMS[name].adv_estimator,
            "loss_mode": ALGORITHMS[name].loss_mode,
            "initial_entropy": run.initial_entropy,
            "seconds": run.seconds,
            "eval_after": run.eval_after,
            "history": run.history,
        }
        for name, run in result.runs.items()
    }
    write_json(paths["metrics"], {
        "about": "GTPO (arXiv 2508.03772) vs GRPO on a synthetic addition task, through verl's algorithm layer",
        "options": {**asdict(options), "algorithms": list(options.algorithms)},
        "warmup": {"steps": len(result.warmup_losses),
                   "final_loss": result.warmup_losses[-1] if result.warmup_losses else None},
        "eval_before_rl": result.eval_before,
        "runs": runs,
        "wall_time_s": result.seconds,
    })
    plot(paths["plot"], {name: run.history for name, run in result.runs.items()},
         threshold=float(options.gtpo.get("entropy_threshold", math.log(2.0))))
    chosen = result.group_record()
    from gtpo_plugin.demo.task import build_vocab

    paths["group_view"].write_text(
        group_view(chosen[0], build_vocab(), chosen[1]) + "\n" if chosen is not None
        else "No group of the first GTPO step had both rewarded and unrewarded completions.\n",
        encoding="utf-8",
    )
    table = format_table(summary_rows(runs, result.eval_before))
    paths["summary"].write_text(table + "\n", encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run the demo, write the outputs, print the summary table. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prompts % 2:
        parser.error(f"--prompts must be even (each step is split into 2 mini-batches of whole groups), "
                     f"got {args.prompts}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    if device == "cpu":
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    import_quietly()
    from gtpo_plugin.demo.pipeline import DemoOptions, run_demo

    options = DemoOptions(steps=args.steps, group_size=args.group_size, prompts_per_step=args.prompts,
                          seed=args.seed, device=device, lr=args.lr, warmup_steps=args.warmup_steps)
    print(f"gtpo-demo: warm-up {options.warmup_steps} steps, then GTPO and GRPO for {options.steps} steps each "
          f"({options.prompts_per_step} prompts x {options.group_size} completions) on {device}", file=sys.stderr)
    result = run_demo(options, tqdm_progress(not args.no_progress))
    paths = write_outputs(result, args.out)
    print(paths["summary"].read_text(encoding="utf-8"), end="")
    print(f"\nwall time {result.seconds:.0f} s; wrote " + ", ".join(str(path) for path in paths.values()))
    return 0
