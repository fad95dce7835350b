"""Simulated changes inside verl, each run in a fresh process on an edited copy of the installed verl.

``python verl_changes.py WORKDIR OUT.json [SCENARIO ...]`` imports the heavy libraries verl needs (torch,
transformers, Ray, TransferQueue, ...) once, but not verl, starts one Ray + TransferQueue holder process,
and then forks one child per scenario. Each child puts the scenario's copy of verl first on ``sys.path``
(``cp -al`` of the installed package; only the edited files are new files, the rest hard links, so the
installed verl is never written to), imports verl (which loads the GTPO plugin through its entry point)
and records what :func:`check` finds. The results go to ``OUT.json``; ``test_verl_changes.py`` asserts them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_PATCH = os.path.join(os.path.dirname(TESTS), "upstream", "estimator-batch-fields.patch")
EXPERIMENTAL = "experimental"
RAY_TRAINER = "trainer/ppo/ray_trainer.py"
TRAINER_BASE = "trainer/ppo/v1/trainer_base.py"
SEPARATION = f"{EXPERIMENTAL}/separation/ray_trainer.py"
ONE_STEP_OFF = f"{EXPERIMENTAL}/one_step_off_policy/ray_trainer.py"
FULLY_ASYNC = f"{EXPERIMENTAL}/fully_async_policy/fully_async_trainer.py"
FULLY_ASYNC_MAIN = f"{EXPERIMENTAL}/fully_async_policy/fully_async_main.py"


def rename(name: str, new: str, *files: str) -> list[tuple[str, str, str]]:
    """Edits renaming the identifier ``name`` (definition and uses) in ``files``."""
    return [(path, rf"\b{name}\b", new) for path in files]


@dataclass(frozen=True)
class Scenario:
    """One change to verl: regex edits ``(file, pattern, replacement)`` (each must match), the trainer whose GTPO
    run must be refused (``refuse``: "v1", "one_step_off" or "fully_async"; None: must start), the name of the v1
    advantage method after the change, and the text the refusal must contain."""

    edits: list[tuple[str, str, str]]
    refuse: str | None
    reason: str = ""
    advantage_method: str = "_compute_advantage"
    errors: int = 1
    patch: str | None = None  # a patch file applied (with ``patch -p1``) to the copy before the edits
    extra: dict = field(default_factory=dict)


SCENARIOS = {
    "unchanged": Scenario([], None, errors=0),
    "version_0_9_2": Scenario([("version/version", r"\A0\.9\.\d+", "0.9.2")], None, errors=0),
    "compute_advantage_renamed": Scenario(
        rename("compute_advantage", "compute_advantages", RAY_TRAINER, "trainer/ppo/v1/utils.py", SEPARATION),
        "v1", "verl.trainer.ppo.ray_trainer.compute_advantage is missing"),
    "compute_advantage_signature": Scenario(
        [(RAY_TRAINER, r"def compute_advantage\(\n    data: DataProto,",
          "def compute_advantage(\n    batch: DataProto,"),
         (RAY_TRAINER, r"(def compute_advantage\(.*?\) -> DataProto:\n)", r"\1    data = batch\n")],
        "v1", "verl.trainer.ppo.ray_trainer.compute_advantage has parameters (batch, adv_estimator"),
    "register_adv_est_renamed": Scenario(
        rename("register_adv_est", "register_advantage_estimator", "trainer/ppo/core_algos.py"),
        "v1", "verl.trainer.ppo.core_algos.register_adv_est is missing"),
    "v1_compute_advantage_renamed": Scenario(
        rename("_compute_advantage", "_compute_advantages", TRAINER_BASE), "v1",
        "verl.trainer.ppo.v1.trainer_base.PPOTrainer._compute_advantage is not defined there any more",
        advantage_method="_compute_advantages"),
    "v1_compute_advantage_signature": Scenario(
        [(TRAINER_BASE, r"def _compute_advantage\(self, batch: KVBatchMeta, metrics: dict\) -> KVBatchMeta:\n"
                        r'        """Compute the advantage of the batch."""\n',
          'def _compute_advantage(self, batch: KVBatchMeta, step_metrics: dict) -> KVBatchMeta:\n'
          '        """Compute the advantage of the batch."""\n        metrics = step_metrics\n'),
         (TRAINER_BASE, r"self\._compute_advantage\(batch, metrics=metrics\)",
          "self._compute_advantage(batch, step_metrics=metrics)")],
        "v1", "PPOTrainer._compute_advantage has parameters (self, batch, step_metrics)"),
    "v1_save_checkpoint_renamed": Scenario(
        rename("_save_checkpoint", "_save_checkpoints", TRAINER_BASE), "v1",
        "PPOTrainer._save_checkpoint is not defined there any more"),
    "v1_load_checkpoint_renamed": Scenario(
        rename("_load_checkpoint", "_load_checkpoints", TRAINER_BASE), "v1",
        "PPOTrainer._load_checkpoint is not defined there any more"),
    "v1_checkpoint_folder_changed": Scenario(
        [(TRAINER_BASE, r'f"global_step_\{self\.global_steps\}"', 'f"step_{self.global_steps}"')], "v1",
        "PPOTrainer._save_checkpoint no longer contains"),
    "v1_session_keys_changed": Scenario(
        [("trainer/ppo/v1/utils.py", r'key\.rsplit\("_", 2\)', 'key.rsplit("_", maxsplit=2)')], "v1",
        "compute_advantage_for_multi_trajectories no longer contains"),
    "ray_trainer_compute_old_log_prob_renamed": Scenario(
        rename("_compute_old_log_prob", "_compute_old_log_probs", RAY_TRAINER, SEPARATION, FULLY_ASYNC), "one_step_off",
        "SeparateRayPPOTrainer._compute_old_log_prob is missing"),
    "separation_fit_compute_advantage_renamed": Scenario(
        rename("_fit_compute_advantage", "_fit_compute_advantages", SEPARATION, ONE_STEP_OFF, FULLY_ASYNC),
        "one_step_off", "SeparateRayPPOTrainer._fit_compute_advantage is not defined there any more", errors=2),
    "ray_trainer_save_checkpoint_renamed": Scenario(
        rename("_save_checkpoint", "_save_checkpoints", RAY_TRAINER, SEPARATION), "one_step_off",
        "SeparateRayPPOTrainer._save_checkpoint is missing"),
    "ray_trainer_load_checkpoint_renamed": Scenario(
        rename("_load_checkpoint", "_load_checkpoints", RAY_TRAINER, SEPARATION, ONE_STEP_OFF), "one_step_off",
        "SeparateRayPPOTrainer._load_checkpoint is missing"),
    "fully_async_save_checkpoint_renamed": Scenario(
        rename("_save_checkpoint", "_save_checkpoints", FULLY_ASYNC), "fully_async",
        "modified_class._save_checkpoint no longer contains"),
    "fully_async_load_checkpoint_renamed": Scenario(
        rename("load_checkpoint", "load_checkpoints", FULLY_ASYNC, FULLY_ASYNC_MAIN), "fully_async",
        "modified_class.load_checkpoint is missing"),
    "upstream_estimator_batch_fields": Scenario([], None, errors=0, patch=UPSTREAM_PATCH),
    "token_level_rollout_rs_options_renamed": Scenario(
        rename("TOKEN_LEVEL_ROLLOUT_RS_OPTIONS", "TOKEN_ROLLOUT_RS_OPTIONS", "trainer/ppo/rollout_corr_helper.py"),
        None, errors=0),
}


def installed_verl() -> str:
    """The installed verl package's folder, found without importing it."""
    spec = importlib.util.find_spec("verl")
    assert spec is not None and spec.submodule_search_locations, "verl is not installed"
    return list(spec.submodule_search_locations)[0]


