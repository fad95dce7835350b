"""Loading the adapter: verl's entry point, the loud alternative, untested versions, contained failures, the hooks."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys

import pytest

verl = pytest.importorskip("verl")
import gtpo_plugin.verl_adapter as adapter  # noqa: E402
from gtpo_plugin.verl_adapter import seam, trainer_hooks  # noqa: E402

# CI runs it on verl 0.9.0 too (step 2): verl's registries and its verl.plugins entry point.
pytestmark = pytest.mark.verl_compat


ISSUE_COMMAND = ("import verl; from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn; "
                 "get_adv_estimator_fn('gtpo'); get_policy_loss_fn('gtpo')")


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VERL_USE_EXTERNAL")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)


def test_plain_import_of_verl_registers_gtpo_through_the_entry_point():
    result = run_python(ISSUE_COMMAND)
    assert result.returncode == 0, result.stderr[-3000:]


def test_verl_use_external_modules_loads_the_adapter_without_entry_points():
    result = run_python(ISSUE_COMMAND, VERL_USE_EXTERNAL_PLUGINS="none",
                        VERL_USE_EXTERNAL_MODULES="gtpo_plugin.verl_adapter")
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("version", ["0.9.2", "0.10.0.dev0"])
def test_an_untested_version_gets_one_warning_naming_the_tested_ones(version, caplog):
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        assert seam.warn_if_untested(version)
    assert caplog.text.count("not a version CI tests (0.9.0, 0.9.1)") == 1 and version in caplog.text


@pytest.mark.parametrize("version", ["0.9.0", "0.9.1"])
def test_tested_versions_load_without_a_warning(version, caplog):
    with caplog.at_level(logging.WARNING, logger="gtpo_plugin"):
        assert not seam.warn_if_untested(version)
    assert not caplog.text


def test_a_failed_load_is_logged_and_never_raised_into_verls_import(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("loader broke")

    monkeypatch.setattr(adapter.import_hooks, "when_imported", broken)
    with caplog.at_level(logging.ERROR, logger="gtpo_plugin"):
        importlib.reload(adapter)
    assert "failed to load" in caplog.text and "loader broke" in caplog.text
    monkeypatch.undo()
    importlib.reload(adapter)  # back to a loaded adapter for the other tests


def test_a_missing_method_is_refused_at_start_up_and_other_runs_go_on(monkeypatch, caplog):
    from verl.trainer.ppo.v1 import trainer_base

    from gtpo_plugin.verl_adapter.settings import uses_gtpo

    monkeypatch.setattr(seam, "_UNAVAILABLE", {})
    monkeypatch.delattr(trainer_base.PPOTrainer, "_load_checkpoint")
    with caplog.at_level(logging.ERROR, logger="gtpo_plugin"):
        trainer_hooks.install(trainer_base)
    assert caplog.text.count("PPOTrainer._load_checkpoint is not defined there any more") == 1
    assert f"verl {verl.__version__}" in caplog.text
    gtpo, grpo = {"algorithm": {"adv_estimator": "gtpo"}}, {"algorithm": {"adv_estimator": "grpo"}}
    assert uses_gtpo(gtpo) and not uses_gtpo(grpo)
    class Trainer:
        pass

    with pytest.raises(RuntimeError, match="cannot run on Trainer.*_load_checkpoint is not defined there"):
        trainer_hooks.run_start_up_checks(Trainer(), gtpo, trainer_hooks.V1)
    trainer_hooks.run_start_up_checks(Trainer(), grpo, trainer_hooks.V1)


def hooked_functions() -> list:
    """Every verl function the trainer hooks replace, read from verl's modules as they are now."""
    from verl.experimental.fully_async_policy import fully_async_trainer
    from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer
    from verl.experimental.separation.ray_trainer import SeparateRayPPOTrainer
    from verl.trainer.ppo import ray_trainer
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    fully_async = fully_async_trainer.FullyAsyncTrainer.__ray_metadata__.modified_class  # what Ray runs
    methods = {PPOTrainer: ("__init__", "_compute_advantage", "_save_checkpoint", "_load_checkpoint"),
               SeparateRayPPOTrainer: ("_compute_old_log_prob", "_fit_compute_advantage", "_save_checkpoint",
                                       "_load_checkpoint"),
               OneStepOffRayTrainer: ("__init__",),
               fully_async: ("__init__", "_save_checkpoint", "load_checkpoint"),
               ray_trainer.RayPPOTrainer: ("__init__",)}
    return [ray_trainer.compute_advantage] + [getattr(owner, name) for owner, names in methods.items()
                                              for name in names]


def test_hooks_wrap_verls_functions_once():
    hooked = hooked_functions()
    adapter._load()  # loading again (every module already imported) changes nothing
    assert hooked_functions() == hooked
    for function in hooked:
        assert trainer_hooks.is_hooked(function)
        assert not trainer_hooks.is_hooked(function.__wrapped__)  # wraps verl's own function


def test_fsdp_and_megatron_engines_share_the_loss_the_policy_loss_tests_call():
    importlib.import_module("verl.workers.engine.megatron")  # megatron-core installed: the engine imports
    importlib.import_module("verl.workers.engine.fsdp")
    from verl.workers import engine_workers
    from verl.workers.utils import losses

    assert engine_workers.ppo_loss is losses.ppo_loss  # ActorRolloutRefWorker wires it for every strategy
