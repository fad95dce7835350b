"""tests/conftest.py: with CI=true or GTPO_REQUIRE_VERL=1 an import-skip of verl or megatron-core fails.

Each case runs pytest in a subprocess on a small test folder that holds a copy of the real
``tests/conftest.py`` and test modules that make ``verl`` / ``megatron`` unimportable
(``sys.modules[name] = None``) before calling ``pytest.importorskip``, at module level and inside tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

MODULE_LEVEL = """
    import sys
    import pytest
    sys.modules["verl"] = None
    verl = pytest.importorskip("verl")

    def test_uses_verl():
        assert verl
"""
INSIDE_TESTS = """
    import sys
    import pytest

    def test_megatron_core():
        sys.modules["megatron"] = None
        pytest.importorskip("megatron.core")

    def test_verl_submodule():
        sys.modules["verl"] = None
        pytest.importorskip("verl.trainer.ppo.core_algos")

    def test_other_optional_module():
        pytest.importorskip("gtpo_no_such_optional_module")

    def test_gpu_only():
        pytest.skip("needs a CUDA device")
"""


def run_pytest(folder: Path, **env_vars: str) -> dict[str, str]:
    """Run pytest on ``folder``; return each test's outcome (passed, failed, error, skipped) by name."""
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "GTPO_REQUIRE_VERL", "PYTEST_ADDOPTS"}}
    env.update(env_vars)
    report = folder / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(folder / "pytest.ini"),
         "--rootdir", str(folder), "--continue-on-collection-errors", f"--junitxml={report}", str(folder)],
        env=env, cwd=folder, capture_output=True, text=True, timeout=600, check=False,
    )
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        kinds = [child.tag for child in case if child.tag in {"failure", "error", "skipped"}]
        outcomes[case.get("name") or case.get("classname") or ""] = kinds[0] if kinds else "passed"
    return outcomes


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_module_level.py").write_text(textwrap.dedent(MODULE_LEVEL))
    (tmp_path / "test_inside.py").write_text(textwrap.dedent(INSIDE_TESTS))
    return tmp_path


def test_developer_run_skips(folder):
    outcomes = run_pytest(folder)
    assert outcomes == {
        "test_module_level": "skipped",  # junit names a module skipped at collection after the module
        "test_megatron_core": "skipped", "test_verl_submodule": "skipped",
        "test_other_optional_module": "skipped", "test_gpu_only": "skipped",
    }


@pytest.mark.parametrize("env", [{"CI": "true"}, {"CI": "1"}, {"GTPO_REQUIRE_VERL": "1"}])
def test_ci_run_fails_on_verl_and_megatron_import_skips(folder, env):
    outcomes = run_pytest(folder, **env)
    assert outcomes == {
        "test_module_level": "error",  # a collection failure
        "test_megatron_core": "failure", "test_verl_submodule": "failure",
        "test_other_optional_module": "skipped", "test_gpu_only": "skipped",
    }


def test_ci_failure_names_the_module(folder):
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS"}}
    env["GTPO_REQUIRE_VERL"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(folder / "pytest.ini"),
         "--rootdir", str(folder), str(folder / "test_inside.py")],
        env=env, cwd=folder, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 1
    assert "could not import 'megatron.core'" in result.stdout
    assert "verl and megatron-core are required here" in result.stdout
