"""Plain ``pytest`` on an install without verl: the modules that need it are skipped, and in CI they fail.

verl, megatron-core and the packages only they bring are hidden from a pytest run in a subprocess: a folder
first on ``PYTHONPATH`` holds a stand-in package for each, whose import raises ``ModuleNotFoundError`` as a
missing package does. Hydra's pytest plugin, registered by the installed hydra-core, is left out the same
way (``-p no:hydra_pytest``), as it would be absent with hydra-core. Wall time: about 1 minute on a shared
2-core machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# verl and megatron-core, and what a core-only install would lack with them (pyproject's verl extra).
HIDDEN = ("verl", "megatron", "omegaconf", "hydra", "ray", "transfer_queue", "tensordict", "torchdata")
# Modules that import verl or omegaconf at their top (the first three once imported omegaconf before their
# skip), and one that needs verl inside two of its tests only.
VERL_MODULES = ("tests/test_demo.py", "tests/verl_adapter/test_verl_multiturn.py",
                "tests/verl_adapter/test_verl_estimator.py")
MIXED_MODULE = "tests/test_prepare_data.py"


def hide(folder: Path, names: tuple[str, ...] = HIDDEN) -> Path:
    """Stand-in packages in ``folder`` whose import fails as an absent package's does."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}' (hidden by the test)\", name={name!r})\n")
    return folder


def pytest_without_verl(hidden: Path, *args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in {"CI", "GTPO_REQUIRE_VERL"}}
    env.update(PYTHONPATH=os.pathsep.join([str(hidden), str(REPO)]), PYTEST_ADDOPTS="-p no:hydra_pytest")
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def hidden(tmp_path_factory) -> Path:
    return hide(tmp_path_factory.mktemp("hidden"))


def test_the_stand_ins_hide_the_packages(hidden):
    code = (f"import importlib\nfor name in {HIDDEN!r}:\n    try:\n        importlib.import_module(name)\n"
            "    except ModuleNotFoundError:\n        continue\n    raise SystemExit(name + ' imported')\n")
    env = {**os.environ, "PYTHONPATH": str(hidden)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_test_module_is_collected_or_skipped_without_verl(hidden):
    result = pytest_without_verl(hidden, "--collect-only", "tests", ci=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "error" not in result.stdout.splitlines()[-1]


def test_without_ci_the_verl_modules_are_skipped_and_the_rest_runs(hidden):
    result = pytest_without_verl(hidden, *VERL_MODULES, MIXED_MODULE, ci=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for module in VERL_MODULES:
        assert f"SKIPPED [1] {module}" in result.stdout and "could not import 'verl'" in result.stdout
    summary = result.stdout.splitlines()[-1]
    # the three modules and prepare_data's three verl tests are skipped; prepare_data's other tests ran
    assert re.match(r"\d+ passed, 6 skipped in ", summary), summary


def test_in_ci_the_same_run_fails_naming_verl(hidden):
    result = pytest_without_verl(hidden, VERL_MODULES[0], ci=True)
    assert result.returncode != 0, result.stdout[-4000:]
    assert "verl and megatron-core are required here" in result.stdout and "1 error" in result.stdout
