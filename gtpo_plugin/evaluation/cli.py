"""``gtpo-eval``: score generated samples (``score``) and compare scored runs (``compare``).

    gtpo-eval score samples.parquet --k 1 4 8 --output-dir results/ --label gtpo
    gtpo-eval compare results/gtpo.scores.json results/grpo.scores.json --output-dir results/

Bad input (a malformed line, a k above n, an empty file) exits with status 2 and one line that
names the file and line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gtpo_plugin.evaluation.compare import write_comparison
from gtpo_plugin.evaluation.scoring import report_table, score_files, write_scores

logger = logging.getLogger("gtpo_plugin.evaluation")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gtpo-eval", description="Score generated samples and compare scored runs, as in the GTPO paper."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser(
        "score", help="score samples files: accuracy, format, pass@k, maj@k per dataset"
    )
    score.add_argument(
        "samples", nargs="+", type=Path, help="verl generation parquet or JSONL samples file(s)"
    )
    score.add_argument(
        "--k", nargs="+", type=_positive_int, default=None,
        help="k values for pass@k and maj@k (default: powers of two up to n, and n)",
    )
    score.add_argument("--output-dir", type=Path, default=None, help="where to write the JSON and CSV "
                       "(default: the first samples file's folder)")
    score.add_argument("--label", default=None, help="run name in file names and comparisons "
                       "(default: the first samples file's stem)")
    score.add_argument("--workers", type=_positive_int, default=1, help="processes for answer checking")

    compare = commands.add_parser("compare", help="compare two or more scores files in one table and chart")
    compare.add_argument("scores", nargs="+", type=Path, help="*.scores.json files from 'gtpo-eval score'")
    compare.add_argument("--labels", nargs="+", default=None, help="run names (default: each file's label)")
    compare.add_argument("--metrics", nargs="+", default=None, help="metrics to show (default: all)")
    compare.add_argument("--output-dir", type=Path, default=Path("."), help="where to write CSV and PNG")
    compare.add_argument("--name", default="comparison", help="file name stem of the CSV and PNG")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gtpo-eval`` and ``python -m gtpo_plugin.evaluation``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "score":
            report = score_files(args.samples, ks=args.k, workers=args.workers, label=args.label)
            output_dir = args.output_dir if args.output_dir is not None else args.samples[0].parent
            json_path, csv_path = write_scores(report, output_dir)
            print(report_table(report))
            logger.info("wrote %s and %s", json_path, csv_path)
        else:
            table, csv_path, png_path = write_comparison(
                args.scores, args.output_dir, labels=args.labels, metrics=args.metrics, name=args.name
            )
            print(table)
            logger.info("wrote %s and %s", csv_path, png_path)
    except (ValueError, FileNotFoundError, ImportError) as error:
        parser.exit(2, f"gtpo-eval {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
