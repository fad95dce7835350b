"""Time what loading the GTPO plugin adds to ``import verl``, in fresh processes, with and without the plugin.

Usage:
    python scripts/bench_import.py              # 5 runs of each command, after one warm-up run each
    python scripts/bench_import.py --runs 9

Each scenario runs three ways, in turn, so that all see the same machine: with the plugin (verl's default,
``VERL_USE_EXTERNAL_PLUGINS=auto``), without any plugin (``none``), and with verl scanning the installed
packages' entry points but loading none of them (``VERL_USE_EXTERNAL_PLUGINS=no-such-plugin``: what
``import verl`` costs with any plugin installed, before loading it). The mode that opens a round rotates, so
that none always runs first. The table gives the median wall time of
each and the medians of the paired differences and ratios. The scenarios:

- ``worker: import verl``: what every Ray worker pays at least;
- ``worker: + core_algos``: a worker that looks up a policy loss (the plugin registers ``gtpo`` there);
- ``driver: + v1 trainer``: a driver that imports verl's v1 trainer (the plugin installs its hooks there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

SCAN_ONLY = "no-such-plugin"  # verl scans the entry points, then loads none (no plugin has this name)

SCENARIOS = {
    "worker: import verl": "import verl",
    "worker: + core_algos": "import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn",
    "driver: + v1 trainer": "import verl\nfrom verl.trainer.ppo.v1 import PPOTrainerSync",
}


def wall_time(code: str, plugins: str) -> float:
    """Seconds for a fresh ``python -c code`` with ``VERL_USE_EXTERNAL_PLUGINS=plugins``."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VERL_USE_EXTERNAL")}
    environment["VERL_USE_EXTERNAL_PLUGINS"] = plugins
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=environment, check=True, capture_output=True)
    return time.perf_counter() - start


def measure(code: str, runs: int) -> dict[str, float]:
    """Medians over ``runs`` rounds of the three modes, after one warm-up round; each round starts one later."""
    samples: dict[str, list[float]] = {"auto": [], "none": [], SCAN_ONLY: []}
    modes = list(samples)
    for round_ in range(runs + 1):
        shift = round_ % len(modes)
        for plugins in modes[shift:] + modes[:shift]:
            seconds = wall_time(code, plugins)
            if round_:
                samples[plugins].append(seconds)
    with_plugin, without, scan = samples["auto"], samples["none"], samples[SCAN_ONLY]
    return {
        "with": statistics.median(with_plugin),
        "without": statistics.median(without),
        "scan": statistics.median(scan),
        "added": statistics.median(a - b for a, b in zip(with_plugin, without, strict=True)),
        "added_after_scan": statistics.median(a - b for a, b in zip(with_plugin, scan, strict=True)),
        "ratio": statistics.median(a / b for a, b in zip(with_plugin, without, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="measured rounds per scenario (default 5)")
    arguments = parser.parse_args()
    print(f"{arguments.runs} rounds per scenario, medians; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n")
    print("| scenario | with plugin (s) | no plugin (s) | entry-point scan only (s) | added vs no plugin (s) | "
          "added vs scan only (s) | ratio with/without |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, code in SCENARIOS.items():
        result = measure(code, arguments.runs)
        print(f"| {name} | {result['with']:.2f} | {result['without']:.2f} | {result['scan']:.2f} | "
              f"{result['added']:+.2f} | {result['added_after_scan']:+.2f} | {result['ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
