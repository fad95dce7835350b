"""Run verl's own CPU tests with the GTPO plugin loaded and without it, and compare every test's outcome.

Loading the plugin registers ``gtpo`` in verl's registries and wraps some of verl's trainer methods
(``gtpo_plugin/verl_adapter/trainer_hooks.py``); this checks that nothing else in verl changes.
The tests come from the sdist of the installed verl (``pip download --no-deps --no-binary :all:
verl==<version>``, kept in ``--cache-dir``); only its ``tests/`` folder is copied out, so that
``import verl`` still means the installed verl. Both runs use the same interpreter and test
selection; they differ only in ``VERL_USE_EXTERNAL_PLUGINS``: ``none`` (verl loads no plugin)
versus unset (verl's default, ``auto``: the plugin is loaded). Before each run the script checks
that ``gtpo`` is, respectively is not, registered.

Usage::

    python scripts/verl_own_tests.py [--cache-dir DIR] [--work-dir DIR] [--paths tests/trainer ...]

Prints the outcome counts of both runs and every test whose outcome differs; exits 1 if any does.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

logger = logging.getLogger("verl_own_tests")

# verl's tests that run on a CPU without a Ray cluster or a model download: the trainer's algorithm
# layer (advantage estimators, policy losses, loss aggregation, metrics), DataProto, the config base,
# and the *_on_cpu tests of the checkpoint engine, agent loop, tools and fully-async config.
DEFAULT_PATHS = (
    "tests/trainer",
    "tests/test_protocol_on_cpu.py",
    "tests/test_protocol_v2_on_cpu.py",
    "tests/test_base_config_on_cpu.py",
    "tests/checkpoint_engine/test_fsdp_lora_only_checkpoint_on_cpu.py",
    "tests/checkpoint_engine/test_global_steps_on_cpu.py",
    "tests/checkpoint_engine/test_sglang_fusion_bucketing_on_cpu.py",
    "tests/experimental/agent_loop/test_agent_loop_extra_fields_schema_on_cpu.py",
    "tests/experimental/agent_loop/test_audio_server_contract_on_cpu.py",
    "tests/experimental/agent_loop/test_call_tool_on_cpu.py",
    "tests/experimental/agent_loop/test_multimodal_position_ids_on_cpu.py",
    "tests/experimental/agent_loop/test_qwen3_tool_parser_on_cpu.py",
    "tests/experimental/agent_loop/test_tool_call_id_on_cpu.py",
    "tests/experimental/fully_async_policy/test_async_genrm_config_on_cpu.py",
    "tests/tools/test_function_tool_on_cpu.py",
    "tests/tools/test_mixed_tools_on_cpu.py",
)
PLUGIN_ENV = ("VERL_USE_EXTERNAL_PLUGINS", "VERL_USE_EXTERNAL_MODULES")
CHECK_GTPO = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, POLICY_LOSS_REGISTRY\n"
    "print(int('gtpo' in ADV_ESTIMATOR_REGISTRY and 'gtpo' in POLICY_LOSS_REGISTRY))\n"
)


def verl_sdist_tests(version: str, cache_dir: Path, work_dir: Path) -> Path:
    """Download (once, into ``cache_dir``) verl's sdist and copy its ``tests/`` into ``work_dir``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / f"verl-{version}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"verl=={version}", "--dest", str(cache_dir)], check=True)
    prefix = f"verl-{version}/tests/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(f"verl-{version}/"):]
        tar.extractall(work_dir, members=members, filter="data")
    (work_dir / "pytest.ini").write_text("[pytest]\n")  # keep any outer configuration out
    # Some tests read verl's source files relative to the repository root: point verl/ at the installed
    # package (so `import verl` from here is still the installed verl, not a second copy).
    installed = importlib.util.find_spec("verl")
    if installed is None or not installed.submodule_search_locations:
        raise RuntimeError("verl is not installed in this environment")
    link = work_dir / "verl"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path(list(installed.submodule_search_locations)[0]).resolve(), target_is_directory=True)
    return work_dir


def run_environment(with_plugin: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PLUGIN_ENV and k != "PYTEST_ADDOPTS"}
    if not with_plugin:
        env["VERL_USE_EXTERNAL_PLUGINS"] = "none"
    return env


def gtpo_registered(env: dict[str, str], cwd: Path) -> bool:
    result = subprocess.run([sys.executable, "-c", CHECK_GTPO], env=env, cwd=cwd, capture_output=True, text=True,
                            check=True)
    return result.stdout.strip().splitlines()[-1] == "1"


def run_tests(work_dir: Path, paths: list[str], with_plugin: bool, timeout: int) -> dict[str, str]:
    """Run pytest on ``paths``; return every test's outcome (passed, failed, error, skipped) by node id."""
    env = run_environment(with_plugin)
    registered = gtpo_registered(env, work_dir)
    if registered != with_plugin:
        raise RuntimeError(f"expected gtpo {'registered' if with_plugin else 'not registered'} in the run "
                           f"{'with' if with_plugin else 'without'} the plugin, found the opposite")
    report = work_dir / f"report_{'with' if with_plugin else 'without'}_plugin.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(work_dir / "pytest.ini"),
               "--rootdir", str(work_dir), f"--junitxml={report}", *paths]
    logger.info("running %s (%s the plugin)", " ".join(paths), "with" if with_plugin else "without")
    result = subprocess.run(command, env=env, cwd=work_dir, capture_output=True, text=True, timeout=timeout,
                            check=False)
    if not report.exists():
        raise RuntimeError(f"pytest wrote no report (exit {result.returncode}):\n{result.stdout[-3000:]}"
                           f"{result.stderr[-3000:]}")
    return read_junit(report)


def read_junit(report: Path) -> dict[str, str]:
    """Every test case of a JUnit XML report: ``{"classname::name": "passed" | "failed" | "error" | "skipped"}``."""
    names = {"failure": "failed", "error": "error", "skipped": "skipped"}
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        kinds = [names[child.tag] for child in case if child.tag in names]
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    return outcomes


def compare(without: dict[str, str], with_: dict[str, str]) -> list[str]:
    """Lines naming every test whose outcome differs, or that ran in only one of the runs."""
    return [f"{test}: without plugin {without.get(test, 'absent')}, with plugin {with_.get(test, 'absent')}"
            for test in sorted(set(without) | set(with_)) if without.get(test) != with_.get(test)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "gtpo-verl-sdist",
                        help="where the verl sdist is downloaded once (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where verl's tests are copied and run (default: a new temporary folder)")
    parser.add_argument("--paths", nargs="+", default=list(DEFAULT_PATHS), help="test paths inside verl's sdist")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per pytest run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    version = metadata.version("verl")
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="gtpo-verl-tests-"))
    if work_dir.exists() and args.work_dir is not None:
        shutil.rmtree(work_dir / "tests", ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    verl_sdist_tests(version, args.cache_dir, work_dir)
    without = run_tests(work_dir, args.paths, with_plugin=False, timeout=args.timeout)
    with_ = run_tests(work_dir, args.paths, with_plugin=True, timeout=args.timeout)
    for label, outcomes in (("without plugin", without), ("with plugin", with_)):
        counts = collections.Counter(outcomes.values())
        logger.info("verl %s tests %s: %d tests, %s", version, label, len(outcomes),
                    ", ".join(f"{counts[k]} {k}" for k in ("passed", "failed", "error", "skipped")))
    differences = compare(without, with_)
    for line in differences:
        logger.error("DIFFERS %s", line)
    if not without:
        logger.error("no test ran")
        return 1
    logger.info("%s", "outcomes differ" if differences else "every test has the same outcome with and without it")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
