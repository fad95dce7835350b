"""``DRY_RUN=1 bash scripts/gpu_check.sh``: the GPU check's bundle built, checked complete and unpacked on CPU.

It downloads verl 0.9.1's wheels for the GPU machine (CPython 3.12) from the package registry, about 135 MB
the first time, cached under ``${GTPO_CI_CACHE:-/tmp/gtpo-ci-cache}``; so it runs in CI (``CI=true``) or
when ``GTPO_GPU_BUNDLE=1`` asks for it, and is skipped otherwise. It needs verl here too: the recipe's dry
run resolves the smoke configs the bundle carries. Measured here: 193 CPU-s (148 s wall on a quiet machine)
with the wheels cached and every compressed part made afresh; with the parts cached, the recipe's dry run
and the packing remain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import verl_required

verl = pytest.importorskip("verl")

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(shutil.which("bash") is None, reason="the check is a bash script"),
    pytest.mark.skipif(not (verl_required() or os.environ.get("GTPO_GPU_BUNDLE") == "1"),
                       reason="downloads the GPU bundle's wheels: runs in CI or with GTPO_GPU_BUNDLE=1"),
    pytest.mark.skipif(verl.__version__ != "0.9.1", reason="the bundle carries verl 0.9.1: its configs are "
                       "resolved with the same verl"),
]


def test_the_dry_run_builds_a_complete_bundle_that_fits_two_device_calls(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "BUNDLE": str(tmp_path / "bundle"), "PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    calls = int(re.search(r"^device calls: (\d+)$", result.stdout, flags=re.MULTILINE).group(1))
    largest = float(re.search(r"^largest piece: ([\d.]+) MiB$", result.stdout, flags=re.MULTILINE).group(1))
    assert 1 <= calls <= 2 and largest <= 63
    assert len(list((tmp_path / "bundle").glob("call-*/piece-*.tar.xz"))) == calls
    assert "each one version, every requirement met" in result.stdout
    assert "(machine not checked)" in result.stdout  # the unpacked files were checked
