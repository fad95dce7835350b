"""``bash scripts/gpu_check.sh`` as it runs on the GPU machine, with every Python program it starts stood in for.

The GPU path itself needs CUDA and the bundle's CPython 3.12, so only its control flow is checked here: the
stand-in ``PYTHON`` (a bash script) answers the import checks, the bundle install, the smoke report,
``bench_core`` and the demo at once, and stands in for each ``fsdp_fit_run.py`` run by logging its start and
end around a short sleep, then writing a metrics file where verl's file logger would. What is checked: the
first runs one after another, the resumed runs side by side, a failed run reported by name without stopping
the others or the later steps, the check's exit status, and every run's log and metrics brought to ``$OUT``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARMS = ("gtpo", "grpo_no_kl", "grpo")
pytestmark = [pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="the check is a bash script that uses coreutils' timeout")]

STAND_IN = r"""#!/usr/bin/env bash
# python, as gpu_check.sh calls it: every program succeeds at once, but fsdp_fit_run.py runs for a while
case "$1" in
    */fsdp_fit_run.py)
        config=$4                                       # fsdp_fit_run.py --device cuda CONFIG
        name=$(basename "$config" .yaml)                # ARM_RUN
        arm=${name%_*} run=${name##*_}
        echo "start $name $(date +%s.%N)" >> "$FIT_LOG"
        sleep "$FIT_SECONDS"
        echo "end $name $(date +%s.%N)" >> "$FIT_LOG"
        echo "log of $name"
        echo '{"step": 3, "data": {}}' > "$(dirname "$(dirname "$config")")/runs/$arm/$run/metrics.jsonl"
        [[ $name != "$FAIL_RUN" ]] ;;
    *) echo "stand-in: $*" ;;
esac
"""


def run_check(tmp_path: Path, fail_run: str = "") -> tuple[subprocess.CompletedProcess, list[tuple[str, str, float]]]:
    """The GPU path of the check with the stand-in; its result and the fit runs' (start|end, ARM_RUN, time)."""
    python = tmp_path / "python"
    python.write_text(STAND_IN)
    python.chmod(0o755)
    fit_log = tmp_path / "fit.log"
    env = {**os.environ, "PYTHON": str(python), "GTPO_GPU_CHECK_TARGET": str(tmp_path / "target"),
           "OUT": str(tmp_path / "out"), "FIT_LOG": str(fit_log), "FIT_SECONDS": "2", "FAIL_RUN": fail_run}
    env.pop("DRY_RUN", None)
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], env=env, capture_output=True,
                            text=True, timeout=600)
    events = [(kind, name, float(moment)) for kind, name, moment in map(str.split, fit_log.read_text().splitlines())]
    return result, events


def span(events: list[tuple[str, str, float]], name: str) -> tuple[float, float]:
    times = {kind: moment for kind, run, moment in events if run == name}
    return times["start"], times["end"]


def test_first_runs_one_after_another_then_resumed_runs_side_by_side(tmp_path):
    result, events = run_check(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "done, status 0" in result.stdout
    first = [span(events, f"{arm}_first") for arm in ARMS]
    resumed = [span(events, f"{arm}_resumed") for arm in ARMS]
    assert all(end <= next_start for (_, end), (next_start, _) in zip(first[:-1], first[1:], strict=True))
    assert first[-1][1] <= min(start for start, _ in resumed)
    assert max(start for start, _ in resumed) < min(end for _, end in resumed)  # all three running at once
    logs = tmp_path / "out" / "logs"
    for arm in ARMS:
        for run in ("first", "resumed"):
            assert (logs / f"{arm}_{run}.log").read_text() == f"log of {arm}_{run}\n"
            assert (logs / f"{arm}_{run}.metrics.jsonl").is_file()
    assert (tmp_path / "out" / "gpu_check.log").read_text().count("== ") == 10  # every step announced


@pytest.mark.parametrize("fail_run", ["grpo_no_kl_first", "grpo_resumed"])
def test_a_failed_run_is_named_and_fails_the_check_but_stops_nothing(tmp_path, fail_run):
    result, events = run_check(tmp_path, fail_run=fail_run)
    arm, run = fail_run.rsplit("_", 1)
    assert result.returncode == 1
    assert f"FAILED (exit 1): {arm} {run}" in result.stdout
    assert result.stdout.count("FAILED") == 1
    assert f"log of {fail_run}" in result.stdout  # the tail of its log
    assert len(events) == 2 * 2 * len(ARMS)  # every run started and ended
    for later in ("smoke report", "bench_core on cuda", "gtpo-demo on cuda", "done, status 1"):
        assert later in result.stdout
