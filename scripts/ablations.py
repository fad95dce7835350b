"""Ablations across seeds: GTPO with each part off in turn, and conflict mode ``any``, in both presets.

For each preset runs the arms gtpo, grpo, w1 (w = 1), gamma0 (γ = 0), nofilter (τ = inf),
noconflict (mode none) and any (mode any) on the same seeds from the same warm-up, and writes to
``--out`` (default ``docs/ablations``): ``ablations.md`` (tables), ``ablations.csv`` (one row per
preset × arm × metric), ``ablations.json`` (both studies) and ``ablations.png`` (each arm's paired
difference against GRPO, with 95% Student t intervals).

    python scripts/ablations.py --seeds 4 --jobs 2 --cache .demo_cache
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

ARMS = ("gtpo", "grpo", "w1", "gamma0", "nofilter", "noconflict", "any")
PLOTTED = (("greedy_accuracy", "greedy accuracy"), ("sampled_accuracy", "sampled accuracy"),
           ("entropy", "token entropy (nats)"), ("format_accuracy", "sampled format accuracy"))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (the demo's default)")
    parser.add_argument("--presets", default="paper,verl")
    parser.add_argument("--cache", type=Path, default=None, help="warm-up and finished runs, shared with gtpo-demo")
    parser.add_argument("--out", type=Path, default=Path("docs/ablations"))
    return parser.parse_args(argv)


def write_csv(path: Path, studies: dict[str, dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["preset", "arm", "metric", "mean", "ci_low", "ci_high", "n",
                         "diff_vs_grpo", "diff_ci_low", "diff_ci_high"])
        for preset, study in studies.items():
            for arm in study["arms"]:
                for metric in study["metrics"]:
                    value = study["summary"][arm][metric]
                    diff = study["paired_vs_grpo"].get(arm, {}).get(metric)
                    writer.writerow([preset, arm, metric, value["mean"], value["ci_low"], value["ci_high"], value["n"],
                                     *((diff["mean"], diff["ci_low"], diff["ci_high"]) if diff else ("", "", ""))])


def plot(path: Path, studies: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(studies), len(PLOTTED), figsize=(4.2 * len(PLOTTED), 3.6 * len(studies)),
                                constrained_layout=True, squeeze=False)
    for row, (preset, study) in enumerate(studies.items()):
        arms = [arm for arm in study["arms"] if arm != "grpo"]
        for column, (metric, title) in enumerate(PLOTTED):
            axis = axes[row][column]
            diffs = [study["paired_vs_grpo"][arm][metric] for arm in arms]
            means = [d["mean"] for d in diffs]
            errors = [[d["mean"] - d["ci_low"] for d in diffs], [d["ci_high"] - d["mean"] for d in diffs]]
            axis.errorbar(range(len(arms)), means, yerr=errors, fmt="o", capsize=4)
            axis.axhline(0.0, color="grey", linewidth=1)
            axis.set_xticks(range(len(arms)), arms, rotation=30)
            axis.set_title(f"{preset}: {title}, arm - GRPO", fontsize=10)
            axis.grid(alpha=0.3)
    figure.suptitle("Ablations: paired difference of each arm against GRPO (same seeds), 95% Student t intervals")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    from gtpo_plugin.demo.cli import import_quietly

    import_quietly()
    from gtpo_plugin.demo.options import DemoOptions
    from gtpo_plugin.demo.report import markdown_table, study_table
    from gtpo_plugin.demo.study import run_study

    args.out.mkdir(parents=True, exist_ok=True)
    studies = {}
    sections = []
    for preset in args.presets.split(","):
        options = DemoOptions(preset=preset, algorithms=ARMS, cache=str(args.cache) if args.cache else None,
                              **({"steps": args.steps} if args.steps else {}))
        study, _ = run_study(options, list(range(args.seeds)), args.jobs)
        studies[preset] = study
        sections.append(f"## preset `{preset}`: {len(study['seeds'])} seeds, {study['options']['steps']} RL steps "
                        f"x {study['options']['prompts_per_step']} prompts x 8 completions per arm\n\n"
                        "Each cell: mean [95% CI]; columns `ARM - GRPO`: paired difference on the same seeds.\n\n"
                        + markdown_table(study_table(study)))
        print(f"{preset}: done in {study['wall_time_s']:.0f} s", file=sys.stderr)
    header = ("# Ablations\n\nRegenerate: `python scripts/ablations.py --seeds "
              f"{args.seeds} --jobs {args.jobs}` (add `--cache DIR` to reuse runs). "
              f"Arms: {', '.join(ARMS)}. CIs: {next(iter(studies.values()))['ci_method']}.\n")
    (args.out / "ablations.md").write_text(header + "\n" + "\n\n".join(sections) + "\n", encoding="utf-8")
    (args.out / "ablations.json").write_text(json.dumps(studies, indent=1) + "\n", encoding="utf-8")
    write_csv(args.out / "ablations.csv", studies)
    plot(args.out / "ablations.png", studies)
    print((args.out / "ablations.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
