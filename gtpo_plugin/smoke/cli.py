"""``python -m gtpo_plugin.smoke``: the smoke run's steps that are not verl's (``recipes/run_smoke_1gpu.sh``).

    python -m gtpo_plugin.smoke model DIR                     # tiny Qwen2 + tokenizer into DIR
    python -m gtpo_plugin.smoke problems FILE --count 64      # addition problems as JSONL
    python -m gtpo_plugin.smoke check SMOKE_DIR --arms gtpo grpo_no_kl grpo --model DIR
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gtpo_plugin.smoke.report import ARMS, SmokePlan, check_smoke_dir, format_table

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gtpo_plugin.smoke", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model", help="build the tiny random-init Qwen2 model and its tokenizer")
    model.add_argument("output", type=Path, help="folder to save into (from_pretrained layout)")
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--logit-scale", type=float, default=1.0,
                       help="multiply every logit (a confident start; tiny_model.CONFIDENT_LOGIT_SCALE engages "
                            "GTPO's entropy filter)")
    problems = commands.add_parser("problems", help="write synthetic addition problems as JSONL")
    problems.add_argument("output", type=Path)
    problems.add_argument("--count", type=int, required=True)
    problems.add_argument("--seed", type=int, default=0)
    check = commands.add_parser("check", help="check a finished smoke run and print its table")
    check.add_argument("smoke_dir", type=Path)
    check.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    check.add_argument("--model", type=Path, help="the tiny model's folder (its vocabulary bounds the entropy)")
    check.add_argument("--total-steps", type=int, default=SmokePlan.total_steps)
    check.add_argument("--save-step", type=int, default=SmokePlan.save_step)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "model":
        from gtpo_plugin.smoke.tiny_model import save_tiny_model

        folder = save_tiny_model(args.output, seed=args.seed, logit_scale=args.logit_scale)
        logger.info("saved the tiny model and tokenizer to %s", folder)
        return 0
    if args.command == "problems":
        from gtpo_plugin.smoke.problems import write_problems

        path = write_problems(args.output, args.count, args.seed)
        logger.info("wrote %d problems to %s", args.count, path)
        return 0
    plan = SmokePlan(total_steps=args.total_steps, save_step=args.save_step)
    problems, rows = check_smoke_dir(args.smoke_dir, args.arms, plan, model_dir=args.model)
    if rows:
        print(format_table(rows))
    if problems:
        print("SMOKE RUN FAILED:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"smoke run OK: {', '.join(args.arms)}; gtpo/* metrics finite, <H>_ini kept across the resume"
          if "gtpo" in args.arms else f"smoke run OK: {', '.join(args.arms)}")
    return 0
