"""What loading the plugin imports, in fresh processes: a worker-like process gets the registries and none of
verl's trainer modules; a driver gets every trainer hook whatever the order of its imports."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import subprocess
import sys

import pytest

pytest.importorskip("verl")
from gtpo_plugin.verl_adapter import import_hooks  # noqa: E402

# CI runs it on verl 0.9.0 too (step 2): verl's plugin loader and the trainer modules the hooks install into.
pytestmark = pytest.mark.verl_compat


TRAINER_MODULES = (
    "verl.trainer.ppo.ray_trainer",
    "verl.trainer.ppo.v1.trainer_base",
    "verl.experimental.separation.ray_trainer",
    "verl.experimental.one_step_off_policy.ray_trainer",
    "verl.experimental.fully_async_policy.fully_async_trainer",
    "gtpo_plugin.verl_adapter.trainer_hooks",
)

# Run after the imports under test: registries hold gtpo, every trainer hook is in place (imports what is missing).
DRIVER_CHECK = """
from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
from gtpo_plugin.verl_adapter import estimator, policy_loss
from gtpo_plugin.verl_adapter.trainer_hooks import is_hooked
from verl.experimental.fully_async_policy import fully_async_trainer
from verl.experimental.one_step_off_policy.ray_trainer import OneStepOffRayTrainer
from verl.experimental.separation.ray_trainer import SeparateRayPPOTrainer
from verl.trainer.ppo import ray_trainer
from verl.trainer.ppo.v1 import trainer_base

assert get_adv_estimator_fn("gtpo") is estimator.compute_gtpo_outcome_advantage
assert get_policy_loss_fn("gtpo") is policy_loss.compute_policy_loss_gtpo
fully_async = fully_async_trainer.FullyAsyncTrainer.__ray_metadata__.modified_class
hooks = {
    "compute_advantage": ray_trainer.compute_advantage,
    "RayPPOTrainer.__init__": ray_trainer.RayPPOTrainer.__init__,
    "PPOTrainer.__init__": trainer_base.PPOTrainer.__init__,
    "PPOTrainer._compute_advantage": trainer_base.PPOTrainer._compute_advantage,
    "PPOTrainer._save_checkpoint": trainer_base.PPOTrainer._save_checkpoint,
    "PPOTrainer._load_checkpoint": trainer_base.PPOTrainer._load_checkpoint,
    "SeparateRayPPOTrainer._compute_old_log_prob": SeparateRayPPOTrainer._compute_old_log_prob,
    "SeparateRayPPOTrainer._fit_compute_advantage": SeparateRayPPOTrainer._fit_compute_advantage,
    "SeparateRayPPOTrainer._save_checkpoint": SeparateRayPPOTrainer._save_checkpoint,
    "SeparateRayPPOTrainer._load_checkpoint": SeparateRayPPOTrainer._load_checkpoint,
    "OneStepOffRayTrainer.__init__": OneStepOffRayTrainer.__init__,
    "FullyAsyncTrainer.__init__": fully_async.__init__,
    "FullyAsyncTrainer._fit_compute_advantage": fully_async._fit_compute_advantage,  # Ray's copy
    "FullyAsyncTrainer._save_checkpoint": fully_async._save_checkpoint,
    "FullyAsyncTrainer.load_checkpoint": fully_async.load_checkpoint,
}
missing = sorted(name for name, function in hooks.items() if not is_hooked(function))
assert not missing, f"not hooked: {missing}"
from gtpo_plugin.verl_adapter import seam
assert not seam.reasons(seam.ALL), seam.reasons(seam.ALL)
print("driver ok")
"""

WORKER = f"""
import sys
import verl
assert "verl.trainer.ppo.core_algos" not in sys.modules, "loading the plugin imported core_algos"
from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn
get_policy_loss_fn("gtpo")
get_adv_estimator_fn("gtpo")
imported = sorted(set({TRAINER_MODULES!r}) & set(sys.modules))
assert not imported, f"a worker imported {{imported}}"
print("worker ok")
"""

ORDERS = {  # first imports of a driver (environment, code); DRIVER_CHECK then imports whatever is missing
    "verl_first": ({}, "import verl"),
    "trainer_module_first": ({}, "import verl.experimental.one_step_off_policy.ray_trainer\n"
                                 "import verl.trainer.ppo.v1.trainer_base"),
    "adapter_imported_explicitly_first": ({}, "import gtpo_plugin.verl_adapter"),
    "adapter_internals_first": ({}, "import gtpo_plugin.verl_adapter.trainer_hooks"),
    "trainers_before_the_plugin": (  # entry points off: the trainers are imported, then the plugin by name
        {"VERL_USE_EXTERNAL_PLUGINS": "none"},
        "import verl.experimental.fully_async_policy.fully_async_trainer\n"
        "import verl.experimental.one_step_off_policy.ray_trainer\n"
        "import verl.trainer.ppo.v1.trainer_base\n"
        "import gtpo_plugin.verl_adapter"),
}


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VERL_USE_EXTERNAL")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=600)


def test_a_worker_finds_the_policy_loss_without_importing_any_trainer_module():
    result = run_python(WORKER)
    assert result.returncode == 0 and "worker ok" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_a_driver_gets_every_trainer_hook_whatever_the_import_order(order):
    environment, first = ORDERS[order]
    result = run_python(first + "\n" + DRIVER_CHECK, **environment)
    assert result.returncode == 0 and "driver ok" in result.stdout, result.stderr[-3000:]


def test_the_worker_check_fails_without_the_plugin():
    result = run_python(WORKER, VERL_USE_EXTERNAL_PLUGINS="none")
    assert result.returncode != 0 and "gtpo" in result.stderr


# --------------------------------------------------------------------------- the post-import hook mechanism


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    """A folder on sys.path where each test writes its own small modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [name for name in sys.modules if name.startswith("gtpo_hook_probe")]:
        del sys.modules[name]


