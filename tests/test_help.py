"""``--help`` of every command-line entry point exits 0: console scripts, ``python -m`` apps, argparse scripts.

The entry points are discovered, not listed, so a new one is covered the day it is added. Each runs in a
fresh process (as a user runs it); the processes run side by side because most of their time is imports.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> list[list[str]]:
    """The installed package's console scripts, each run as ``python -c 'from module import func; func()'``."""
    entry_points = [ep for ep in distribution("gtpo-plugin").entry_points if ep.group == "console_scripts"]
    commands = []
    for entry_point in entry_points:
        target = entry_point.value
        module, func = target.split(":")
        code = f"import sys; sys.argv[0] = {target!r}; from {module} import {func}; sys.exit({func}())"
        commands.append([sys.executable, "-c", code, "--help"])
    return commands


def module_apps() -> list[list[str]]:
    """Every ``gtpo_plugin.<app>`` with a ``__main__.py``."""
    return [[sys.executable, "-m", f"gtpo_plugin.{main.parent.name}", "--help"]
            for main in sorted((ROOT / "gtpo_plugin").glob("*/__main__.py"))]


def argparse_scripts() -> list[list[str]]:
    """Every script under ``scripts/`` that parses its command line with argparse."""
    return [[sys.executable, str(path), "--help"] for path in sorted((ROOT / "scripts").glob("*.py"))
            if "argparse" in path.read_text(encoding="utf-8")]


COMMANDS = console_scripts() + module_apps() + argparse_scripts()


def test_the_entry_points_were_found() -> None:
    """Guards the discovery itself: both console scripts, the three apps and the argparse scripts."""
    assert len(console_scripts()) == 2
    assert {command[2] for command in module_apps()} >= {"gtpo_plugin.demo", "gtpo_plugin.evaluation",
                                                          "gtpo_plugin.smoke"}
    assert len(argparse_scripts()) >= 10


def test_help_exits_0_for_every_entry_point() -> None:
    def run(command: list[str]) -> tuple[list[str], subprocess.CompletedProcess[str]]:
        return command, subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, COMMANDS))
    failed = [f"{' '.join(c[1:])}: exit {r.returncode}\n{r.stderr[-600:]}" for c, r in results
              if r.returncode != 0 or "usage" not in r.stdout.lower()]
    assert not failed, "\n\n".join(failed)
