"""Print the per-regime A/B table (GTPO − GRPO, null − GRPO, smallest detectable difference) from study.json files.

Usage: python scripts/regime_table.py docs/format-fragile docs/long-lr1e-3 [--metrics greedy_accuracy,entropy]
Each folder is one ``gtpo-demo`` study (``study.json``); the table is markdown, one row per (study, metric).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

DEFAULT_METRICS = ("greedy_accuracy", "sampled_accuracy", "format_accuracy", "entropy",
                   "conflict_logprob_change_neg", "format_tag_logprob_change_neg")


def interval(entry: dict, digits: int = 3) -> str:
    low, high = entry["ci_low"], entry["ci_high"]
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return f"{entry['mean']:+.{digits}f} [n=1]"
    return f"{entry['mean']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def rows(folder: Path, metrics: list[str]) -> list[str]:
    study = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    paired = study["paired_vs_grpo"]
    lr = study["options"].get("lr")
    label = f"`{folder.name}` ({study['options'].get('regime', 'default')}, lr {f'{lr:g}' if lr else 'of the preset'})"
    lines = []
    for metric in metrics:
        if metric not in paired.get("gtpo", {}):
            continue
        gtpo, null = paired["gtpo"][metric], paired.get("null", {}).get(metric)
        lines.append(" | ".join([
            label, metric, interval(gtpo), f"{gtpo['detectable_difference']:.3f}",
            interval(null) if null else "-",
            "; ".join(f"{arm}: {interval(paired[arm][metric])}" for arm in paired if arm not in ("gtpo", "null"))
            or "-",
        ]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS))
    args = parser.parse_args()
    metrics = [name for name in args.metrics.split(",") if name]
    print("| study | metric | GTPO − GRPO [95% CI] | detectable (80%) | null − GRPO [95% CI] | other arms − GRPO |")
    print("| --- | --- | --- | --- | --- | --- |")
    for folder in args.folders:
        for line in rows(folder, metrics):
            print(f"| {line} |")


if __name__ == "__main__":
    main()
