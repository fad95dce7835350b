"""In CI, a test skipped because verl or megatron-core (or, in a test marked ``vllm``, vLLM) cannot be imported
is a failure; and the shared ``tiny_model_dir`` fixture.

Tests that need verl or megatron-core skip themselves with ``pytest.importorskip(...)`` so that a
developer with a partial install (the verl-free core only) can still run the rest. In CI that same
skip would hide a broken install, so when ``CI=true`` (GitHub Actions and most CI systems set it) or
``GTPO_REQUIRE_VERL=1``, these hooks turn every such skip — at collection (module level) or inside a
test — into a failure that names the module. Any test module gets this, including ones added later.
Other skips (a missing optional extra such as tensorboard, a GPU-only test) stay skips.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

import pytest

# The messages of pytest.importorskip for these modules: "could not import 'verl.x': ..." and
# "module 'verl' has __version__ ..., required is ...".
REQUIRED_IMPORT_SKIP = re.compile(r"(could not import|module) '(verl|megatron\.core)(\.[\w.]+)?'")
# vLLM's CPU build is in .venv-vllm only: its tests (marked ``vllm``) are deselected elsewhere, in CI as well
# (``-m "not vllm"``), and where they run, CI=true makes a skip for want of vLLM a failure.
VLLM_IMPORT_SKIP = re.compile(r"(could not import|module) 'vllm(\.[\w.]+)?'")


def ci() -> bool:
    """True in CI (``CI=true``/``1``)."""
    return os.environ.get("CI", "").lower() in {"true", "1"}


def verl_required() -> bool:
    """True in CI or when ``GTPO_REQUIRE_VERL=1``."""
    return ci() or os.environ.get("GTPO_REQUIRE_VERL") == "1"


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, reason) of a skip
        return str(longrepr[2])
    return str(longrepr)


def _fail_required_import_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if not (report.skipped and verl_required()):
        return
    reason = _skip_reason(report)
    if REQUIRED_IMPORT_SKIP.search(reason) or (VLLM_IMPORT_SKIP.search(reason) and ci()):
        report.outcome = "failed"
        report.longrepr = (
            f"{reason}\nverl and megatron-core are required here (CI=true or GTPO_REQUIRE_VERL=1), and vLLM in CI: "
            "this test would have been skipped, which would hide a broken install."
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_required_import_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    _fail_required_import_skip(outcome.get_result())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The smoke run's tiny Qwen2 and tokenizer, built once per session (a few seconds on CPU)."""
    pytest.importorskip("transformers")
    from gtpo_plugin.smoke.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model", seed=0)