def write_module(folder, name: str, body: str = "VALUE = 41\nVALUE += 1\n") -> None:
    (folder / f"{name}.py").write_text(body)
    importlib.invalidate_caches()


def test_a_hook_registered_before_the_import_runs_once_on_the_fully_executed_module(module_dir):
    write_module(module_dir, "gtpo_hook_probe_a")
    seen = []
    import_hooks.when_imported("gtpo_hook_probe_a", lambda module: seen.append(module.VALUE))
    assert seen == []
    module = importlib.import_module("gtpo_hook_probe_a")
    assert seen == [42]
    importlib.import_module("gtpo_hook_probe_a")  # a second import statement runs nothing again
    assert seen == [42]
    assert inspect.getsource(module) == "VALUE = 41\nVALUE += 1\n"  # the original loader still answers


def test_a_hook_registered_after_the_import_runs_at_once(module_dir):
    write_module(module_dir, "gtpo_hook_probe_b")
    module = importlib.import_module("gtpo_hook_probe_b")
    seen = []
    import_hooks.when_imported("gtpo_hook_probe_b", lambda module_: seen.append(module_))
    assert seen == [module]


def test_a_failing_hook_is_logged_and_never_fails_the_import(module_dir, caplog):
    write_module(module_dir, "gtpo_hook_probe_c")

    def broken(module):
        raise RuntimeError("hook broke")

    import_hooks.when_imported("gtpo_hook_probe_c", broken)
    with caplog.at_level(logging.ERROR, logger="gtpo_plugin"):
        module = importlib.import_module("gtpo_hook_probe_c")
        import_hooks.when_imported("gtpo_hook_probe_c", broken)  # registered after the import: runs at once
    assert module.VALUE == 42
    assert caplog.text.count("failed on gtpo_hook_probe_c; the module is left as it is") == 2