def read(path: str) -> str:
    with open(path) as file:
        return file.read()


def replace_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` as a new file: the old one may be a hard link to the installed verl."""
    os.unlink(path)
    with open(path, "w") as file:
        file.write(text)


def make_copy(scenario: Scenario, folder: str) -> str:
    """``folder/verl``: a hard-linked copy of the installed verl with the scenario's changes; returns ``folder``."""
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, "verl")
    subprocess.run(["cp", "-al", installed_verl(), target], check=True)
    if scenario.patch:
        touched = re.findall(r"^\+\+\+ b/verl/(\S+)", read(scenario.patch), flags=re.M)
        for relative in touched:
            path = os.path.join(target, relative)
            replace_file(path, read(path))  # break the hard link before patch edits the file
        subprocess.run(["patch", "-p1", "-s", "-d", folder, "-i", scenario.patch], check=True)
    for relative, pattern, replacement in scenario.edits:
        path = os.path.join(target, relative)
        new, count = re.subn(pattern, replacement, read(path), flags=re.S | re.M)
        assert count, f"{relative}: {pattern!r} matched nothing; the scenario no longer changes verl"
        replace_file(path, new)
    return folder


def grpo_advantage_step(method: str) -> None:
    """A GRPO run of verl's v1 trainer, built from verl's config, runs its advantage step over TransferQueue."""
    import torch
    import transfer_queue as tq
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    from verl.trainer.ppo.v1 import PPOTrainerSync
    from verl_adapter.doubles import OldPolicyWorkers, Rollouts, advantages_in_queue, verl_config

    trainer = PPOTrainerSync(verl_config("algorithm.adv_estimator=grpo",
                                         "actor_rollout_ref.actor.policy_loss.loss_mode=vanilla"))
    rollouts = Rollouts(seed=3)
    trainer.actor_rollout_wg = OldPolicyWorkers(rollouts)
    metrics: dict = {}
    getattr(trainer, method)(trainer._compute_old_log_prob(rollouts.put(), metrics), metrics)
    _, mask, rewards, _, uid = rollouts.padded()
    expected, _ = get_adv_estimator_fn("grpo")(token_level_rewards=rewards, response_mask=mask, index=uid,
                                               norm_adv_by_std_in_grpo=True)
    torch.testing.assert_close(advantages_in_queue(rollouts.keys), expected, rtol=0, atol=1e-6)
    tq.kv_clear(keys=rollouts.keys, partition_id="train")


def gtpo_trainer(kind: str):
    """Build the ``kind`` trainer of a GTPO run (README settings), as its main module builds it."""
    if kind == "v1":
        from verl.trainer.ppo.v1 import PPOTrainerSync
        from verl_adapter.doubles import verl_config

        return PPOTrainerSync(verl_config())
    from verl_adapter.experimental_trainers import build, trainer_config

    return build(kind, trainer_config(kind))


def gtpo_advantage_step() -> dict:
    """A GTPO run's v1 advantage step, checked against the core's GTPO advantages; returns its metrics."""
    import torch
    import transfer_queue as tq
    from verl.trainer.ppo.v1 import PPOTrainerSync
    from verl_adapter.doubles import OldPolicyWorkers, Rollouts, advantages_in_queue, verl_config

    from gtpo_plugin import compute_gtpo_advantage, mean_completion_entropy

    trainer = PPOTrainerSync(verl_config())
    rollouts = Rollouts(seed=4)
    trainer.actor_rollout_wg = OldPolicyWorkers(rollouts)
    metrics: dict = {}
    trainer._compute_advantage(trainer._compute_old_log_prob(rollouts.put(), metrics), metrics)
    responses, mask, rewards, entropy, uid = rollouts.padded()
    expected, _ = compute_gtpo_advantage(rewards, mask, responses, uid, entropy,
                                         initial_entropy=mean_completion_entropy(entropy, mask))
    torch.testing.assert_close(advantages_in_queue(rollouts.keys), expected, rtol=0, atol=1e-6)
    tq.kv_clear(keys=rollouts.keys, partition_id="train")
    return metrics


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.records: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info))[-2000:]
        self.records.append({"level": record.levelname, "logger": record.name, "message": message})


def check(scenario: Scenario, copy: str, ray_address: str) -> dict:
    """What a process on the edited verl sees: imports, a GRPO advantage step, a GTPO trainer's fate, logs."""
    sys.path[:0] = [copy, TESTS]
    sys.dont_write_bytecode = True  # the copy's __pycache__ entries are hard links too
    records = Records()
    logging.getLogger("gtpo_plugin").addHandler(records)
    result: dict = {"verl_file": None, "imports": {}, "grpo": None, "gtpo": None}
    import verl

    result["verl_file"] = verl.__file__
    result["verl_version"] = verl.__version__
    from gtpo_plugin.verl_adapter import TRAINER_MODULES  # verl's trainer modules the plugin hooks

    for name in TRAINER_MODULES:
        try:
            importlib.import_module(name)
            result["imports"][name] = "ok"
        except Exception as error:  # recorded; the test fails on it
            result["imports"][name] = repr(error)
    import ray
    import transfer_queue as tq

    ray.init(address=ray_address, log_to_driver=False)
    tq.init()
    try:
        grpo_advantage_step(scenario.advantage_method)
        result["grpo"] = "ok"
    except Exception:
        result["grpo"] = traceback.format_exc()[-3000:]
    try:
        gtpo_trainer(scenario.refuse or "v1")
        result["gtpo"] = {"refused": False}
        if scenario.refuse is None:
            result["gtpo"]["metrics"] = sorted(key for key in gtpo_advantage_step() if key.startswith("gtpo/"))
    except RuntimeError as error:
        result["gtpo"] = {"refused": True, "error": str(error)}
    except Exception:
        result["gtpo"] = {"refused": False, "unexpected": traceback.format_exc()[-3000:]}
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from gtpo_plugin.verl_adapter.trainer_hooks import is_hooked

    result["gtpo_registered"] = "gtpo" in ADV_ESTIMATOR_REGISTRY
    trainer_base, ray_trainer = (sys.modules[f"verl.trainer.ppo.{name}"] for name in ("v1.trainer_base", "ray_trainer"))
    result["advantage_hooks"] = sorted(name for name, function in (
        ("compute_advantage", getattr(ray_trainer, "compute_advantage", None)),
        ("PPOTrainer._compute_advantage", getattr(trainer_base.PPOTrainer, "_compute_advantage", None)))
        if is_hooked(function))
    result["logs"] = records.records
    return result


def hold_ray_and_transfer_queue(write_fd: int, read_fd: int) -> None:
    """The holder process: a local Ray and a TransferQueue the scenario processes attach to, until the parent ends."""
    import ray
    import transfer_queue as tq
    from omegaconf import OmegaConf

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
    os.write(write_fd, ray.get_runtime_context().gcs_address.encode() + b"\n")
    os.close(write_fd)
    os.read(read_fd, 1)  # returns when the parent closes its end
    tq.close()
    ray.shutdown()


def main(workdir: str, out: str, names: list[str]) -> None:
    started = time.time()
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a local cluster that forked processes attach to without a token
    for module in ("torch", "numpy", "transformers", "ray", "transfer_queue", "tensordict", "hydra", "omegaconf",
                   "torchdata.stateful_dataloader", "pytest"):
        importlib.import_module(module)
    if importlib.util.find_spec("megatron") is not None:
        importlib.import_module("megatron.core")
    assert "verl" not in sys.modules
    address_read, address_write = os.pipe()
    stop_read, stop_write = os.pipe()
    holder = os.fork()
    if holder == 0:
        os.close(address_read)
        os.close(stop_write)
        try:
            hold_ray_and_transfer_queue(address_write, stop_read)
        finally:
            os._exit(0)
    os.close(address_write)
    os.close(stop_read)
    ray_address = os.fdopen(address_read).readline().strip()
    results = {"setup_s": round(time.time() - started, 1), "scenarios": {}}
    for name in names:
        begun = time.time()
        copy = make_copy(SCENARIOS[name], os.path.join(workdir, name))
        result_path = os.path.join(workdir, f"{name}.json")
        child = os.fork()
        if child == 0:
            code = 0
            try:
                result = check(SCENARIOS[name], copy, ray_address)
            except BaseException:
                result = {"crashed": traceback.format_exc()[-3000:]}
                code = 1
            with open(result_path, "w") as file:
                json.dump(result, file)
            sys.stdout.flush()
            os._exit(code)
        os.waitpid(child, 0)
        with open(result_path) as file:
            result = json.load(file)
        result["wall_s"] = round(time.time() - begun, 1)
        results["scenarios"][name] = result
    os.close(stop_write)
    os.waitpid(holder, 0)
    results["total_s"] = round(time.time() - started, 1)
    with open(out, "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or sorted(SCENARIOS))
