"""verl changing under the plugin: each simulated change (:data:`verl_changes.SCENARIOS`) in a fresh process on an
edited copy of the installed verl. verl's trainer modules must import, a GRPO run of the v1 trainer must run its
advantage step, and a GTPO run must be refused when its trainer is constructed, naming the verl attribute and
version (or, for a change GTPO does not depend on, start and run its advantage step).

All scenarios run in one subprocess (``verl_changes.py``), which imports the heavy libraries once and forks a
process per scenario; about 1 min set-up plus 6-8 s per scenario on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("verl")
from verl_adapter.verl_changes import SCENARIOS  # noqa: E402

from gtpo_plugin.verl_adapter import TRAINER_MODULES  # noqa: E402

RUNNER = os.path.join(os.path.dirname(__file__), "verl_changes.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verl_changes")
    out = folder / "results.json"
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VERL_USE_EXTERNAL")}
    run = subprocess.run([sys.executable, RUNNER, str(folder), str(out)], capture_output=True, text=True,
                         env=environment, timeout=900)
    assert run.returncode == 0 and out.exists(), run.stderr[-5000:]
    found = json.loads(out.read_text())
    print(f"verl changes: set-up {found['setup_s']} s, total {found['total_s']} s;",
          ", ".join(f"{name} {result['wall_s']} s" for name, result in found["scenarios"].items()))
    return found


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_changed_verl_keeps_working_and_refuses_gtpo_at_start_up(results, name):
    scenario, result = SCENARIOS[name], results["scenarios"][name]
    assert "crashed" not in result, result.get("crashed")
    assert f"{os.sep}{name}{os.sep}verl{os.sep}" in result["verl_file"]  # the edited copy, not the installed verl
    assert result["imports"] == {module: "ok" for module in TRAINER_MODULES}
    assert result["grpo"] == "ok"
    errors = [record["message"] for record in result["logs"] if record["level"] == "ERROR"]
    assert len(errors) == scenario.errors, errors
    assert all(f"verl {result['verl_version']}: verl." in error for error in errors)
    if scenario.refuse is None:  # GTPO starts, and its advantage step gives the core's advantages and metrics
        assert result["gtpo"] == {"refused": False, "metrics": sorted(result["gtpo"].get("metrics", []))}
        assert len(result["gtpo"]["metrics"]) == 5 and result["gtpo_registered"]
        hooks = [] if scenario.patch else ["PPOTrainer._compute_advantage", "compute_advantage"]
        assert result["advantage_hooks"] == hooks
    else:
        assert result["gtpo"]["refused"], result["gtpo"]
        refusal = result["gtpo"]["error"]
        assert scenario.reason in refusal and f"verl {result['verl_version']}" in refusal
        assert any(scenario.reason in error for error in errors)


def test_with_the_upstream_patch_the_advantage_path_runs_without_hooks(results):
    result = results["scenarios"]["upstream_estimator_batch_fields"]
    assert result["advantage_hooks"] == [] and result["gtpo"]["refused"] is False  # and the step checked the values


def test_an_untested_version_whose_probes_pass_gets_gtpo_and_one_warning(results):
    result = results["scenarios"]["version_0_9_2"]
    assert result["verl_version"] == "0.9.2" and result["gtpo_registered"]
    warnings = [record["message"] for record in result["logs"] if record["level"] == "WARNING"
                and "not a version CI tests" in record["message"]]
    assert len(warnings) == 1 and "(0.9.0, 0.9.1)" in warnings[0]
    assert not [record for record in results["scenarios"]["unchanged"]["logs"] if "CI tests" in record["message"]]

