"""The checks inside the CI scripts: the wheel-contents check, the with/without-plugin comparison, which
modules the verl 0.9.0 run leaves out, and where the tests marked ``vllm`` run."""

from __future__ import annotations

import importlib.util
import re
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_install = load_script("check_install")
verl_own_tests = load_script("verl_own_tests")

ENTRY_POINTS = """[console_scripts]
gtpo-demo = gtpo_plugin.demo:main
gtpo-eval = gtpo_plugin.evaluation.cli:main

[verl.plugins]
gtpo = gtpo_plugin.verl_adapter
"""


def make_wheel(path: Path, *, leave_out: str | None = None, entry_points: str = ENTRY_POINTS,
               extra: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name in sorted(check_install.package_files() | {check_install.HYDRA_PLUGIN}):
            if name != leave_out:
                archive.writestr(name, "")
        archive.writestr("gtpo_plugin-0.1.0.dist-info/entry_points.txt", entry_points)
        if extra:
            archive.writestr(extra, "")
    return path


def test_package_files_cover_the_adapter_and_the_config_group_and_skip_caches():
    files = check_install.package_files()
    assert "gtpo_plugin/verl_adapter/__init__.py" in files and "gtpo_plugin/demo/cli.py" in files
    assert "gtpo_plugin/hydra_config/algorithm/gtpo.yaml" in files
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in files)


def test_a_complete_wheel_passes(tmp_path):
    check_install.check_wheel_contents(make_wheel(tmp_path / "ok.whl"))


def test_a_wheel_missing_a_module_fails_naming_it(tmp_path):
    wheel = make_wheel(tmp_path / "bad.whl", leave_out="gtpo_plugin/verl_adapter/trainer_hooks.py")
    with pytest.raises(AssertionError, match="trainer_hooks.py"):
        check_install.check_wheel_contents(wheel)


def test_a_wheel_with_files_outside_the_package_fails(tmp_path):
    with pytest.raises(AssertionError, match="gtpo_searchpath.py: \\['tests/test_loss.py'\\]"):
        check_install.check_wheel_contents(make_wheel(tmp_path / "bad.whl", extra="tests/test_loss.py"))
    # hydra_plugins/ is Hydra's namespace package, shared with other plugins: an __init__.py would hide them
    with pytest.raises(AssertionError, match="hydra_plugins/__init__.py"):
        check_install.check_wheel_contents(make_wheel(tmp_path / "bad2.whl", extra="hydra_plugins/__init__.py"))


@pytest.mark.parametrize("left_out", ["hydra_plugins/gtpo_searchpath.py",
                                      "gtpo_plugin/hydra_config/algorithm/gtpo_paper.yaml"])
def test_a_wheel_without_the_hydra_plugin_or_its_config_group_fails(tmp_path, left_out):
    with pytest.raises(AssertionError, match=left_out.rsplit("/", 1)[1]):
        check_install.check_wheel_contents(make_wheel(tmp_path / "bad.whl", leave_out=left_out))


def test_a_wheel_without_the_verl_entry_point_fails(tmp_path):
    wheel = make_wheel(tmp_path / "bad.whl", entry_points=ENTRY_POINTS.split("[verl.plugins]")[0])
    with pytest.raises(AssertionError, match="verl.plugins:gtpo"):
        check_install.check_wheel_contents(wheel)


def test_compare_reports_changed_and_missing_outcomes():
    without = {"a::t1": "passed", "a::t2": "failed", "a::t3": "skipped"}
    assert verl_own_tests.compare(without, dict(without)) == []
    with_ = {"a::t1": "failed", "a::t2": "failed", "a::t4": "passed"}
    assert verl_own_tests.compare(without, with_) == [
        "a::t1: without plugin passed, with plugin failed",
        "a::t3: without plugin skipped, with plugin absent",
        "a::t4: without plugin absent, with plugin passed",
    ]


def test_the_plugin_run_differs_from_the_other_only_in_verls_plugin_switches(monkeypatch):
    monkeypatch.setenv("VERL_USE_EXTERNAL_MODULES", "gtpo_plugin.verl_adapter")
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "auto")
    with_plugin, without = verl_own_tests.run_environment(True), verl_own_tests.run_environment(False)
    assert "VERL_USE_EXTERNAL_PLUGINS" not in with_plugin and "VERL_USE_EXTERNAL_MODULES" not in with_plugin
    assert without["VERL_USE_EXTERNAL_PLUGINS"] == "none" and "VERL_USE_EXTERNAL_MODULES" not in without
    assert {k: v for k, v in without.items() if k != "VERL_USE_EXTERNAL_PLUGINS"} == with_plugin


def test_junit_reports_are_read_case_by_case(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.a" name="t1"/>'
        '<testcase classname="tests.a" name="t2"><failure message="x"/></testcase>'
        '<testcase classname="tests.a" name="t3"><error message="x"/></testcase>'
        '<testcase classname="tests.b" name="t4"><skipped message="x"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert verl_own_tests.read_junit(report) == {
        "tests.a::t1": "passed", "tests.a::t2": "failed", "tests.a::t3": "error", "tests.b::t4": "skipped",
    }


def modules_marked(marker: str) -> set[str]:
    return {path.relative_to(REPO).as_posix() for path in (REPO / "tests").rglob("test_*.py")
            if f"pytest.mark.{marker}" in path.read_text() and path.name != "test_ci_scripts.py"}


def modules_listed(table_heading: str) -> set[str]:
    table = (REPO / "docs" / "development.md").read_text().split(table_heading)[1]
    return set(re.findall(r"`(tests/[\w/]+\.py)`", table.split("\n\n")[1]))


def test_the_modules_run_on_verl_090_are_the_ones_the_docs_list_with_a_reason():
    marked = modules_marked("verl_compat")
    assert marked == modules_listed("The modules marked `verl_compat`")
    assert len(marked) == 10 and all(module.startswith("tests/verl_adapter/") for module in marked)


def test_the_vllm_tests_run_in_the_vllm_environment_only_and_the_docs_list_them_with_a_reason():
    marked = modules_marked("vllm")
    assert marked == modules_listed("The modules marked `vllm`") and marked
    ci = (REPO / ".ci" / "run").read_text()
    # the steps run one after the other: step 1 a line, steps 2 and 3 subshells, each named by its heading
    subshells = dict(re.findall(r'step "(\d)/5 [^\n]*"\nbegan=\$SECONDS\n\(\n(.*?)\n\)\n', ci, re.DOTALL))
    assert sorted(subshells) == ["2", "3"]
    assert "VENV=.venv-vllm VLLM=1" in subshells["3"] and subshells["3"].endswith("python -m pytest -q -m vllm")
    assert "import verl, vllm" in subshells["3"]  # a missing vLLM fails the step before pytest, never skips
    assert "VERL_VERSION=0.9.0" in subshells["2"] and subshells["2"].endswith("python -m pytest -q -m verl_compat")
    assert '\nbash scripts/test.sh -m "not vllm"\n' in ci
    assert ci.count("pytest -q") == 2 and ci.count("scripts/test.sh -m") == 1
