"""Stress sweep: GTPO and GRPO at higher learning rates, where GRPO's policy collapse (entropy rising,
accuracy falling, the paper's Figure 4) can appear.

For each learning rate runs gtpo and grpo on the same seeds from the same warm-up (preset ``--preset``)
and writes to ``--out`` (default ``docs/stress``): ``stress.md``, ``stress.csv``, ``stress.json`` and
``stress.png`` (mean sampled accuracy and token entropy per step with 95% Student t bands, one row per
learning rate).

    python scripts/stress.py --lrs 3e-4,1e-3,3e-3 --seeds 4 --jobs 2 --cache .demo_cache
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

ARMS = ("gtpo", "grpo")
METRICS = ("greedy_accuracy", "sampled_accuracy", "entropy", "format_accuracy", "response_length")
CURVES = (("accuracy/sampled", "sampled accuracy"), ("actor/entropy", "token entropy (nats)"),
          ("format/accuracy", "sampled format accuracy"))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run (the demo's default)")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/stress"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)
    from gtpo_plugin.demo.cli import import_quietly

    import_quietly()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gtpo_plugin.demo.options import DemoOptions
    from gtpo_plugin.demo.presets import PRESETS
    from gtpo_plugin.demo.report import ARM_COLORS, markdown_table, smooth
    from gtpo_plugin.demo.study import curves, run_study
    from gtpo_plugin.stats import mean_band

    args.out.mkdir(parents=True, exist_ok=True)
    lrs = [float(text) for text in args.lrs.split(",")]
    studies, rows = {}, [("lr", "metric", "GTPO", "GRPO", "GTPO - GRPO")]
    figure, axes = plt.subplots(len(lrs), len(CURVES), figsize=(5 * len(CURVES), 3.3 * len(lrs)),
                                constrained_layout=True, squeeze=False)
    for row, lr in enumerate(lrs):
        # The preset's own lr is passed as None, so that runs a study already made are reused from the cache.
        options = DemoOptions(preset=args.preset, algorithms=ARMS, lr=None if lr == PRESETS[args.preset].lr else lr,
                              cache=str(args.cache) if args.cache else None,
                              **({"steps": args.steps} if args.steps else {}))
        study, results = run_study(options, list(range(args.seeds)), args.jobs)
        studies[f"{lr:g}"] = study
        print(f"lr {lr:g}: done in {study['wall_time_s']:.0f} s", file=sys.stderr)
        for metric in METRICS:
            cells = [study["summary"][arm][metric] for arm in ARMS] + [study["paired_vs_grpo"]["gtpo"][metric]]
            rows.append((f"{lr:g}", metric, *(f"{c['mean']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
                                               for c in cells)))
        for column, (key, title) in enumerate(CURVES):
            axis = axes[row][column]
            for arm in ARMS:
                data = curves(results, arm, key)
                window = max(1, data.shape[1] // 10)
                mean, low, high = mean_band(np.array([smooth(c, window) for c in data]))
                x = np.arange(1, data.shape[1] + 1)
                axis.plot(x, mean, color=ARM_COLORS[arm], linewidth=2, label=arm.upper())
                axis.fill_between(x, low, high, color=ARM_COLORS[arm], alpha=0.18, linewidth=0)
            axis.set_title(f"lr {lr:g}: {title}", fontsize=10)
            axis.set_xlabel("RL step")
            axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=9)
    figure.suptitle(f"Stress sweep, preset {args.preset}: mean over {args.seeds} seeds, 95% Student t bands")
    figure.savefig(args.out / "stress.png", dpi=100)
    plt.close(figure)
    study = next(iter(studies.values()))
    text = (f"# Stress sweep\n\nRegenerate: `python scripts/stress.py --lrs {args.lrs} --seeds {args.seeds} "
            f"--jobs {args.jobs} --preset {args.preset}`. {args.seeds} seeds, {study['options']['steps']} RL steps "
            f"x {study['options']['prompts_per_step']} prompts x 8 completions per run. "
            f"Final metrics over the last 20% of steps (greedy: after RL); mean [95% CI] "
            f"({study['ci_method']}).\n\n" + markdown_table(rows) + "\n")
    (args.out / "stress.md").write_text(text, encoding="utf-8")
    (args.out / "stress.json").write_text(json.dumps(studies, indent=1) + "\n", encoding="utf-8")
    with (args.out / "stress.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
