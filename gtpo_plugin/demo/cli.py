"""``gtpo-demo`` / ``python -m gtpo_plugin.demo``: GTPO vs GRPO on a laptop CPU, through verl's algorithm code."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

OUTPUT_FILES = {
    "study": "study.json",
    "metrics": "metrics.json",
    "plot": "gtpo_vs_grpo.png",
    "group_view": "group_view.txt",
    "summary": "summary.txt",
}

# What the committed 8-seed study measured (docs/study_paper, preset paper, defaults; regenerate with
# scripts/studies.sh and update these lines from its study.json).
NOISE_BAND = (
    "Seed-to-seed noise, measured by the 8-seed study in docs/study_paper (preset paper, these defaults): pass@1\n"
    "after RL varies across seeds with a standard deviation of about 0.02 for both GTPO and GRPO (GRPO 0.76-0.83),\n"
    "and the per-seed difference GTPO - GRPO ranged from -0.04 to +0.05 (95% CI of its mean over the 8 seeds:\n"
    "-0.009 to +0.047). A difference from one or two seeds inside that band is noise, not evidence."
)


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
    from gtpo_plugin.demo.arms import ALGORITHMS
    from gtpo_plugin.demo.options import DemoOptions
    from gtpo_plugin.demo.presets import PRESETS
    from gtpo_plugin.demo.regimes import REGIMES

    defaults = DemoOptions()
    parser = argparse.ArgumentParser(
        prog="gtpo-demo",
        description="Train a tiny language model with GTPO and with GRPO from the same weights and seeds, "
        "through verl's compute_advantage and policy-loss registry, on one or more seeds, and write "
        "study.json (per-seed metrics, means and paired differences with 95%% Student t intervals), "
        "metrics.json, a plot, a view of one group and a summary to --out. Nothing is downloaded.",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset,
                        help="paper: the GTPO authors' reward (format + correctness, 0-20), no std division, "
                        "temperature 0.9; verl: 0/1 correctness, std-normalised, temperature 1 (paper)")
    parser.add_argument("--seeds", type=positive_int("--seeds"), default=1,
                        help="number of seeds, --seed, --seed+1, ...; every arm runs on each (1)")
    parser.add_argument("--seed", type=positive_int("--seed", 0), default=0, help="first seed (0)")
    parser.add_argument("--arms", type=arm_list, default=defaults.algorithms,
                        help=f"comma-separated arms from {', '.join(ALGORITHMS)} (gtpo,grpo); "
                        "null = GTPO with every part off")
    parser.add_argument("--jobs", type=positive_int("--jobs"), default=None,
                        help="seeds run in parallel, one CPU thread each (min(seeds, CPU cores))")
    parser.add_argument("--regime", choices=sorted(REGIMES), default="default",
                        help="a documented preset of the task and run sizes (gtpo_plugin/demo/regimes.py): "
                        + "; ".join(f"{name}: {regime.about}" for name, regime in REGIMES.items()).replace("%", "%%")
                        + ". Options given explicitly override it (default)")
    parser.add_argument("--steps", type=positive_int("--steps"), default=None,
                        help=f"RL steps per arm (the regime's; default regime {defaults.steps})")
    parser.add_argument("--group-size", type=positive_int("--group-size", 2), default=None,
                        help="completions sampled per prompt, G (the preset's: 8)")
    parser.add_argument("--prompts", type=positive_int("--prompts", 2), default=None,
                        help="prompts per RL step, split into 2 mini-batches; even (the regime's; default "
                        f"regime {defaults.prompts_per_step})")
    parser.add_argument("--lr", type=positive_float, default=None, help="RL learning rate, every arm (3e-4)")
    parser.add_argument("--warmup-steps", type=positive_int("--warmup-steps", 0), default=None,
                        help="supervised warm-up steps before RL (the regime's; default regime "
                        f"{defaults.warmup_steps})")
    parser.add_argument("--eval-problems", type=positive_int("--eval-problems"), default=defaults.eval_problems,
                        help="problems in the fixed evaluation set; pass@1 and pass@8 sample 8 completions of each "
                        f"({defaults.eval_problems})")
    parser.add_argument("--eval-every", type=positive_int("--eval-every", 0), default=0,
                        help="also measure pass@1 on the evaluation set every N RL steps, for its peak over "
                        "training (0: before and after RL only)")
    parser.add_argument("--train-warmup", action="store_true",
                        help="train the warm-up here even where the package ships it (the default settings on CPU)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder to keep warmed-up weights per seed in, shared between runs (none)")
    parser.add_argument("--out", type=Path, default=Path("gtpo_demo_out"), help="output folder (gtpo_demo_out)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: cuda when available, else cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def arm_list(text: str) -> tuple[str, ...]:
    from gtpo_plugin.demo.arms import ALGORITHMS

    arms = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [arm for arm in arms if arm not in ALGORITHMS]
    if not arms or unknown or len(set(arms)) != len(arms):
        raise argparse.ArgumentTypeError(f"--arms must be distinct names from {', '.join(ALGORITHMS)}, got {text!r}")
    return arms


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


def write_outputs(study: dict[str, Any], results: list[dict[str, Any]], out: Path) -> dict[str, Path]:
    """Write the five output files into ``out`` (created if needed); returns their paths."""
    from gtpo_plugin.demo.report import plot_study, study_summary, write_json

    out.mkdir(parents=True, exist_ok=True)
    paths = {key: out / name for key, name in OUTPUT_FILES.items()}
    write_json(paths["study"], study)
    write_json(paths["metrics"], {
        "about": study["about"],
        "preset": study["preset"],
        "seeds": {str(result["seed"]): {key: value for key, value in result.items() if key != "group_view"}
                  for result in results},
    })
    plot_study(paths["plot"], results, study["arms"],
               title=f"{' vs '.join(arm.upper() for arm in study['arms'])}, preset {study['preset']}, "
               f"regime {study['options'].get('regime', 'default')}, "
               "through verl's compute_advantage and policy losses")
    view = next((result["group_view"] for result in results if result["group_view"]), None)
    paths["group_view"].write_text(
        view + "\n" if view else "No group of the first step had completions with different rewards.\n",
        encoding="utf-8")
    # The noise band was measured on the default regime; other regimes report their own detectable differences.
    band = NOISE_BAND if study["options"].get("regime", "default") == "default" else ""
    paths["summary"].write_text(study_summary(study, band) + "\n", encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run the study, write the outputs, print the summary. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.prompts is not None and args.prompts % 2:
        parser.error(f"--prompts must be even (each step is split into 2 mini-batches of whole groups), "
                     f"got {args.prompts}")
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    jobs = args.jobs or max(1, min(args.seeds, os.cpu_count() or 1))
    if device == "cuda" and jobs > 1:
        parser.error("--jobs > 1 runs seeds in CPU processes; with --device cuda use --jobs 1")
    if device == "cpu":
        # One thread: for a model this small more threads only add synchronisation (measured slower on
        # a shared 2-core machine); parallelism comes from running seeds in separate processes.
        torch.set_num_threads(1)

    import_quietly()
    from gtpo_plugin.demo.options import DemoOptions
    from gtpo_plugin.demo.study import run_study

    options = DemoOptions.for_regime(args.regime, preset=args.preset, steps=args.steps, group_size=args.group_size,
                                     prompts_per_step=args.prompts, seed=args.seed, device=device, lr=args.lr,
                                     warmup_steps=args.warmup_steps, algorithms=args.arms, eval_every=args.eval_every,
                                     eval_problems=args.eval_problems, shipped_warmup=not args.train_warmup,
                                     cache=str(args.cache) if args.cache else None)
    seeds = list(range(args.seed, args.seed + args.seeds))
    settings = options.settings()
    print(f"gtpo-demo: preset {options.preset}, regime {options.regime}, seeds {seeds} ({jobs} at a time), "
          f"arms {', '.join(options.algorithms)}: "
          f"warm-up {options.warmup_steps} steps, then {options.steps} RL steps each "
          f"({options.prompts_per_step} prompts x {settings.group_size} completions) on {device}", file=sys.stderr)
    progress = tqdm_progress(not args.no_progress) if jobs == 1 else None
    study, results = run_study(options, seeds, jobs, progress)
    paths = write_outputs(study, results, args.out)
    print(paths["summary"].read_text(encoding="utf-8"), end="")
    print(f"\nwall time {study['wall_time_s']:.0f} s; wrote " + ", ".join(str(path) for path in paths.values()))
    return 0
