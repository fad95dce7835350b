"""Smoke test of ``scripts/bench_step.py --quick``: it runs verl's advantage stage end to end and prints the ratio.

No timing is asserted (CI's machine is shared); the figures themselves are in docs/performance.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("transfer_queue")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_step.py"


def test_quick_mode_prints_the_ratio_line_and_exits_0():
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^advantage stage GTPO/GRPO: \d+\.\d+$", run.stdout, re.MULTILINE), run.stdout[-3000:]
